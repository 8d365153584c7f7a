//! Runs an exported backbone under tract: plain (frozen ViT) or prompted passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use prost::Message;
use tract_core::floats::FloatPrecisionTranslator;
use tract_core::prelude::*;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModelExt};

use super::arithmetic::Arithmetic;
use super::meta::{BackboneMeta, BackboneSpec};

/// A learned prefix prompt for every prompted block: row-major [blocks, 2 (key, value), len, dim].
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub blocks: usize,
    pub len: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Prompt {
    pub fn zeros(meta: &BackboneMeta) -> Prompt {
        let (blocks, len, dim) = (meta.prompt_blocks, meta.prompt_len, meta.embed_dim);
        Prompt {
            blocks,
            len,
            dim,
            data: vec![0.0; blocks * 2 * len * dim],
        }
    }

    /// Whether the shape fits the backbone and the values fill it.
    fn fits(&self, meta: &BackboneMeta) -> bool {
        (self.blocks, self.len, self.dim) == (meta.prompt_blocks, meta.prompt_len, meta.embed_dim)
            && self.data.len() == meta.prompt_blocks * 2 * meta.prompt_len * meta.embed_dim
    }
}

type Plan = Arc<TypedRunnableModel>;

pub struct Backbone {
    pub meta: BackboneMeta,
    pub path: PathBuf,
    /// sha256 of the ONNX file: what a bank records to refuse another backbone.
    pub file_sha256: String,
    /// What passes compute in; inputs and outputs are f32 at this API either way.
    pub arithmetic: Arithmetic,
    batch: usize,
    plan: Plan,
}

impl Backbone {
    /// Loads for single images (the device hot path), computing in f32.
    pub fn load(path: &Path) -> Result<Backbone> {
        Backbone::load_as(path, 1, Arithmetic::F32)
    }

    pub fn load_batched(path: &Path, batch: usize) -> Result<Backbone> {
        Backbone::load_as(path, batch, Arithmetic::F32)
    }

    pub fn load_as(path: &Path, batch: usize, arithmetic: Arithmetic) -> Result<Backbone> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read backbone {}", path.display()))?;
        Backbone::from_bytes_as(bytes, path, batch, arithmetic)
    }

    /// [`Backbone::from_bytes_as`] in f32.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path, batch: usize) -> Result<Backbone> {
        Backbone::from_bytes_as(bytes, path, batch, Arithmetic::F32)
    }

    /// Loads an ONNX file already in memory; `path` names it in errors and reports. Each copy of
    /// the weights is dropped as soon as the next one exists, which bounds peak memory at load.
    pub(crate) fn from_bytes_as(bytes: Vec<u8>, path: &Path, batch: usize, arithmetic: Arithmetic) -> Result<Backbone> {
        ensure!(batch >= 1, "batch must be at least 1");
        let (file_sha256, mut proto, meta) = decode(&bytes, path)?;
        drop(bytes);
        if let Some(graph) = proto.graph.as_mut() {
            super::dequant::fold_constant_dequantize(graph, &path.display().to_string())?;
        }
        let plan = optimise(proto, &meta, batch, arithmetic)
            .with_context(|| format!("{}: tract cannot load it in {arithmetic}", path.display()))?;
        Ok(Backbone {
            meta,
            path: path.to_path_buf(),
            file_sha256,
            arithmetic,
            batch,
            plan,
        })
    }

    /// What a bank is checked against: this file, its shapes and its arithmetic.
    pub fn spec(&self) -> BackboneSpec {
        BackboneSpec {
            arithmetic: Some(self.arithmetic),
            ..BackboneSpec::new(&self.file_sha256, &self.meta)
        }
    }

    /// A backbone file's spec, without building its plan (seconds for a large backbone); the
    /// arithmetic is the running backbone's, so it is left unchecked.
    pub fn read_spec(path: &Path) -> Result<BackboneSpec> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read backbone {}", path.display()))?;
        let (sha256, _, meta) = decode(&bytes, path)?;
        Ok(BackboneSpec::new(&sha256, &meta))
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The optimised graph tract runs, shapes concrete.
    pub fn model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// Patch features [batch, N, F] for a batch of normalised images [batch, 3, S, S]; each
    /// sample gets its own prompt (None = plain pass).
    pub fn run(&self, images: Tensor, prompts: &[Option<&Prompt>]) -> Result<Tensor> {
        let s = self.meta.input_size;
        ensure!(
            images.shape() == [self.batch, 3, s, s],
            "image tensor {:?}, expected [{}, 3, {s}, {s}]",
            images.shape(),
            self.batch
        );
        ensure!(
            prompts.len() == self.batch,
            "{} prompts for a batch of {}",
            prompts.len(),
            self.batch
        );
        let per_sample = self.meta.prompt_blocks * 2 * self.meta.prompt_len * self.meta.embed_dim;
        let mut prompt = vec![0f32; self.batch * per_sample];
        let mut gate = vec![0f32; self.batch];
        for (i, p) in prompts.iter().enumerate() {
            if let Some(p) = p {
                ensure!(
                    p.fits(&self.meta),
                    "prompt [{}, 2, {}, {}] with {} values does not fit this backbone's [{}, 2, {}, {}] ({per_sample} values)",
                    p.blocks,
                    p.len,
                    p.dim,
                    p.data.len(),
                    self.meta.prompt_blocks,
                    self.meta.prompt_len,
                    self.meta.embed_dim
                );
                prompt[i * per_sample..][..per_sample].copy_from_slice(&p.data);
                gate[i] = 1.0;
            }
        }
        let prompt_shape = [
            self.batch,
            self.meta.prompt_blocks,
            2,
            self.meta.prompt_len,
            self.meta.embed_dim,
        ];
        let inputs = [
            images,
            Tensor::from_shape(&prompt_shape, &prompt)?,
            Tensor::from_shape(&[self.batch], &gate)?,
        ];
        // f32 tensors go in and come out as they are: no copy on the f32 path.
        let dt = self.arithmetic.datum_type();
        let inputs = inputs
            .into_iter()
            .map(|t| {
                Ok(if dt == t.datum_type() {
                    t
                } else {
                    t.cast_to_dt(dt)?.into_owned()
                }
                .into())
            })
            .collect::<Result<TVec<TValue>>>()?;
        let out = self.plan.run(inputs)?.remove(0).into_tensor();
        Ok(match out.datum_type() {
            DatumType::F32 => out,
            _ => out.cast_to::<f32>()?.into_owned(),
        })
    }

    /// Features of one image as a row-major [N, F] vector.
    pub fn features(&self, image: Tensor, prompt: Option<&Prompt>) -> Result<Vec<f32>> {
        ensure!(self.batch == 1, "features() needs a backbone loaded for batch 1");
        let out = self.run(image, &[prompt])?;
        Ok(out.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }
}

