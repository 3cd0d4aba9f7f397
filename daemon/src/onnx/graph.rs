//! The graph builder's core: values, graph inputs and outputs, constants, external weights,
//! generic nodes, and serialisation to an ONNX model. The operator vocabulary lives in `ops.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;

use super::proto::{
    self, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor,
    ValueInfoProto, attribute_type, dimension, type_proto,
};

/// IR version written into every model: IR 10 is the one released with opset 21 (the table
/// in the ONNX repository's `docs/Versioning.md`).
pub const IR_VERSION: i64 = 10;
/// Version of the default `ai.onnx` operator set.
pub const OPSET: i64 = 21;
/// The Microsoft contrib domain (MultiHeadAttention and friends).
pub const MS_DOMAIN: &str = "com.microsoft";
/// Version of the contrib operator set.
pub const MS_OPSET: i64 = 1;

/// A tensor-valued name in the graph: a graph input, a constant, a weight or a node output.
///
/// Cloning is a reference-count increment, so ops take and return values freely.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(Arc<str>);

impl Value {
    /// The name of this value inside the ONNX graph.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The empty name ONNX uses for an omitted optional input (e.g. Resize's `roi`).
    pub fn absent() -> Value {
        Value(Arc::from(""))
    }

    fn new(name: &str) -> Value {
        Value(Arc::from(name))
    }
}

/// ONNX `TensorProto.DataType` codes for the element types we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ElemType {
    F32 = 1,
    U8 = 2,
    I8 = 3,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    BF16 = 16,
}

impl ElemType {
    /// The protobuf code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// One dimension of a graph input or output: fixed, or symbolic (same name = same size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Dim {
        Dim::Named(v.to_owned())
    }
}

/// A weight stored outside the model, in a file next to it (ONNX "external data").
///
/// `location` is relative to the folder the session is told about; ONNX Runtime rejects
/// absolute paths and paths that leave that folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalTensor {
    /// Initializer name in the graph (we use the canonical weight name).
    pub name: String,
    pub elem_type: ElemType,
    pub dims: Vec<i64>,
    /// File name relative to the weights folder.
    pub location: String,
    /// Byte offset of the first element in that file.
    pub offset: u64,
    /// Byte length of the data.
    pub length: u64,
}

impl ExternalTensor {
    /// Size of dimension `i` (0 when out of range), as `usize` for shape arithmetic.
    pub fn dim(&self, i: usize) -> usize {
        self.dims
            .get(i)
            .map_or(0, |&d| usize::try_from(d).unwrap_or(0))
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
}

/// Builds one ONNX graph. Nodes are appended in call order, which is a valid topological order
/// because every op consumes values that already exist.
#[derive(Debug)]
pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
    counter: usize,
    uses_ms_domain: bool,
}

impl Graph {
    /// An empty graph; `name` shows up in tools such as Netron.
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_owned(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            names: HashSet::new(),
            counter: 0,
            uses_ms_domain: false,
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem_type: ElemType, dims: &[Dim]) -> Value {
        self.claim(name);
        self.inputs.push(value_info(name, elem_type, Some(dims)));
        Value::new(name)
    }

