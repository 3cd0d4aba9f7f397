//! Unit tests of the graph builder: what it writes, checked by decoding the bytes again.
//! (That ONNX Runtime computes the right thing from these graphs is checked in
//! `daemon/tests/onnx_ops.rs` and by the network parity tests.)

use super::proto::{TensorProto, dimension, type_proto};
use super::*;

fn ext(name: &str, dims: &[i64], offset: u64) -> ExternalTensor {
    ExternalTensor {
        name: name.to_owned(),
        elem_type: ElemType::F32,
        dims: dims.to_vec(),
        location: "weights.safetensors".to_owned(),
        offset,
        length: 4 * dims.iter().product::<i64>() as u64,
    }
}

fn roundtrip(g: Graph) -> proto::ModelProto {
    decode(&g.to_bytes()).expect("the builder's output decodes")
}

fn initializer<'a>(m: &'a proto::ModelProto, name: &str) -> &'a TensorProto {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap()
}

#[test]
fn model_header_and_interface() {
    let mut g = Graph::new("net");
    let x = g.input(
        "input",
        ElemType::F32,
        &[Dim::from(1), Dim::from(3), "height".into(), "width".into()],
    );
    let y = g.sigmoid(&x);
    g.output(
        "output",
        &y,
        ElemType::F32,
        Some(&[Dim::from(1), Dim::from(3)]),
    );
    let m = roundtrip(g);
    assert_eq!(m.ir_version, 10);
    assert_eq!(m.opset_import.len(), 1, "no contrib domain unless used");
    assert_eq!(
        (m.opset_import[0].domain.as_str(), m.opset_import[0].version),
        ("", 21)
    );
    let graph = m.graph.unwrap();
    assert_eq!(graph.name, "net");
    assert_eq!(graph.input[0].name, "input");
    let Some(type_proto::Value::TensorType(t)) = &graph.input[0].r#type.as_ref().unwrap().value
    else {
        panic!("tensor type expected")
    };
    assert_eq!(t.elem_type, 1);
    let dims = &t.shape.as_ref().unwrap().dim;
    assert_eq!(dims[1].value, Some(dimension::Value::DimValue(3)));
    assert_eq!(
        dims[2].value,
        Some(dimension::Value::DimParam("height".into()))
    );
    assert_eq!(graph.output[0].name, "output");
    // Sigmoid, then the Identity that gives the output its name.
    let ops: Vec<_> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Sigmoid", "Identity"]);
    assert_eq!(graph.node[1].input[0], graph.node[0].output[0]);
    assert_eq!(graph.node[1].output[0], "output");
}

#[test]
fn external_initializers_point_into_the_weights_file() {
    let mut g = Graph::new("net");
    let x = g.input(
        "input",
        ElemType::F32,
        &[Dim::from(1), Dim::from(2), Dim::from(4), Dim::from(4)],
    );
    let w = ext("conv.weight", &[2, 2, 3, 3], 8 + 120);
    let b = ext("conv.bias", &[2], 8 + 120 + 144);
    let wv = g.external(&w);
    let again = g.external(&w);
    assert_eq!(wv, again, "the same weight is one initializer");
    let bv = g.external(&b);
    let y = g.conv(&x, &wv, Some(&bv), Conv2d::padded(1));
    g.output("output", &y, ElemType::F32, None);
    let m = roundtrip(g);
    assert_eq!(m.graph.as_ref().unwrap().initializer.len(), 2);
    let t = initializer(&m, "conv.weight");
    assert_eq!(t.data_location, proto::DATA_LOCATION_EXTERNAL);
    assert!(t.raw_data.is_empty());
    assert_eq!(t.dims, [2, 2, 3, 3]);
    let entries: Vec<(&str, &str)> = t
        .external_data
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        entries,
        [
            ("location", "weights.safetensors"),
            ("offset", "128"),
            ("length", "144")
        ]
    );
    let conv = &m.graph.as_ref().unwrap().node[0];
    assert_eq!(conv.input, ["input", "conv.weight", "conv.bias"]);
    let pads = conv.attribute.iter().find(|a| a.name == "pads").unwrap();
    assert_eq!(pads.ints, [1, 1, 1, 1]);
    assert_eq!(pads.r#type, proto::attribute_type::INTS);
}

#[test]
fn embedded_constants_are_little_endian_raw_data() {
    let mut g = Graph::new("c");
    let f = g.constant_f32(&[2], &[1.5, -2.0]);
    let i = g.ints(&[7, -1]);
    let s = g.scalar(0.0);
    let m = roundtrip(g);
    let tf = initializer(&m, f.name());
    assert_eq!(tf.data_type, 1);
    assert_eq!(
        tf.raw_data,
        [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
    );
    let ti = initializer(&m, i.name());
    assert_eq!(ti.data_type, 7);
    assert_eq!(
        ti.raw_data,
        [7i64.to_le_bytes(), (-1i64).to_le_bytes()].concat()
    );
    assert!(
        initializer(&m, s.name()).dims.is_empty(),
        "a scalar has rank 0"
    );
}

#[test]
fn zero_valued_attributes_are_still_written() {
    let mut g = Graph::new("a");
    let x = g.input("x", ElemType::F32, &[Dim::from(4)]);
    let y = g.softmax(&x, 0);
    let z = g.leaky_relu(&y, 0.0);
    g.output("z", &z, ElemType::F32, None);
    let bytes = g.to_bytes();
    let m = decode(&bytes).unwrap();
    let nodes = &m.graph.unwrap().node;
    assert_eq!(nodes[0].attribute[0].i, Some(0));
    assert_eq!(nodes[1].attribute[0].f, Some(0.0));
}

#[test]
fn group_norm_is_instance_norm_between_reshapes() {
    let mut g = Graph::new("gn");
    let x = g.input(
        "x",
        ElemType::F32,
        &[Dim::from(1), Dim::from(8), "h".into(), "w".into()],
    );
    let gamma = g.external(&ext("norm.weight", &[8], 8));
    let beta = g.external(&ext("norm.bias", &[8], 40));
    let y = g.group_norm(&x, 4, 8, 2, &gamma, &beta, 1e-5);
    g.output("y", &y, ElemType::F32, None);
    let m = roundtrip(g);
    let graph = m.graph.as_ref().unwrap();
    let ops: Vec<_> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Shape",
            "Reshape",
            "InstanceNormalization",
            "Reshape",
            "Reshape",
            "Reshape",
            "Mul",
            "Add",
            "Identity"
        ]
    );
    let inorm = &graph.node[2];
    assert_eq!(
        initializer(&m, &inorm.input[1]).raw_data,
        [1.0f32.to_le_bytes(); 4].concat()
    );
    assert_eq!(
        initializer(&m, &inorm.input[2]).raw_data,
        [0.0f32.to_le_bytes(); 4].concat()
    );
    assert!(!ops.contains(&"GroupNormalization"));
}

