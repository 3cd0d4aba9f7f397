//! The graph builder's ops run on ONNX Runtime and compute what plain Rust loops compute,
//! including the composite helpers (GroupNorm, attention, pixel-unshuffle) that later networks
//! rely on and ESRGAN does not exercise.

mod common;

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use tessera::engine::{CompiledModel, CpuMemory};
use tessera::onnx::{Dim, ElemType, ExternalTensor, Gemm, Graph, Value};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::from(d as i64)).collect()
}

/// Runs a one-input, one-output graph on `x`.
fn run(g: Graph, folder: &Path, x: &ArrayD<f32>) -> ArrayD<f32> {
    let model = CompiledModel {
        name: "op test".into(),
        onnx: g.to_bytes(),
        weights_folder: folder.to_owned(),
        weight_files: vec![],
        cpu_memory: CpuMemory::Heap,
    };
    let session = common::engine()
        .session(&model)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut session = session.lock().unwrap();
    let input = ort::value::TensorRef::from_array_view(x.view()).unwrap();
    let out = session.run(ort::inputs!["x" => input]).unwrap();
    out["y"].try_extract_array::<f32>().unwrap().to_owned()
}

fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let err = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(err <= tol, "{what}: max |err| {err}");
}

fn input(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), values(shape.iter().product(), seed)).unwrap()
}

#[test]
fn group_norm_matches_its_definition() {
    let (n, c, h, w, groups) = (2, 6, 3, 5, 3);
    let x = input(&[n, c, h, w], 1);
    let gamma = values(c, 2);
    let beta = values(c, 3);
    let mut g = Graph::new("gn");
    let xv = g.input("x", ElemType::F32, &dims(&[n, c, h, w]));
    let gv = g.floats(&gamma);
    let bv = g.floats(&beta);
    let y = g.group_norm(&xv, groups, c, 2, &gv, &bv, 1e-5);
    g.output("y", &y, ElemType::F32, None);
    let got = run(g, &std::env::temp_dir(), &x);

    let mut expected = x.clone();
    let per = c / groups;
    for b in 0..n {
        for gi in 0..groups {
            let vals: Vec<f64> = (gi * per..(gi + 1) * per)
                .flat_map(|ch| (0..h * w).map(move |i| (ch, i)))
                .map(|(ch, i)| f64::from(x[[b, ch, i / w, i % w]]))
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for ch in gi * per..(gi + 1) * per {
                for i in 0..h * w {
                    let v = (f64::from(x[[b, ch, i / w, i % w]]) - mean) / (var + 1e-5).sqrt();
                    expected[[b, ch, i / w, i % w]] =
                        (v * f64::from(gamma[ch]) + f64::from(beta[ch])) as f32;
                }
            }
        }
    }
    close(&got, &expected, 1e-5, "group_norm");
}

