//! The exported ViT's forward pass in candle, with autograd: what prompt learning trains
//! through. It reads the same timm-layout weights as the exporter and computes what the exported
//! graph computes in prompted mode: per sample and per block, the prompt's key and value prefixes
//! are prepended to that block's keys and values in every head; queries and tokens are unchanged.
//! It stops after the last feature block. The weights are constants, so gradients reach only
//! the prompt.

use anyhow::{ensure, Context, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor, D};

use crate::backbone::arch::{Activation, ArchSpec};
use crate::backbone::resample::position_embedding;
use crate::backbone::{BackboneMeta, VitWeights};

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

/// y = x·Wᵀ + b for a frozen W.
struct Linear {
    product: FrozenProduct,
    bias: Tensor,
}

/// x ↦ x·M for a constant matrix M, as a custom op whose backward computes only the input's
/// gradient (g·Mᵀ). Candle's matmul would also compute M's gradient, which nothing uses and
/// which costs as much as the product itself.
#[derive(Clone)]
struct FrozenProduct {
    matrix: Tensor,
    transposed: Tensor,
}

impl FrozenProduct {
    fn new(matrix: Tensor) -> Result<FrozenProduct> {
        Ok(FrozenProduct {
            transposed: matrix.t()?.contiguous()?,
            matrix,
        })
    }

    fn swapped(&self) -> FrozenProduct {
        FrozenProduct {
            matrix: self.transposed.clone(),
            transposed: self.matrix.clone(),
        }
    }
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-product needs a contiguous input")
        };
        let input = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            _ => candle_core::bail!("frozen-product supports f32 and f64 only"),
        };
        let output = input.matmul(&self.matrix)?;
        let (stored, out_layout) = output.storage_and_layout();
        match &*stored {
            Storage::Cpu(cpu) => Ok((cpu.clone(), out_layout.shape().clone())),
            _ => candle_core::bail!("frozen-product runs on the CPU"),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(self.swapped())?))
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    /// LayerScale gammas (DINOv2).
    layer_scale: Option<(Tensor, Tensor)>,
}

pub struct PromptedVit {
    spec: ArchSpec,
    meta: BackboneMeta,
    patch_weight: Tensor,
    patch_bias: Option<Tensor>,
    cls: Tensor,
    pos: Tensor,
    norm_pre: Option<Norm>,
    blocks: Vec<Block>,
    dtype: DType,
}

impl PromptedVit {
    /// The blocks `meta` runs, from `weights` (which must be the ones the backbone was exported
    /// from), in `dtype` (F32 for training, F64 for gradient checks).
    pub fn new(weights: &VitWeights, meta: &BackboneMeta, dtype: DType) -> Result<PromptedVit> {
        ensure!(
            weights.sha256 == meta.weights_sha256,
            "the weights (sha256 {}) are not the ones this backbone was exported from ({})",
            weights.sha256,
            meta.weights_sha256
        );
        let spec = meta.arch.spec();
        let tensor = |name: &str| param(weights, name, dtype);
        let norm = |prefix: &str| -> Result<Norm> {
            Ok(Norm {
                weight: tensor(&format!("{prefix}.weight"))?,
                bias: tensor(&format!("{prefix}.bias"))?,
            })
        };
        let linear = |prefix: &str| -> Result<Linear> {
            Ok(Linear {
                product: FrozenProduct::new(tensor(&format!("{prefix}.weight"))?.t()?.contiguous()?)?,
                bias: tensor(&format!("{prefix}.bias"))?,
            })
        };
        let blocks = (0..meta.prompt_blocks)
            .map(|b| {
                let layer_scale = spec
                    .layer_scale
                    .then(|| {
                        Ok::<_, anyhow::Error>((
                            tensor(&format!("blocks.{b}.ls1.gamma"))?,
                            tensor(&format!("blocks.{b}.ls2.gamma"))?,
                        ))
                    })
                    .transpose()?;
                Ok(Block {
                    norm1: norm(&format!("blocks.{b}.norm1"))?,
                    qkv: linear(&format!("blocks.{b}.attn.qkv"))?,
                    proj: linear(&format!("blocks.{b}.attn.proj"))?,
                    norm2: norm(&format!("blocks.{b}.norm2"))?,
                    fc1: linear(&format!("blocks.{b}.mlp.fc1"))?,
                    fc2: linear(&format!("blocks.{b}.mlp.fc2"))?,
                    layer_scale,
                })
            })
            .collect::<Result<_>>()?;
        let grid = meta.grid();
        let pos = position_embedding(weights, &spec, grid)?;
        Ok(PromptedVit {
            patch_weight: tensor("patch_embed.proj.weight")?,
            patch_bias: spec.patch_bias.then(|| tensor("patch_embed.proj.bias")).transpose()?,
            cls: tensor("cls_token")?,
            pos: Tensor::from_vec(pos, (1, 1 + grid * grid, spec.embed_dim), &Device::Cpu)?.to_dtype(dtype)?,
            norm_pre: spec.pre_norm.then(|| norm("norm_pre")).transpose()?,
            blocks,
            spec,
            meta: meta.clone(),
            dtype,
        })
    }

