//! `ucad backbone-cost`: what one frame costs a backbone, counted from the graph tract runs (the
//! multiply-accumulates each op reports through `TypedOp::cost`) and from the weights the file
//! holds, as stored and as loaded (f32 after dequantization). The latency budget in
//! board/README.md starts from these numbers.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tract_core::ops::konst::Const;
use tract_core::ops::Cost;
use tract_core::prelude::*;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, TensorProto};

use super::dequant::fold_constant_dequantize;
use super::runner::{decode, Backbone};

/// The cost of one plain pass (batch 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameCost {
    pub file: String,
    pub file_bytes: u64,
    /// The initializers as the file stores them (int8 codes and their scales for an int8 export).
    pub stored_weight_bytes: u64,
    /// The initializers as tract holds them once loaded (int8 dequantized to f32): every one is
    /// read once per frame.
    pub weight_bytes: u64,
    pub ops: OpCounts,
}

/// What the ops of a graph report for one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OpCounts {
    /// Multiply-accumulates of the matrix products (patch embedding, projections, attention).
    pub matmul_macs: u64,
    /// Every other arithmetic op tract counts (element-wise, normalisation, softmax), one per
    /// FMA or division.
    pub other_ops: u64,
    /// The largest tensor an op writes.
    pub largest_activation_bytes: u64,
    /// All tensors the ops write, summed: an upper bound of the activation traffic.
    pub activation_bytes: u64,
}

impl FrameCost {
    /// FLOPs per frame: two per multiply-accumulate, one per other op.
    pub(crate) fn flops(&self) -> u64 {
        2 * self.ops.matmul_macs + self.ops.other_ops
    }

    pub fn of_file(path: &Path) -> Result<FrameCost> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read backbone {}", path.display()))?;
        FrameCost::of_bytes(bytes, path)
    }

    /// The cost of the ONNX backbone in `bytes`; `path` names it in errors and in the report.
    pub(crate) fn of_bytes(bytes: Vec<u8>, path: &Path) -> Result<FrameCost> {
        let origin = path.display().to_string();
        let (_, mut proto, _) = decode(&bytes, path)?;
        let graph = proto
            .graph
            .as_mut()
            .with_context(|| format!("{origin}: the model has no graph"))?;
        let stored_weight_bytes = initializer_bytes(graph, &origin)?;
        fold_constant_dequantize(graph, &origin)?;
        let weight_bytes = initializer_bytes(graph, &origin)?;
        drop(proto);
        let file_bytes = bytes.len() as u64;
        let backbone = Backbone::from_bytes(bytes, path, 1)?;
        let ops = count_ops(backbone.model()).with_context(|| format!("{origin}: cannot count its ops"))?;
        Ok(FrameCost {
            file: origin,
            file_bytes,
            stored_weight_bytes,
            weight_bytes,
            ops,
        })
    }
}

/// Sums the cost every node of `model` reports for its input shapes, which must be concrete.
pub(crate) fn count_ops(model: &TypedModel) -> Result<OpCounts> {
    let mut counts = OpCounts::default();
    for node in model.nodes() {
        let inputs = model.node_input_facts(node.id)?;
        let matmul = is_matrix_product(node.op.name().as_ref());
        for (cost, count) in node.op.cost(&inputs)? {
            if !cost.is_compute() {
                continue;
            }
            let count = concrete(&count).with_context(|| format!("node {} ({})", node.name, node.op.name()))?;
            match cost {
                Cost::FMA(_) if matmul => counts.matmul_macs += count,
                _ => counts.other_ops += count,
            }
        }
        if node.op_is::<Const>() {
            continue;
        }
        for output in &node.outputs {
            let fact = &output.fact;
            let elements = concrete(&fact.shape.volume()).with_context(|| format!("node {} output", node.name))?;
            let bytes = elements * fact.datum_type.size_of() as u64;
            counts.activation_bytes += bytes;
            counts.largest_activation_bytes = counts.largest_activation_bytes.max(bytes);
        }
    }
    Ok(counts)
}

/// The ops tract lowers ONNX's MatMul, Gemm and Conv to (before and after optimisation).
fn is_matrix_product(op: &str) -> bool {
    ["MatMul", "EinSum", "Conv"].iter().any(|name| op.contains(name))
}

fn concrete(dim: &TDim) -> Result<u64> {
    let value = dim
        .to_i64()
        .with_context(|| format!("dimension {dim} is not a number"))?;
    u64::try_from(value).with_context(|| format!("dimension {dim} is negative"))
}

/// Bytes of every initializer of `graph` at its stored element type.
fn initializer_bytes(graph: &GraphProto, origin: &str) -> Result<u64> {
    graph
        .initializer
        .iter()
        .map(|t| tensor_bytes(t).with_context(|| format!("{origin}: initializer {}", t.name)))
        .sum()
}