#[test]
fn multi_head_attention_matches_its_definition() {
    let (b, n, heads, d) = (1, 5, 2, 4);
    let c = heads * d;
    let x = input(&[b, n, c], 4);
    let mut g = Graph::new("mha");
    let xv = g.input("x", ElemType::F32, &dims(&[b, n, c]));
    let k = g.scale(&xv, 0.5);
    let y = g.multi_head_attention(&xv, &k, &xv, heads);
    g.output("y", &y, ElemType::F32, None);
    let got = run(g, &std::env::temp_dir(), &x);

    let mut expected = ArrayD::zeros(IxDyn(&[b, n, c]));
    for h in 0..heads {
        for i in 0..n {
            let scores: Vec<f32> = (0..n)
                .map(|j| {
                    (0..d)
                        .map(|e| x[[0, i, h * d + e]] * 0.5 * x[[0, j, h * d + e]])
                        .sum::<f32>()
                        / (d as f32).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f32::MIN, f32::max);
            let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            for e in 0..d {
                expected[[0, i, h * d + e]] =
                    (0..n).map(|j| exp[j] / sum * x[[0, j, h * d + e]]).sum();
            }
        }
    }
    close(&got, &expected, 1e-5, "multi_head_attention");
}

#[test]
fn pixel_unshuffle_matches_pytorch_order() {
    let (c, h, w, r) = (3, 4, 6, 2);
    let x = input(&[1, c, h, w], 5);
    let mut g = Graph::new("pu");
    let xv = g.input("x", ElemType::F32, &dims(&[1, c, h, w]));
    let y = g.pixel_unshuffle(&xv, r, c);
    g.output("y", &y, ElemType::F32, None);
    let got = run(g, &std::env::temp_dir(), &x);
    // torch.pixel_unshuffle: out[c·r² + dy·r + dx, y, x] = in[c, y·r + dy, x·r + dx].
    let expected = ArrayD::from_shape_fn(IxDyn(&[1, c * r * r, h / r, w / r]), |i| {
        let (ch, y, xx) = (i[1], i[2], i[3]);
        let (src, dy, dx) = (ch / (r * r), (ch % (r * r)) / r, ch % r);
        x[[0, src, y * r + dy, xx * r + dx]]
    });
    close(&got, &expected, 0.0, "pixel_unshuffle");
}

#[test]
fn elementwise_and_shape_ops() {
    let x = input(&[2, 3, 4], 6);
    let mut g = Graph::new("misc");
    let xv = g.input(
        "x",
        ElemType::F32,
        &[Dim::from(2), Dim::from(3), "n".into()],
    );
    // softmax(x)·2 − x/4, reversed along the last axis, split, concatenated back.
    let sm = g.softmax(&xv, -1);
    let two = g.scalar(2.0);
    let four = g.scalar(4.0);
    let a = g.mul(&sm, &two);
    let b = g.div(&xv, &four);
    let d = g.sub(&a, &b);
    let rev = g.slice(&d, &[-1], &[i64::MIN], &[2], &[-1]);
    let parts = g.split(&rev, 2, &[1, 3]);
    let joined = g.concat(&[&parts[1], &parts[0]], 2);
    let half = g.cast(&joined, ElemType::F16);
    let back = g.cast(&half, ElemType::F32);
    let t = g.transpose(&back, &[0, 2, 1]);
    g.output("y", &t, ElemType::F32, None);
    let got = run(g, &std::env::temp_dir(), &x);

    let mut expected = ArrayD::zeros(IxDyn(&[2, 4, 3]));
    for i in 0..2 {
        for j in 0..3 {
            let row: Vec<f32> = (0..4).map(|k| x[[i, j, k]]).collect();
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            let d: Vec<f32> = row
                .iter()
                .map(|v| (v - max).exp() / sum * 2.0 - v / 4.0)
                .collect();
            let rev: Vec<f32> = d.iter().rev().copied().collect();
            let joined = [&rev[1..], &rev[..1]].concat();
            for (k, v) in joined.iter().enumerate() {
                expected[[i, k, j]] = half::f16::from_f32(*v).to_f32();
            }
        }
    }
    close(
        &got,
        &expected,
        1e-6,
        "softmax/slice/split/concat/cast/transpose",
    );
}

#[test]
fn matmul_gemm_and_unaligned_external_weights() {
    // Weights at an odd offset inside a safetensors-like file: ORT must honour offset/length.
    let dir = tempfile::tempdir().unwrap();
    let w = values(3 * 4, 7);
    let bias = values(4, 8);
    let mut file = vec![0xAAu8; 8 + 6]; // pretend header, then a 6-byte hole
    let w_offset = file.len() as u64;
    file.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    let b_offset = file.len() as u64;
    file.extend(bias.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("w.bin"), &file).unwrap();
    let ext = |name: &str, dims: Vec<i64>, offset: u64, length: u64| ExternalTensor {
        name: name.into(),
        elem_type: ElemType::F32,
        dims,
        location: "w.bin".into(),
        offset,
        length,
    };

    let x = input(&[2, 3], 9);
    let mut g = Graph::new("mm");
    let xv = g.input("x", ElemType::F32, &dims(&[2, 3]));
    let wv: Value = g.external(&ext("w", vec![3, 4], w_offset, 48));
    let bv = g.external(&ext("b", vec![4], b_offset, 16));
    let mm = g.matmul(&xv, &wv);
    let wt = g.transpose(&wv, &[1, 0]);
    let gm = g.gemm(
        &xv,
        &wt,
        Some(&bv),
        Gemm {
            trans_b: true,
            alpha: 0.5,
            ..Gemm::default()
        },
    );
    let y = g.add(&mm, &gm);
    g.output("y", &y, ElemType::F32, None);
    let got = run(g, dir.path(), &x);

    let expected = ArrayD::from_shape_fn(IxDyn(&[2, 4]), |i| {
        let dot: f32 = (0..3).map(|k| x[[i[0], k]] * w[k * 4 + i[1]]).sum();
        dot + 0.5 * dot + bias[i[1]]
    });
    close(&got, &expected, 1e-5, "matmul/gemm");
}

#[test]
fn nearest_resize_repeats_pixels() {
    let x = input(&[1, 2, 3, 2], 10);
    let mut g = Graph::new("up");
    let xv = g.input("x", ElemType::F32, &dims(&[1, 2, 3, 2]));
    let lr = g.leaky_relu(&xv, 0.2);
    let y = g.resize_nearest(&lr, 2.0);
    g.output("y", &y, ElemType::F32, None);
    let got = run(g, &std::env::temp_dir(), &x);
    let expected = ArrayD::from_shape_fn(IxDyn(&[1, 2, 6, 4]), |i| {
        let v = x[[0, i[1], i[2] / 2, i[3] / 2]];
        if v < 0.0 { v * 0.2 } else { v }
    });
    close(&got, &expected, 0.0, "resize_nearest");
}
