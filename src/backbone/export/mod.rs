//! Writes a ViT as an ONNX graph with prefix-prompt inputs, cut after the last feature block.
//!
//! Inputs: `image` [B,3,S,S] (normalised), `prompt` [B,P,2,L,D] (per sample, per block: L key
//! and L value prefix tokens) and `prompt_gate` [B] (1 = prompted, 0 = plain). With gate 0 the
//! prefix logits get −1e9 added, so the softmax gives them exactly zero weight and the output is
//! the frozen ViT's. Output: `features` [B,N,D·k], the patch tokens (CLS dropped) of the k
//! feature blocks, concatenated on the channel axis.

use std::path::Path;

use anyhow::Result;
use prost::Message;
use tract_onnx::pb::{ModelProto, OperatorSetIdProto};

mod options;

pub use options::ExportOptions;

use crate::backbone::arch::{Activation, ArchSpec};
use crate::backbone::meta::{BackboneMeta, Quant};
use crate::backbone::onnx_graph::{attr_float, attr_int, attr_ints, Dim, GraphBuilder};
use crate::backbone::resample::position_embedding;
use crate::backbone::weights::VitWeights;

pub(crate) const OPSET: i64 = 17;
/// Added to the prefix logits of a plain (gate 0) pass; exp(−1e9) is exactly 0 in f32.
const GATE_OFF_BIAS: f32 = 1e9;

/// Builds the ONNX model; `weights` must already be validated for `opts.arch`.
pub fn export_model(weights: &VitWeights, opts: &ExportOptions) -> Result<ModelProto> {
    let spec = opts.arch.spec();
    opts.check(&spec)?;
    weights.validate(opts.arch, "weights")?;
    let mut blocks = opts.blocks.clone();
    blocks.sort_unstable();
    blocks.dedup();
    let meta = BackboneMeta {
        arch: opts.arch,
        patch: spec.patch,
        input_size: opts.input_size,
        embed_dim: spec.embed_dim,
        heads: spec.heads,
        prompt_blocks: blocks[blocks.len() - 1] + 1,
        feature_blocks: blocks,
        prompt_len: opts.prompt_len,
        resize: opts.resize,
        mean: spec.mean,
        std: spec.std,
        weights_sha256: weights.sha256.clone(),
        quant: opts.quant,
    };
    let graph = VitGraph {
        g: GraphBuilder::default(),
        w: weights,
        spec: &spec,
        meta: &meta,
    }
    .build()?;
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "ucad".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: meta.to_props(),
        ..Default::default()
    })
}

pub fn export_to_file(weights: &VitWeights, opts: &ExportOptions, out: &Path) -> Result<()> {
    let model = export_model(weights, opts)?;
    crate::fsutil::write_atomic(out, &model.encode_to_vec())
}

/// A linear layer's input: as it is, or quantised at run time once for all the layers that read
/// it (q, k and v) in the [`Quant::Int8Dynamic`] reference.
enum LinearInput {
    F32(String),
    Int8 {
        q: String,
        scale: String,
        zero_point: String,
    },
}

struct VitGraph<'a> {
    g: GraphBuilder,
    w: &'a VitWeights,
    spec: &'a ArchSpec,
    meta: &'a BackboneMeta,
}

