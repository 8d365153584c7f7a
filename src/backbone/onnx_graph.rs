//! A small builder for ONNX graphs on top of tract's protobuf types.

use std::collections::HashMap;

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// One dimension of a graph input or output.
pub(crate) enum Dim {
    Fixed(usize),
    Symbol(&'static str),
}

#[derive(Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    scalars: HashMap<u32, String>,
    shapes: HashMap<Vec<i64>, String>,
    counter: usize,
}

impl GraphBuilder {
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.outputs.push(value_info(name, dims));
    }

    pub(crate) fn f32_init(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_init(name, DataType::Float, shape, raw)
    }

    pub(crate) fn i8_init(&mut self, name: &str, shape: &[usize], data: &[i8]) -> String {
        let raw = data.iter().map(|v| *v as u8).collect();
        self.raw_init(name, DataType::Int8, shape, raw)
    }

    fn raw_init(&mut self, name: &str, dtype: DataType, shape: &[usize], raw_data: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|d| *d as i64).collect(),
            data_type: dtype as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    /// A shared f32 scalar constant.
    pub(crate) fn scalar(&mut self, value: f32) -> String {
        if let Some(name) = self.scalars.get(&value.to_bits()) {
            return name.clone();
        }
        let name = self.f32_init(&format!("const/f32_{}", self.scalars.len()), &[], &[value]);
        self.scalars.insert(value.to_bits(), name.clone());
        name
    }

    /// A shared 1-D int64 constant (shapes, axes, indices).
    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.shapes.get(values) {
            return name.clone();
        }
        let name = format!("const/i64_{}", self.shapes.len());
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_init(&name, DataType::Int64, &[values.len()], raw);
        self.shapes.insert(values.to_vec(), name.clone());
        name
    }

    /// A 0-d int64 constant (a `Gather` index that removes the axis).
    pub fn index(&mut self, value: i64) -> String {
        let name = format!("const/index_{value}");
        if !self.initializers.iter().any(|t| t.name == name) {
            self.raw_init(&name, DataType::Int64, &[], value.to_le_bytes().to_vec());
        }
        name
    }

    /// Adds a node with one output named after `scope` and the op.
    pub(crate) fn op(&mut self, scope: &str, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(scope, op, inputs, attrs, 1).remove(0)
    }

    pub(crate) fn op_n(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.counter += 1;
        let name = format!("{scope}/{op}_{}", self.counter);
        let output: Vec<String> = (0..outputs).map(|i| format!("{name}:{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds a node whose single output has a fixed name (graph outputs).
    pub(crate) fn op_to(&mut self, output: &str, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) {
        self.counter += 1;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{output}/{op}_{}", self.counter),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
    }

    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            name: name.to_string(),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbol(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(crate) fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// A float tensor's values (raw or typed storage); `None` for another type.
pub(super) fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Some(t.float_data.clone())
}

/// An int8 tensor's values (raw or typed storage); `None` for another type.
pub(super) fn int8_values(t: &TensorProto) -> Option<Vec<i8>> {
    if t.data_type != DataType::Int8 as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(t.raw_data.iter().map(|b| *b as i8).collect());
    }
    Some(t.int32_data.iter().map(|v| *v as i8).collect())
}
