//! Int8 weights stored as `DequantizeLinear` of constants, turned into f32 initializers when a
//! backbone is loaded. tract would keep them as int8 and dequantize on every run: its constant
//! folding stops at 4 MiB, and CLIP's Linear weights are larger. Folding them here gives a file a
//! quarter the size of the f32 one that runs at f32 speed.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};

use super::onnx_graph::{float_values, int8_values};

/// codes · scale per channel, channel = (index / inner) mod channels (`inner`: the product of
/// the dimensions after the channel axis).
pub fn dequantize(codes: &[i8], scales: &[f32], inner: usize) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, c)| *c as f32 * scales[(i / inner) % scales.len()])
        .collect()
}

/// Replaces every `DequantizeLinear` whose inputs are all initializers by the f32 initializer
/// it computes, and drops the int8 initializers nothing reads any more. Returns how many were
/// folded; errors name `origin` and the node.
pub(crate) fn fold_constant_dequantize(graph: &mut GraphProto, origin: &str) -> Result<usize> {
    let index: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut folded = Vec::new();
    let mut consumed = HashSet::new();
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let constant = node.op_type == "DequantizeLinear" && node.input.iter().all(|i| index.contains_key(i));
        if !constant {
            kept.push(node);
            continue;
        }
        let inputs: Vec<&TensorProto> = node.input.iter().map(|i| &graph.initializer[index[i]]).collect();
        let tensor = fold(&node, &inputs)
            .with_context(|| format!("{origin}: int8 weight {} (node {})", node.input[0], node.name))?;
        folded.push(tensor);
        consumed.extend(node.input);
    }
    graph.node = kept;
    let count = folded.len();
    let still_read: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .chain(graph.output.iter().map(|o| &o.name))
        .map(String::as_str)
        .collect();
    let unread: HashSet<String> = consumed
        .into_iter()
        .filter(|name| !still_read.contains(name.as_str()))
        .collect();
    graph.initializer.retain(|t| !unread.contains(&t.name));
    graph.initializer.extend(folded);
    Ok(count)
}