#[test]
fn attention_uses_the_contrib_domain() {
    let mut g = Graph::new("mha");
    let q = g.input(
        "q",
        ElemType::F32,
        &[Dim::from(1), "n".into(), Dim::from(8)],
    );
    let y = g.multi_head_attention(&q, &q, &q, 2);
    g.output("y", &y, ElemType::F32, None);
    let m = roundtrip(g);
    assert!(
        m.opset_import
            .iter()
            .any(|o| o.domain == MS_DOMAIN && o.version == 1)
    );
    let node = &m.graph.unwrap().node[0];
    assert_eq!(
        (node.domain.as_str(), node.op_type.as_str()),
        (MS_DOMAIN, "MultiHeadAttention")
    );
    assert_eq!(node.attribute[0].i, Some(2));
}

#[test]
fn multi_output_and_optional_inputs() {
    let mut g = Graph::new("m");
    let x = g.input(
        "x",
        ElemType::F32,
        &[Dim::from(1), Dim::from(6), Dim::from(2), Dim::from(2)],
    );
    let parts = g.split(&x, 1, &[2, 4]);
    assert_eq!(parts.len(), 2);
    assert_ne!(parts[0], parts[1]);
    let up = g.resize_nearest(&parts[0], 2.0);
    g.output("a", &up, ElemType::F32, None);
    g.output("b", &parts[1], ElemType::F32, None);
    let m = roundtrip(g);
    let nodes = &m.graph.unwrap().node;
    assert_eq!(nodes[0].output.len(), 2);
    assert_eq!(nodes[1].op_type, "Resize");
    assert_eq!(nodes[1].input[1], "", "roi is omitted");
    let mode = nodes[1]
        .attribute
        .iter()
        .find(|a| a.name == "mode")
        .unwrap();
    assert_eq!(mode.s.as_deref(), Some(&b"nearest"[..]));
}

#[test]
fn pixel_unshuffle_reorders_to_pytorch_channel_order() {
    let mut g = Graph::new("pu");
    let x = g.input(
        "x",
        ElemType::F32,
        &[Dim::from(1), Dim::from(3), Dim::from(4), Dim::from(4)],
    );
    let y = g.pixel_unshuffle(&x, 2, 3);
    g.output("y", &y, ElemType::F32, None);
    let m = roundtrip(g);
    let graph = m.graph.as_ref().unwrap();
    assert_eq!(graph.node[0].op_type, "SpaceToDepth");
    let gather = &graph.node[1];
    let idx = initializer(&m, &gather.input[1]);
    let idx: Vec<i64> = idx
        .raw_data
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // PyTorch channel c·4 + block takes SpaceToDepth channel block·3 + c.
    assert_eq!(idx, [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
}

#[test]
#[should_panic(expected = "used twice")]
fn duplicate_names_are_a_bug() {
    let mut g = Graph::new("d");
    g.input("x", ElemType::F32, &[]);
    g.input("x", ElemType::F32, &[]);
}

#[test]
fn ops_emit_their_onnx_names() {
    let mut g = Graph::new("ops");
    let a = g.input("a", ElemType::F32, &[Dim::from(2), Dim::from(2)]);
    let b = g.input("b", ElemType::F32, &[Dim::from(2), Dim::from(2)]);
    let v = [
        g.add(&a, &b),
        g.sub(&a, &b),
        g.mul(&a, &b),
        g.div(&a, &b),
        g.matmul(&a, &b),
        g.gemm(
            &a,
            &b,
            None,
            Gemm {
                trans_b: true,
                ..Gemm::default()
            },
        ),
        g.transpose(&a, &[1, 0]),
        g.reshape(&a, &[4]),
        g.cast(&a, ElemType::F16),
        g.slice(&a, &[0], &[1], &[0], &[1]),
        g.concat(&[&a, &b], 0),
        g.gather(&a, 1, &[1, 0]),
    ];
    let names: Vec<String> = v.iter().map(|x| x.name().to_owned()).collect();
    let m = roundtrip(g);
    let ops: Vec<_> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect();
    assert_eq!(
        ops,
        [
            "Add",
            "Sub",
            "Mul",
            "Div",
            "MatMul",
            "Gemm",
            "Transpose",
            "Reshape",
            "Cast",
            "Slice",
            "Concat",
            "Gather"
        ]
    );
    let cast = &m.graph.as_ref().unwrap().node[8];
    assert_eq!(cast.attribute[0].i, Some(10));
    assert_eq!(names.len(), 12);
}