    /// Declares `value` as a graph output called `name` (an Identity node renames it when
    /// needed; ONNX Runtime removes it when optimising). `dims` may be left out.
    pub fn output(&mut self, name: &str, value: &Value, elem_type: ElemType, dims: Option<&[Dim]>) {
        if value.name() != name {
            self.claim(name);
            self.nodes.push(NodeProto {
                input: vec![value.name().to_owned()],
                output: vec![name.to_owned()],
                name: format!("{name}_identity"),
                op_type: "Identity".to_owned(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem_type, dims));
    }

    /// An f32 constant embedded in the model (for small tensors: scales, masks, shapes).
    pub fn constant_f32(&mut self, dims: &[i64], data: &[f32]) -> Value {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.embedded(ElemType::F32, dims, raw)
    }

    /// A float constant embedded in the model as `elem_type` (F32 or F16), for graphs that
    /// compute in either type.
    pub fn constant(&mut self, elem_type: ElemType, dims: &[i64], data: &[f32]) -> Value {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        match elem_type {
            ElemType::F16 => {
                let raw = data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect();
                self.embedded(ElemType::F16, dims, raw)
            }
            ElemType::F32 => self.constant_f32(dims, data),
            other => panic!("float constants are F32 or F16, not {other:?}"),
        }
    }

    /// An i64 constant embedded in the model (shapes, axes, indices).
    pub fn constant_i64(&mut self, dims: &[i64], data: &[i64]) -> Value {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.embedded(ElemType::I64, dims, raw)
    }

    /// A 1-D i64 constant.
    pub fn ints(&mut self, data: &[i64]) -> Value {
        self.constant_i64(&[data.len() as i64], data)
    }

    /// A 1-D f32 constant.
    pub fn floats(&mut self, data: &[f32]) -> Value {
        self.constant_f32(&[data.len() as i64], data)
    }

    /// A rank-0 f32 constant.
    pub fn scalar(&mut self, v: f32) -> Value {
        self.constant_f32(&[], &[v])
    }

    /// An initializer whose data stays in an external file (a weight). Asking twice for the same
    /// name returns the same value, so a shared weight is stored once.
    pub fn external(&mut self, t: &ExternalTensor) -> Value {
        if self.initializers.iter().any(|i| i.name == t.name) {
            return Value::new(&t.name);
        }
        self.claim(&t.name);
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.to_owned(),
            value,
        };
        self.initializers.push(TensorProto {
            dims: t.dims.clone(),
            data_type: t.elem_type.code(),
            name: t.name.clone(),
            external_data: vec![
                entry("location", t.location.clone()),
                entry("offset", t.offset.to_string()),
                entry("length", t.length.to_string()),
            ],
            data_location: proto::DATA_LOCATION_EXTERNAL,
            ..Default::default()
        });
        Value::new(&t.name)
    }

    /// Appends a node of the default domain with one output.
    pub fn node(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attributes: Vec<AttributeProto>,
    ) -> Value {
        self.node_in("", op_type, inputs, attributes, 1).remove(0)
    }

    /// Appends a node of any domain with `outputs` outputs.
    pub fn node_in(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&Value],
        attributes: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<Value> {
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        self.counter += 1;
        let node_name = format!("{op_type}_{}", self.counter);
        let outs: Vec<Value> = (0..outputs)
            .map(|i| {
                let name = if outputs == 1 {
                    node_name.clone()
                } else {
                    format!("{node_name}_{i}")
                };
                self.claim(&name);
                Value::new(&name)
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.name().to_owned()).collect(),
            output: outs.iter().map(|v| v.name().to_owned()).collect(),
            name: node_name,
            op_type: op_type.to_owned(),
            attribute: attributes,
            domain: domain.to_owned(),
            ..Default::default()
        });
        outs
    }

    /// Number of nodes so far (for tests and logging).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The finished model.
    pub fn into_model(self) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: MS_DOMAIN.to_owned(),
                version: MS_OPSET,
            });
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "tessera".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            opset_import,
            ..Default::default()
        }
    }

    /// The finished model as `.onnx` bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        self.into_model().encode_to_vec()
    }

    fn embedded(&mut self, elem_type: ElemType, dims: &[i64], raw_data: Vec<u8>) -> Value {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.claim(&name);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: elem_type.code(),
            name: name.clone(),
            raw_data,
            ..Default::default()
        });
        Value::new(&name)
    }

    /// Names must be unique across the graph; a clash is a bug in the network code.
    fn claim(&mut self, name: &str) {
        assert!(
            self.names.insert(name.to_owned()),
            "ONNX graph: the name `{name}` is used twice"
        );
    }
}

/// Decodes `.onnx` bytes (for tests and inspection).
pub fn decode(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

fn value_info(name: &str, elem_type: ElemType, dims: Option<&[Dim]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => dimension::Value::DimValue(*v),
                    Dim::Named(s) => dimension::Value::DimParam(s.clone()),
                }),
                denotation: String::new(),
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TypeProtoTensor {
                elem_type: elem_type.code(),
                shape,
            })),
        }),
        doc_string: String::new(),
    }
}

/// Attribute constructors.
pub mod attr {
    use super::{AttributeProto, ElemType, attribute_type};

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            i: Some(v),
            r#type: attribute_type::INT,
            ..Default::default()
        }
    }

    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            ints: v.to_vec(),
            r#type: attribute_type::INTS,
            ..Default::default()
        }
    }

    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            f: Some(v),
            r#type: attribute_type::FLOAT,
            ..Default::default()
        }
    }

    pub fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            floats: v.to_vec(),
            r#type: attribute_type::FLOATS,
            ..Default::default()
        }
    }

    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            s: Some(v.as_bytes().to_vec()),
            r#type: attribute_type::STRING,
            ..Default::default()
        }
    }

    /// An element-type attribute such as Cast's `to`.
    pub fn elem_type(name: &str, t: ElemType) -> AttributeProto {
        int(name, i64::from(t.code()))
    }
}
