//! The probe that decides whether an execution provider is kept: a small graph with the three
//! kinds of work the networks do (a convolution, matrix products, multi-head attention), built
//! with the project's own graph builder, run on the provider and on the CPU. The provider is
//! kept only if its session builds, runs, and gives the CPU's numbers within [`TOLERANCE`].
//! A provider that registers but cannot run (a missing cuDNN, an unsupported GPU, a broken
//! driver) is thus dropped at start instead of failing every job.

use std::time::Instant;

use ndarray::Array4;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::faults::ProbeFault;
use super::runtime::{Runtime, one_line};
use super::{ExecutionProvider, providers};
use crate::onnx::{Conv2d, Dim, ElemType, Graph};

/// Largest error allowed, relative to the largest value of the CPU's output: the accelerators
/// may compute in TF32 (10-bit mantissa, ~5e-4) or reorder sums; a broken kernel is off by far
/// more.
pub const TOLERANCE: f32 = 1e-2;

const CHANNELS: usize = 4;
const FEATURES: usize = 8;
const SIDE: usize = 8;
const HEADS: usize = 2;

/// What a probe that passed measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeReport {
    /// Session build and first run, in milliseconds.
    pub millis: f64,
    /// Largest difference to the CPU's output, relative to its largest value.
    pub error: f32,
}

/// A deterministic value in −1..1 for weight or input element `i` of tensor `seed`.
fn value(seed: usize, i: usize) -> f32 {
    ((i as f32 * 0.618_034 + seed as f32 * 0.414_214).fract() * 2.0 - 1.0) * 0.5
}

fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| value(seed, i)).collect()
}

/// The probe graph: `x` `[1, 4, 8, 8]` → 3×3 convolution to 8 channels → 64 tokens of 8 →
/// query, key and value projections (MatMul) → two-head attention → `y` `[1, 64, 8]`.
pub fn graph() -> Vec<u8> {
    let mut g = Graph::new("tessera_probe");
    let x = g.input(
        "x",
        ElemType::F32,
        &[
            Dim::from(1),
            Dim::from(CHANNELS as i64),
            Dim::from(SIDE as i64),
            Dim::from(SIDE as i64),
        ],
    );
    let f = FEATURES as i64;
    let w = g.constant_f32(
        &[f, CHANNELS as i64, 3, 3],
        &values(1, FEATURES * CHANNELS * 9),
    );
    let b = g.constant_f32(&[f], &values(2, FEATURES));
    let features = g.conv(&x, &w, Some(&b), Conv2d::padded(1));
    let flat = g.reshape(&features, &[1, f, (SIDE * SIDE) as i64]);
    let tokens = g.transpose(&flat, &[0, 2, 1]);
    let mut project = |seed| {
        let m = g.constant_f32(&[f, f], &values(seed, FEATURES * FEATURES));
        g.matmul(&tokens, &m)
    };
    let (q, k, v) = (project(3), project(4), project(5));
    let y = g.multi_head_attention(&q, &k, &v, HEADS);
    g.output(
        "y",
        &y,
        ElemType::F32,
        Some(&[Dim::from(1), Dim::from((SIDE * SIDE) as i64), Dim::from(f)]),
    );
    g.to_bytes()
}

/// The probe's input.
fn input() -> Array4<f32> {
    Array4::from_shape_vec((1, CHANNELS, SIDE, SIDE), values(0, CHANNELS * SIDE * SIDE))
        .expect("the shape matches the count")
}

/// Builds the probe on `ep` (alone; ONNX Runtime still places what it lacks on the CPU) and
/// returns its output.
fn run_on(runtime: &Runtime, ep: ExecutionProvider, onnx: &[u8]) -> Result<Vec<f32>, String> {
    let text = |e: &dyn std::fmt::Display| one_line(&e.to_string());
    let mut builder = Session::builder(&runtime.env)
        .map_err(|e| text(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| text(&e))?
        .with_intra_threads(1)
        .map_err(|e| text(&e))?;
    providers::register(&mut builder, ep, &providers::EpSettings::probe())?;
    let mut session = builder
        .commit_from_memory(onnx)
        .map_err(|e| format!("its session cannot be built: {}", text(&e)))?;
    let x = input();
    let tensor = ort::value::TensorRef::from_array_view(x.view()).map_err(|e| text(&e))?;
    let outputs = session
        .run(ort::inputs!["x" => tensor])
        .map_err(|e| format!("it cannot run: {}", text(&e)))?;
    let y = outputs["y"]
        .try_extract_array::<f32>()
        .map_err(|e| text(&e))?;
    Ok(y.iter().copied().collect())
}

/// Probes `ep` against the CPU: `Ok` with what it measured, or why it is not to be used.
/// `fault` breaks it on purpose (see `faults.rs`).
pub fn probe(
    runtime: &Runtime,
    ep: ExecutionProvider,
    fault: Option<ProbeFault>,
) -> Result<ProbeReport, String> {
    let onnx = graph();
    let started = Instant::now();
    if fault == Some(ProbeFault::Error) {
        return Err("its probe failed: injected fault (TESSERA_FAULTS=probe)".into());
    }
    let mut got = run_on(runtime, ep, &onnx)?;
    let millis = started.elapsed().as_secs_f64() * 1e3;
    if fault == Some(ProbeFault::WrongNumbers) {
        got.iter_mut().for_each(|v| *v += 0.5);
    }
    let want = run_on(runtime, ExecutionProvider::Cpu, &onnx)
        .map_err(|e| format!("the CPU reference of the probe failed: {e}"))?;
    let error = relative_error(&got, &want);
    if error.is_finite() && error <= TOLERANCE {
        Ok(ProbeReport { millis, error })
    } else {
        Err(format!(
            "its probe gave wrong numbers (error {error:.3} relative to the CPU, allowed {TOLERANCE})"
        ))
    }
}

/// Diagnosis, registration and probe of `ep`: what the probe measured, or why `ep` is not used.
pub(super) fn check(
    runtime: &Runtime,
    ep: ExecutionProvider,
    faults: &super::faults::FaultState,
) -> Result<ProbeReport, String> {
    if !ep.is_accelerator() {
        return Ok(ProbeReport {
            millis: 0.0,
            error: 0.0,
        });
    }
    providers::diagnose(runtime, ep)?;
    providers::registers(runtime, ep)?;
    probe(runtime, ep, faults.faults.probe)
}

/// max |got − want| / max |want| (infinite when the lengths differ or a value is not finite).
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_graph_holds_a_convolution_matrix_products_and_attention() {
        let model = crate::onnx::decode(&graph()).unwrap();
        let ops: Vec<String> = model
            .graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone())
            .collect();
        for op in ["Conv", "MatMul", "MultiHeadAttention"] {
            assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
        }
    }

    #[test]
    fn the_error_is_relative_to_the_reference_and_catches_nan() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-6);
        assert!(relative_error(&[f32::NAN, 2.0], &[1.0, 2.0]).is_infinite());
        assert!(relative_error(&[1.0], &[1.0, 2.0]).is_infinite());
    }
}