    pub fn meta(&self) -> &BackboneMeta {
        &self.meta
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Patch features [B, N, F] of normalised images [B, 3, S, S] under per-sample prompts
    /// [B, blocks, 2, len, D].
    pub fn forward(&self, images: &Tensor, prompts: &Tensor) -> Result<Tensor> {
        let batch = images.dim(0)?;
        let (p, l, d) = (self.meta.prompt_blocks, self.meta.prompt_len, self.spec.embed_dim);
        ensure!(
            prompts.dims() == [batch, p, 2, l, d],
            "prompts {:?} do not fit a batch of {batch} and [{p}, 2, {l}, {d}] prompts",
            prompts.dims()
        );
        let mut x = self.embed(images)?;
        if let Some(norm) = &self.norm_pre {
            x = self.layer_norm(norm, &x)?;
        }
        let mut features = Vec::new();
        for (b, block) in self.blocks.iter().enumerate() {
            x = self.block(block, &x, &prompts.narrow(1, b, 1)?.squeeze(1)?)?;
            if self.meta.feature_blocks.contains(&b) {
                features.push(x.narrow(1, 1, self.meta.patches())?);
            }
        }
        Ok(Tensor::cat(&features, 2)?)
    }

    /// The same prompt [blocks, 2, len, D] for every image of the batch.
    pub fn forward_shared(&self, images: &Tensor, prompt: &Tensor) -> Result<Tensor> {
        let batch = images.dim(0)?;
        let mut dims = vec![batch];
        dims.extend_from_slice(prompt.dims());
        self.forward(images, &prompt.unsqueeze(0)?.broadcast_as(dims)?)
    }

    fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let patch = self.spec.patch;
        let mut x = images.conv2d(&self.patch_weight, 0, patch, 1, 1)?;
        if let Some(bias) = &self.patch_bias {
            x = x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        }
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let batch = x.dim(0)?;
        let cls = self.cls.broadcast_as((batch, 1, self.spec.embed_dim))?;
        Ok(Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos)?)
    }

    fn layer_norm(&self, norm: &Norm, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.spec.ln_eps as f64)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&norm.weight)?.broadcast_add(&norm.bias)?)
    }

    /// On [B, T, D] as one [B·T, D] matrix: a batched product would broadcast the weight.
    fn linear(&self, linear: &Linear, x: &Tensor) -> Result<Tensor> {
        let (batch, tokens, d) = x.dims3()?;
        let y = x
            .reshape((batch * tokens, d))?
            .contiguous()?
            .apply_op1(linear.product.clone())?;
        Ok(y.broadcast_add(&linear.bias)?.reshape((batch, tokens, ()))?)
    }

    fn block(&self, block: &Block, x: &Tensor, prompt: &Tensor) -> Result<Tensor> {
        let attn = self.attention(block, &self.layer_norm(&block.norm1, x)?, prompt)?;
        let attn = match &block.layer_scale {
            Some((gamma, _)) => attn.broadcast_mul(gamma)?,
            None => attn,
        };
        let x = (x + attn)?;
        let hidden = self.linear(&block.fc1, &self.layer_norm(&block.norm2, &x)?)?;
        let hidden = match self.spec.activation {
            Activation::Gelu => hidden.gelu_erf()?,
            Activation::QuickGelu => (&hidden * candle_nn::ops::sigmoid(&(&hidden * 1.702)?)?)?,
        };
        let mlp = self.linear(&block.fc2, &hidden)?;
        let mlp = match &block.layer_scale {
            Some((_, gamma)) => mlp.broadcast_mul(gamma)?,
            None => mlp,
        };
        Ok((x + mlp)?)
    }

    /// [B, T, D] → [B, H, T, hd].
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        let (h, hd) = (self.spec.heads, self.spec.head_dim());
        Ok(x.reshape((batch, tokens, h, hd))?.transpose(1, 2)?.contiguous()?)
    }

    /// Self-attention whose keys and values start with the block's prompt prefixes [B, 2, L, D].
    fn attention(&self, block: &Block, x: &Tensor, prompt: &Tensor) -> Result<Tensor> {
        let (batch, tokens, d) = x.dims3()?;
        let qkv = self.linear(&block.qkv, x)?;
        let scale = (self.spec.head_dim() as f64).powf(-0.5);
        let q = self.heads(&(qkv.narrow(2, 0, d)? * scale)?)?;
        let k = self.heads(&qkv.narrow(2, d, d)?)?;
        let v = self.heads(&qkv.narrow(2, 2 * d, d)?)?;
        let prefix_keys = self.heads(&prompt.narrow(1, 0, 1)?.squeeze(1)?)?;
        let prefix_values = self.heads(&prompt.narrow(1, 1, 1)?.squeeze(1)?)?;
        let keys = Tensor::cat(&[&prefix_keys, &k], 2)?;
        let values = Tensor::cat(&[&prefix_values, &v], 2)?;
        let logits = q.matmul(&keys.t()?.contiguous()?)?;
        // Softmax is shift-invariant: the max is a constant for autograd.
        let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
        let weights = shifted.exp()?;
        let probs = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
        let out = probs.matmul(&values)?.transpose(1, 2)?.reshape((batch, tokens, d))?;
        self.linear(&block.proj, &out)
    }
}