impl VitGraph<'_> {
    fn build(mut self) -> Result<tract_onnx::pb::GraphProto> {
        let (s, d, l) = (self.meta.input_size, self.spec.embed_dim, self.meta.prompt_len);
        let p = self.meta.prompt_blocks;
        let image = self.g.input(
            "image",
            &[Dim::Symbol("batch"), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)],
        );
        let prompt = self.g.input(
            "prompt",
            &[
                Dim::Symbol("batch"),
                Dim::Fixed(p),
                Dim::Fixed(2),
                Dim::Fixed(l),
                Dim::Fixed(d),
            ],
        );
        let gate = self.g.input("prompt_gate", &[Dim::Symbol("batch")]);
        let gate_bias = self.gate_bias(&gate);
        let mut x = self.embed(&image)?;
        if self.spec.pre_norm {
            x = self.layer_norm("norm_pre", &x)?;
        }
        let mut features = Vec::new();
        for b in 0..p {
            x = self.block(b, &x, &prompt, &gate_bias)?;
            if self.meta.feature_blocks.contains(&b) {
                let tokens = 1 + self.meta.patches() as i64;
                let (starts, ends, axes) = (self.g.ints(&[1]), self.g.ints(&[tokens]), self.g.ints(&[1]));
                features.push(
                    self.g
                        .op(&format!("features.{b}"), "Slice", &[&x, &starts, &ends, &axes], vec![]),
                );
            }
        }
        let refs: Vec<&str> = features.iter().map(String::as_str).collect();
        self.g.op_to("features", "Concat", &refs, vec![attr_int("axis", 2)]);
        let n = self.meta.patches();
        let f = self.meta.feature_dim();
        self.g
            .output("features", &[Dim::Symbol("batch"), Dim::Fixed(n), Dim::Fixed(f)]);
        Ok(self.g.finish("ucad_vit"))
    }

    fn param(&mut self, name: &str) -> Result<String> {
        let p = self.w.get(name)?;
        Ok(self.g.f32_init(name, &p.shape, &p.data))
    }

    /// (gate − 1)·1e9 as [B,1,1,1]: 0 when prompted, −1e9 when plain.
    fn gate_bias(&mut self, gate: &str) -> String {
        let one = self.g.scalar(1.0);
        let big = self.g.scalar(GATE_OFF_BIAS);
        let off = self.g.op("gate", "Sub", &[gate, &one], vec![]);
        let bias = self.g.op("gate", "Mul", &[&off, &big], vec![]);
        let shape = self.g.ints(&[-1, 1, 1, 1]);
        self.g.op("gate", "Reshape", &[&bias, &shape], vec![])
    }

    /// Patch embedding, CLS token and the position embedding resampled to the export grid.
    fn embed(&mut self, image: &str) -> Result<String> {
        let (d, patch, grid) = (self.spec.embed_dim, self.spec.patch as i64, self.meta.grid());
        let mut conv_inputs = vec![image.to_string(), self.param("patch_embed.proj.weight")?];
        if self.spec.patch_bias {
            conv_inputs.push(self.param("patch_embed.proj.bias")?);
        }
        let refs: Vec<&str> = conv_inputs.iter().map(String::as_str).collect();
        let attrs = vec![
            attr_ints("kernel_shape", &[patch, patch]),
            attr_ints("strides", &[patch, patch]),
        ];
        let conv = self.g.op("patch_embed", "Conv", &refs, attrs);
        let flat_shape = self.g.ints(&[-1, d as i64, (grid * grid) as i64]);
        let flat = self.g.op("patch_embed", "Reshape", &[&conv, &flat_shape], vec![]);
        let patches = self.g.op(
            "patch_embed",
            "Transpose",
            &[&flat],
            vec![attr_ints("perm", &[0, 2, 1])],
        );

        let shape = self.g.op("cls", "Shape", &[image], vec![]);
        let (zero, one, axis0) = (self.g.ints(&[0]), self.g.ints(&[1]), self.g.ints(&[0]));
        let batch = self.g.op("cls", "Slice", &[&shape, &zero, &one, &axis0], vec![]);
        let rest = self.g.ints(&[1, d as i64]);
        let cls_shape = self.g.op("cls", "Concat", &[&batch, &rest], vec![attr_int("axis", 0)]);
        let cls = self.param("cls_token")?;
        let cls = self.g.op("cls", "Expand", &[&cls, &cls_shape], vec![]);
        let tokens = self
            .g
            .op("embed", "Concat", &[&cls, &patches], vec![attr_int("axis", 1)]);

        let pos = position_embedding(self.w, self.spec, grid)?;
        let pos = self.g.f32_init("pos_embed", &[1, 1 + grid * grid, d], &pos);
        Ok(self.g.op("embed", "Add", &[&tokens, &pos], vec![]))
    }

    fn layer_norm(&mut self, prefix: &str, x: &str) -> Result<String> {
        let scale = self.param(&format!("{prefix}.weight"))?;
        let bias = self.param(&format!("{prefix}.bias"))?;
        let attrs = vec![attr_int("axis", -1), attr_float("epsilon", self.spec.ln_eps)];
        Ok(self.g.op(prefix, "LayerNormalization", &[x, &scale, &bias], attrs))
    }

    fn linear_input(&mut self, scope: &str, x: &str) -> LinearInput {
        if self.meta.quant != Quant::Int8Dynamic {
            return LinearInput::F32(x.to_string());
        }
        let mut out = self.g.op_n(scope, "DynamicQuantizeLinear", &[x], vec![], 3);
        let zero_point = out.pop().expect("3 outputs");
        let scale = out.pop().expect("3 outputs");
        LinearInput::Int8 {
            q: out.pop().expect("3 outputs"),
            scale,
            zero_point,
        }
    }

    /// y = x·Wᵀ + b for W = weight[rows] (a row range selects q, k or v out of a fused qkv).
    fn linear(
        &mut self,
        scope: &str,
        input: &LinearInput,
        weight: &str,
        bias: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<String> {
        let w = self.w.get(weight)?;
        let (cols, out_dim) = (w.shape[1], rows.len());
        let b = self.g.f32_init(
            &format!("{scope}.bias"),
            &[out_dim],
            &self.w.get(bias)?.data[rows.clone()],
        );
        let weight_t = format!("{scope}.weight_t");
        let y = match (input, self.meta.quant) {
            (LinearInput::F32(x), Quant::F32) => {
                let wt = transposed(&w.data[rows.start * cols..rows.end * cols], cols);
                let wt = self.g.f32_init(&weight_t, &[cols, out_dim], &wt);
                self.g.op(scope, "MatMul", &[x, &wt], vec![])
            }
            (LinearInput::F32(x), _) => {
                let (codes, scales) = self.int8_weight(scope, weight, rows)?;
                let attrs = vec![attr_int("axis", 1)];
                self.g.op_to(&weight_t, "DequantizeLinear", &[&codes, &scales], attrs);
                self.g.op(scope, "MatMul", &[x, &weight_t], vec![])
            }
            (LinearInput::Int8 { q, scale, zero_point }, _) => {
                let (codes, scales) = self.int8_weight(scope, weight, rows)?;
                let codes_zp = self.g.i8_init(&format!("{scope}.weight_zp"), &[], &[0]);
                let acc = self
                    .g
                    .op(scope, "MatMulInteger", &[q, &codes, zero_point, &codes_zp], vec![]);
                let acc = self.g.op(scope, "Cast", &[&acc], vec![attr_int("to", 1)]);
                let scales = self.g.op(scope, "Mul", &[scale, &scales], vec![]);
                self.g.op(scope, "Mul", &[&acc, &scales], vec![])
            }
        };
        Ok(self.g.op(scope, "Add", &[&y, &b], vec![]))
    }

    /// The int8 codes [in, out] and scales [out] initializers of weight[rows]: the weights' own
    /// int8 form when they have one (the pretrained graph's), else quantised here.
    fn int8_weight(&mut self, scope: &str, weight: &str, rows: std::ops::Range<usize>) -> Result<(String, String)> {
        let w = self.w.get(weight)?;
        let cols = w.shape[1];
        let (codes, scales) = match self.w.int8.get(weight) {
            Some(q) => (
                transposed(&q.codes[rows.start * cols..rows.end * cols], cols),
                q.scales[rows.clone()].to_vec(),
            ),
            // [out, in] → [in, out], one scale per output column.
            None => crate::linalg::quantise_columns(
                &transposed(&w.data[rows.start * cols..rows.end * cols], cols),
                rows.len(),
            ),
        };
        let codes = self
            .g
            .i8_init(&format!("{scope}.weight_q"), &[cols, rows.len()], &codes);
        let scales = self
            .g
            .f32_init(&format!("{scope}.weight_scale"), &[rows.len()], &scales);
        Ok((codes, scales))
    }

    /// [B,T,D] → [B,H,T,hd] (or [B,H,hd,T] when `keys_t`).
    fn split_heads(&mut self, scope: &str, x: &str, tokens: usize, keys_t: bool) -> String {
        let (h, hd) = (self.spec.heads as i64, self.spec.head_dim() as i64);
        let shape = self.g.ints(&[-1, tokens as i64, h, hd]);
        let x = self.g.op(scope, "Reshape", &[x, &shape], vec![]);
        let perm: &[i64] = if keys_t { &[0, 2, 3, 1] } else { &[0, 2, 1, 3] };
        self.g.op(scope, "Transpose", &[&x], vec![attr_ints("perm", perm)])
    }

    fn attention(&mut self, b: usize, x: &str, prompt: &str, gate_bias: &str) -> Result<String> {
        let (d, t, l) = (self.spec.embed_dim, 1 + self.meta.patches(), self.meta.prompt_len);
        let s = format!("blocks.{b}.attn");
        let (qkv_w, qkv_b) = (
            format!("blocks.{b}.attn.qkv.weight"),
            format!("blocks.{b}.attn.qkv.bias"),
        );
        let input = self.linear_input(&s, x);
        let q = self.linear(&format!("{s}.q"), &input, &qkv_w, &qkv_b, 0..d)?;
        let k = self.linear(&format!("{s}.k"), &input, &qkv_w, &qkv_b, d..2 * d)?;
        let v = self.linear(&format!("{s}.v"), &input, &qkv_w, &qkv_b, 2 * d..3 * d)?;
        let scale = self.g.scalar((self.spec.head_dim() as f32).powf(-0.5));
        let q = self.g.op(&s, "Mul", &[&q, &scale], vec![]);
        let q = self.split_heads(&s, &q, t, false);
        let k_t = self.split_heads(&s, &k, t, true);
        let v = self.split_heads(&s, &v, t, false);

        let block_index = self.g.index(b as i64);
        let block_prompt = self
            .g
            .op(&s, "Gather", &[prompt, &block_index], vec![attr_int("axis", 1)]);
        let (key_index, value_index) = (self.g.index(0), self.g.index(1));
        let pk = self
            .g
            .op(&s, "Gather", &[&block_prompt, &key_index], vec![attr_int("axis", 1)]);
        let pv = self
            .g
            .op(&s, "Gather", &[&block_prompt, &value_index], vec![attr_int("axis", 1)]);
        let pk_t = self.split_heads(&s, &pk, l, true);
        let pv = self.split_heads(&s, &pv, l, false);

        let prefix_logits = self.g.op(&s, "MatMul", &[&q, &pk_t], vec![]);
        let prefix_logits = self.g.op(&s, "Add", &[&prefix_logits, gate_bias], vec![]);
        let token_logits = self.g.op(&s, "MatMul", &[&q, &k_t], vec![]);
        let logits = self.g.op(
            &s,
            "Concat",
            &[&prefix_logits, &token_logits],
            vec![attr_int("axis", 3)],
        );
        let probs = self.g.op(&s, "Softmax", &[&logits], vec![attr_int("axis", 3)]);
        let values = self.g.op(&s, "Concat", &[&pv, &v], vec![attr_int("axis", 2)]);
        let heads = self.g.op(&s, "MatMul", &[&probs, &values], vec![]);
        let heads = self
            .g
            .op(&s, "Transpose", &[&heads], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let shape = self.g.ints(&[-1, t as i64, d as i64]);
        let merged = self.g.op(&s, "Reshape", &[&heads, &shape], vec![]);
        let input = self.linear_input(&format!("{s}.proj"), &merged);
        self.linear(
            &format!("{s}.proj"),
            &input,
            &format!("{s}.proj.weight"),
            &format!("{s}.proj.bias"),
            0..d,
        )
    }

    fn activation(&mut self, scope: &str, x: &str) -> String {
        match self.spec.activation {
            Activation::Gelu => {
                let (inv_sqrt2, one, half) = (
                    self.g.scalar(std::f32::consts::FRAC_1_SQRT_2),
                    self.g.scalar(1.0),
                    self.g.scalar(0.5),
                );
                let scaled = self.g.op(scope, "Mul", &[x, &inv_sqrt2], vec![]);
                let erf = self.g.op(scope, "Erf", &[&scaled], vec![]);
                let erf1 = self.g.op(scope, "Add", &[&erf, &one], vec![]);
                let y = self.g.op(scope, "Mul", &[x, &erf1], vec![]);
                self.g.op(scope, "Mul", &[&y, &half], vec![])
            }
            Activation::QuickGelu => {
                let k = self.g.scalar(1.702);
                let scaled = self.g.op(scope, "Mul", &[x, &k], vec![]);
                let gate = self.g.op(scope, "Sigmoid", &[&scaled], vec![]);
                self.g.op(scope, "Mul", &[x, &gate], vec![])
            }
        }
    }

    fn mlp(&mut self, b: usize, x: &str) -> Result<String> {
        let (d, h) = (self.spec.embed_dim, self.spec.mlp_hidden);
        let s = format!("blocks.{b}.mlp");
        let input = self.linear_input(&format!("{s}.fc1"), x);
        let hidden = self.linear(
            &format!("{s}.fc1"),
            &input,
            &format!("{s}.fc1.weight"),
            &format!("{s}.fc1.bias"),
            0..h,
        )?;
        let hidden = self.activation(&s, &hidden);
        let input = self.linear_input(&format!("{s}.fc2"), &hidden);
        self.linear(
            &format!("{s}.fc2"),
            &input,
            &format!("{s}.fc2.weight"),
            &format!("{s}.fc2.bias"),
            0..d,
        )
    }

    fn residual(&mut self, x: &str, branch: &str, gamma: &str) -> Result<String> {
        let branch = if self.spec.layer_scale {
            let gamma = self.param(gamma)?;
            self.g.op(gamma.as_str(), "Mul", &[branch, &gamma], vec![])
        } else {
            branch.to_string()
        };
        Ok(self.g.op("residual", "Add", &[x, &branch], vec![]))
    }

    fn block(&mut self, b: usize, x: &str, prompt: &str, gate_bias: &str) -> Result<String> {
        let h = self.layer_norm(&format!("blocks.{b}.norm1"), x)?;
        let attn = self.attention(b, &h, prompt, gate_bias)?;
        let x = self.residual(x, &attn, &format!("blocks.{b}.ls1.gamma"))?;
        let h = self.layer_norm(&format!("blocks.{b}.norm2"), &x)?;
        let mlp = self.mlp(b, &h)?;
        self.residual(&x, &mlp, &format!("blocks.{b}.ls2.gamma"))
    }
}

/// A row-major [rows, cols] matrix as [cols, rows].
fn transposed<T: Copy + Default>(m: &[T], cols: usize) -> Vec<T> {
    let rows = m.len() / cols;
    let mut out = vec![T::default(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}