/// An ONNX file's sha256, graph and ucad metadata.
pub(super) fn decode(bytes: &[u8], path: &Path) -> Result<(String, ModelProto, BackboneMeta)> {
    let sha256 = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    };
    let proto = ModelProto::decode(bytes)
        .with_context(|| format!("{}: not an ONNX model (protobuf does not parse)", path.display()))?;
    let meta = BackboneMeta::from_props(&proto.metadata_props, &path.display().to_string())?;
    Ok((sha256, proto, meta))
}

fn optimise(proto: ModelProto, meta: &BackboneMeta, batch: usize, arithmetic: Arithmetic) -> Result<Plan> {
    let s = meta.input_size;
    let prompt_shape = [batch, meta.prompt_blocks, 2, meta.prompt_len, meta.embed_dim];
    let model = tract_onnx::onnx().model_for_proto_model(&proto)?;
    drop(proto);
    let model = model
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), [batch, 3, s, s]))?
        .with_input_fact(1, InferenceFact::dt_shape(f32::datum_type(), prompt_shape))?
        .with_input_fact(2, InferenceFact::dt_shape(f32::datum_type(), [batch]))?;
    let mut model = model.into_typed()?;
    if arithmetic == Arithmetic::F16 {
        model.transform(&FloatPrecisionTranslator::with_filter(
            f32::datum_type(),
            f16::datum_type(),
            |node| {
                !KEPT_F32_SCOPES.iter().any(|scope| node.name.starts_with(scope))
                    && !KEPT_F32.iter().any(|op| node.name.contains(op))
            },
        ))?;
    }
    model.into_optimized()?.into_runnable()
}

/// Ops (nodes named `scope/Op_n` by the export, `scope/Op_n.part` once tract expands them) that
/// stay f32 in an f16 backbone. LayerNorm sums squares of activations in its own type, beyond
/// f16's range (65504) for CLIP's. Sigmoid (QuickGELU's gate) and Softmax in f16 cost CLIP
/// B/16's worst token most of its cosine with f32 (0.93 instead of 0.98 measured on a hazelnut
/// image, x86); they are element-wise work, small next to the products.
const KEPT_F32: &[&str] = &["/LayerNormalization_", "/Sigmoid_", "/Softmax_"];

/// Scopes that stay f32: the prompt gate's bias, (gate − 1)·1e9, and the export's scalar
/// constants (1e9 among them): 1e9 is infinite in f16, and 0·∞ would make every prompted pass
/// NaN. Constants are folded into the f16 ops they feed either way.
const KEPT_F32_SCOPES: &[&str] = &["gate/", "const/"];