fn param(weights: &VitWeights, name: &str, dtype: DType) -> Result<Tensor> {
    let p = weights.get(name)?;
    Tensor::from_slice(&p.data, p.shape.as_slice(), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .with_context(|| format!("weight {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::testing::tiny_backbone;
    use crate::backbone::Prompt;
    use crate::train::scl::SclLoss;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..dims.iter().product())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn candle_features_equal_the_exported_graph_under_tract() {
        let (weights, backbone) = tiny_backbone(7);
        let meta = &backbone.meta;
        let vit = PromptedVit::new(&weights, meta, DType::F32).unwrap();
        let s = meta.input_size;
        let image = random(&[1, 3, s, s], 1, DType::F32);
        let prompt = random(&[meta.prompt_blocks, 2, meta.prompt_len, meta.embed_dim], 2, DType::F32);
        let ours = vit
            .forward_shared(&image, &prompt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let tract_prompt = Prompt {
            blocks: meta.prompt_blocks,
            len: meta.prompt_len,
            dim: meta.embed_dim,
            data: prompt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        };
        let input = tract_core::prelude::Tensor::from_shape(
            &[1, 3, s, s],
            &image.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
        .unwrap();
        let theirs = backbone.features(input, Some(&tract_prompt)).unwrap();
        let f = meta.feature_dim();
        let min = ours
            .chunks(f)
            .zip(theirs.chunks(f))
            .map(|(a, b)| cosine(a, b))
            .fold(1.0f32, f32::min);
        assert!(min >= 0.9999, "min per-token cosine {min}");
    }

    #[test]
    fn an_image_gets_the_same_features_in_any_batch_position() {
        let (weights, backbone) = tiny_backbone(3);
        let meta = &backbone.meta;
        let vit = PromptedVit::new(&weights, meta, DType::F64).unwrap();
        let s = meta.input_size;
        let images = random(&[3, 3, s, s], 4, DType::F64);
        let prompts = random(
            &[3, meta.prompt_blocks, 2, meta.prompt_len, meta.embed_dim],
            5,
            DType::F64,
        );
        let batch = vit.forward(&images, &prompts).unwrap();
        for i in 0..3 {
            let alone = vit
                .forward(&images.narrow(0, i, 1).unwrap(), &prompts.narrow(0, i, 1).unwrap())
                .unwrap();
            let diff = (alone - batch.narrow(0, i, 1).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        }
    }

    #[test]
    fn weights_of_another_backbone_are_refused() {
        let (_, backbone) = tiny_backbone(1);
        let other = VitWeights::random(crate::backbone::Arch::VitTinyTest, 2);
        let err = PromptedVit::new(&other, &backbone.meta, DType::F32).err().unwrap();
        assert!(
            err.to_string().contains("not the ones this backbone was exported from"),
            "{err}"
        );
    }

    /// The prompt's analytic gradient against central differences, in f64, for both losses.
    #[test]
    fn prompt_gradients_match_finite_differences() {
        let (weights, backbone) = tiny_backbone(11);
        let meta = &backbone.meta;
        let vit = PromptedVit::new(&weights, meta, DType::F64).unwrap();
        let s = meta.input_size;
        let images = random(&[2, 3, s, s], 12, DType::F64);
        let labels: Vec<u32> = (0..2 * meta.patches())
            .map(|i| ((i % meta.patches()) / 5) as u32)
            .collect();
        let dims = [meta.prompt_blocks, 2, meta.prompt_len, meta.embed_dim];
        let base: Vec<f64> = random(&dims, 13, DType::F64).flatten_all().unwrap().to_vec1().unwrap();
        for loss in [SclLoss::Paper, SclLoss::SupCon] {
            let at = |values: &[f64]| -> f64 {
                let prompt = Tensor::from_slice(values, &dims, &Device::Cpu).unwrap();
                let features = vit.forward_shared(&images, &prompt).unwrap();
                loss.loss(&features, &labels).unwrap().to_scalar::<f64>().unwrap()
            };
            let var = Var::from_slice(&base, &dims, &Device::Cpu).unwrap();
            let features = vit.forward_shared(&images, var.as_tensor()).unwrap();
            let grads = loss.loss(&features, &labels).unwrap().backward().unwrap();
            let analytic: Vec<f64> = grads.get(&var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let per_block = base.len() / meta.prompt_blocks;
            // A key and a value coordinate of every block.
            for index in (0..meta.prompt_blocks).flat_map(|b| [b * per_block + 3, b * per_block + per_block / 2 + 5]) {
                let h = 1e-5;
                let (mut up, mut down) = (base.clone(), base.clone());
                up[index] += h;
                down[index] -= h;
                let numeric = (at(&up) - at(&down)) / (2.0 * h);
                let error = (numeric - analytic[index]).abs() / numeric.abs().max(analytic[index].abs()).max(1e-6);
                assert!(
                    error < 1e-5,
                    "{loss:?} coordinate {index}: numeric {numeric} analytic {}",
                    analytic[index]
                );
            }
        }
    }
}