/// The f32 tensor of one `DequantizeLinear(codes, scale[, zero_point])` over int8 constants.
fn fold(node: &NodeProto, inputs: &[&TensorProto]) -> Result<TensorProto> {
    ensure!(
        (2..=3).contains(&inputs.len()) && node.output.len() == 1,
        "DequantizeLinear has {} inputs and {} outputs",
        inputs.len(),
        node.output.len()
    );
    let x = inputs[0];
    let codes = int8_values(x).with_context(|| format!("codes are not int8 (ONNX type {})", x.data_type))?;
    let dims: Vec<usize> = x
        .dims
        .iter()
        .map(|d| usize::try_from(*d))
        .collect::<Result<_, _>>()
        .with_context(|| format!("a negative dimension in the shape {:?}", x.dims))?;
    ensure!(
        dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d)) == Some(codes.len()),
        "{} codes for shape {dims:?}",
        codes.len()
    );
    let scales = float_values(inputs[1]).context("scales are not f32")?;
    // |code| ≤ 128: a larger scale makes infinite weights, and NaN features downstream.
    if let Some(i) = scales
        .iter()
        .position(|s| !s.is_finite() || *s <= 0.0 || *s > f32::MAX / 128.0)
    {
        bail!(
            "scale {i} is {}, not a positive number whose weights f32 can hold",
            scales[i]
        );
    }
    if let Some(zero_point) = inputs.get(2) {
        let zp = int8_values(zero_point).context("zero points are not int8")?;
        ensure!(
            zp.iter().all(|z| *z == 0),
            "non-zero zero points (only symmetric int8 is read)"
        );
    }
    if node.attribute.iter().any(|a| a.name == "block_size") {
        bail!("blocked quantisation (block_size) is not read");
    }
    let inner = if scales.len() == 1 {
        codes.len().max(1)
    } else {
        let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
        let rank = dims.len() as i64;
        ensure!(
            (-rank..rank).contains(&axis),
            "axis {axis} outside a rank-{rank} tensor"
        );
        let axis = axis.rem_euclid(rank) as usize;
        ensure!(
            scales.len() == dims[axis],
            "{} scales for {} channels (axis {axis} of {dims:?})",
            scales.len(),
            dims[axis]
        );
        dims[axis + 1..].iter().product()
    };
    Ok(TensorProto {
        name: node.output[0].clone(),
        dims: x.dims.clone(),
        data_type: DataType::Float as i32,
        raw_data: dequantize(&codes, &scales, inner)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::onnx_graph::attr_int;

    fn init(name: &str, dtype: DataType, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: dtype as i32,
            raw_data,
            ..Default::default()
        }
    }

    /// `DequantizeLinear(codes [2, 3], scales, axis)` read by a MatMul, plus an unrelated int8 constant.
    fn graph(scales: &[f32], axis: i64) -> GraphProto {
        let codes: Vec<u8> = [1i8, -2, 3, -127, 0, 127].iter().map(|c| *c as u8).collect();
        let scales = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        GraphProto {
            initializer: vec![
                init("codes", DataType::Int8, &[2, 3], codes),
                init("scales", DataType::Float, &[], scales),
                init("other", DataType::Int8, &[1], vec![5]),
            ],
            node: vec![
                NodeProto {
                    name: "dq".into(),
                    op_type: "DequantizeLinear".into(),
                    input: vec!["codes".into(), "scales".into()],
                    output: vec!["w".into()],
                    attribute: vec![attr_int("axis", axis)],
                    ..Default::default()
                },
                NodeProto {
                    name: "mm".into(),
                    op_type: "MatMul".into(),
                    input: vec!["x".into(), "w".into(), "other".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn values(graph: &GraphProto, name: &str) -> Vec<f32> {
        float_values(graph.initializer.iter().find(|t| t.name == name).unwrap()).unwrap()
    }

    #[test]
    fn per_channel_codes_become_f32_and_the_codes_go() {
        let mut g = graph(&[0.5, 2.0, 4.0], 1);
        assert_eq!(fold_constant_dequantize(&mut g, "m.onnx").unwrap(), 1);
        assert_eq!(values(&g, "w"), [0.5, -4.0, 12.0, -63.5, 0.0, 508.0]);
        let names: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["other", "w"], "the codes and scales are dropped, the rest kept");
        assert_eq!(g.node.len(), 1);

        let mut g = graph(&[0.5, 2.0], 0);
        fold_constant_dequantize(&mut g, "m.onnx").unwrap();
        assert_eq!(values(&g, "w"), [0.5, -1.0, 1.5, -254.0, 0.0, 254.0]);
        let mut g = graph(&[0.5], 1);
        fold_constant_dequantize(&mut g, "m.onnx").unwrap();
        assert_eq!(values(&g, "w"), [0.5, -1.0, 1.5, -63.5, 0.0, 63.5]);
    }

    #[test]
    fn malformed_codes_and_scales_are_refused_naming_the_file_and_the_weight() {
        let cases: Vec<(GraphProto, &str)> = vec![
            (graph(&[0.5, f32::NAN, 4.0], 1), "scale 1 is NaN"),
            (graph(&[0.5, 0.0, 4.0], 1), "scale 1 is 0"),
            (graph(&[0.5, 3e38, 4.0], 1), "whose weights f32 can hold"),
            (graph(&[0.5, 2.0], 1), "2 scales for 3 channels"),
            (graph(&[0.5, 2.0, 4.0], 2), "axis 2 outside"),
            (
                {
                    let mut g = graph(&[0.5, 2.0, 4.0], 1);
                    g.initializer[0].raw_data.pop();
                    g
                },
                "5 codes for shape [2, 3]",
            ),
            (
                {
                    let mut g = graph(&[0.5, 2.0, 4.0], 1);
                    g.initializer[0].data_type = DataType::Uint8 as i32;
                    g
                },
                "codes are not int8",
            ),
            (
                {
                    let mut g = graph(&[0.5, 2.0, 4.0], 1);
                    g.initializer[0].dims = vec![2, -3];
                    g
                },
                "a negative dimension",
            ),
        ];
        for (mut g, want) in cases {
            let err = format!("{:#}", fold_constant_dequantize(&mut g, "m.onnx").unwrap_err());
            assert!(
                err.contains("m.onnx") && err.contains("int8 weight codes") && err.contains(want),
                "{err}"
            );
        }
    }
}