fn tensor_bytes(t: &TensorProto) -> Result<u64> {
    let onnx_type =
        DataType::try_from(t.data_type).map_err(|_| anyhow::anyhow!("unknown ONNX element type {}", t.data_type))?;
    let datum = DatumType::try_from(onnx_type)?;
    let elements = t.dims.iter().try_fold(1u64, |n, d| {
        u64::try_from(*d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .with_context(|| format!("dimensions {:?} do not give a size", t.dims))
    })?;
    Ok(elements * datum.size_of() as u64)
}

/// The table `ucad backbone-cost` prints.
pub fn print_table(rows: &[FrameCost]) {
    const MIB: f64 = (1 << 20) as f64;
    println!(
        "| backbone | file MiB | weights stored MiB | weights loaded (f32) MiB | matmul GMAC | other Gop | GFLOP/frame | largest activation MiB | activations written MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} |",
            r.file,
            r.file_bytes as f64 / MIB,
            r.stored_weight_bytes as f64 / MIB,
            r.weight_bytes as f64 / MIB,
            r.ops.matmul_macs as f64 / 1e9,
            r.ops.other_ops as f64 / 1e9,
            r.flops() as f64 / 1e9,
            r.ops.largest_activation_bytes as f64 / MIB,
            r.ops.activation_bytes as f64 / MIB
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{export_model, Arch, ExportOptions, Quant, VitWeights};
    use prost::Message;

    /// The multiply-accumulates of a prompted ViT pass counted by hand: the patch embedding,
    /// then per block q, k, v, the output projection, the two MLP layers, and attention over
    /// the tokens and the prompt's prefix keys (logits, then probabilities times values). The
    /// output holds patch tokens only, so in the last block tract computes the rows after the
    /// logits (attention output, projection, MLP) for the patches alone, not the class token.
    fn hand_count(opts: &ExportOptions) -> u64 {
        let spec = opts.arch.spec();
        let (d, h, l) = (spec.embed_dim as u64, spec.mlp_hidden as u64, opts.prompt_len as u64);
        let patches = (opts.input_size / spec.patch).pow(2) as u64;
        let tokens = patches + 1;
        let blocks = *opts.blocks.iter().max().unwrap() as u64 + 1;
        let patch_embed = patches * d * 3 * (spec.patch as u64).pow(2);
        let qkv_and_logits = 3 * tokens * d * d + tokens * (tokens + l) * d;
        let rest = |rows: u64| rows * (tokens + l) * d + rows * d * d + 2 * rows * d * h;
        patch_embed + blocks * qkv_and_logits + (blocks - 1) * rest(tokens) + rest(patches)
    }

    fn exported(opts: &ExportOptions) -> Vec<u8> {
        let weights = VitWeights::random(opts.arch, 3);
        export_model(&weights, opts).unwrap().encode_to_vec()
    }

    #[test]
    fn matrix_products_of_the_tiny_vit_match_the_hand_count() {
        for blocks in [vec![0], vec![1, 3]] {
            let opts = ExportOptions {
                blocks,
                prompt_len: 2,
                ..ExportOptions::defaults(Arch::VitTinyTest)
            };
            let cost = FrameCost::of_bytes(exported(&opts), Path::new("tiny.onnx")).unwrap();
            assert_eq!(cost.ops.matmul_macs, hand_count(&opts), "blocks {:?}", opts.blocks);
            assert!(cost.ops.other_ops > 0 && cost.ops.other_ops < cost.ops.matmul_macs);
            // The widest tensor is the MLP's hidden layer or the attention logits, in f32.
            let spec = opts.arch.spec();
            let tokens = (opts.input_size / spec.patch).pow(2) + 1;
            let widest = (tokens * spec.mlp_hidden).max(spec.heads * tokens * (tokens + opts.prompt_len));
            assert!(cost.ops.largest_activation_bytes >= 4 * widest as u64, "{cost:?}");
        }
    }

    #[test]
    fn int8_weights_are_stored_small_and_counted_as_loaded_f32() {
        let f32_opts = ExportOptions::defaults(Arch::VitTinyTest);
        let int8_opts = ExportOptions {
            quant: Quant::Int8,
            ..f32_opts.clone()
        };
        let f32_cost = FrameCost::of_bytes(exported(&f32_opts), Path::new("f32.onnx")).unwrap();
        let int8_cost = FrameCost::of_bytes(exported(&int8_opts), Path::new("int8.onnx")).unwrap();
        assert_eq!(f32_cost.stored_weight_bytes, f32_cost.weight_bytes);
        assert_eq!(int8_cost.weight_bytes, f32_cost.weight_bytes);
        assert!(
            int8_cost.stored_weight_bytes < f32_cost.stored_weight_bytes / 2,
            "{int8_cost:?}"
        );
        assert_eq!(int8_cost.ops, f32_cost.ops);
    }
}
