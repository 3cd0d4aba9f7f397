//! Shared helpers of the model-side integration tests: where the fixtures and the ONNX Runtime
//! library are, one engine per test process, and the reference outputs.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::Array3;
use tessera::engine::{Engine, EngineOptions};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/esrgan").join(name)
}

/// The ONNX Runtime library: `TESSERA_ORT_LIB`, else `<repo>/.cache/onnxruntime/`. Missing is
/// a failure, not a skip: these tests are the proof that the networks run.
pub fn ort_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_ORT_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let dir = repo_root().join(".cache/onnxruntime");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("libonnxruntime.so")
                || (name.starts_with("libonnxruntime") && name.ends_with(".dylib"))
                || name.eq_ignore_ascii_case("onnxruntime.dll")
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "ONNX Runtime library not found: set TESSERA_ORT_LIB to it, or run scripts/test (which installs it), \
             or put it in {}",
            dir.display()
        )
    })
}

/// One engine per test process (ONNX Runtime allows one environment per process).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(std::env::temp_dir());
        options.ort_lib = Some(ort_lib());
        options.intra_threads = Some(2);
        Engine::new(options).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A tensor of `tests/fixtures/esrgan/reference.safetensors`, read with the `safetensors`
/// crate (not our own reader, so a bug there cannot hide a bug here).
pub fn reference(name: &str) -> ndarray::ArrayD<f32> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| std::fs::read(fixture("reference.safetensors")).unwrap());
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no reference `{name}`"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ndarray::ArrayD::from_shape_vec(t.shape().to_vec(), data).unwrap()
}

pub fn reference3(name: &str) -> Array3<f32> {
    reference(name).into_dimensionality().unwrap()
}

/// The large test image, defined by integers exactly as in `tests/fixtures/generate.py`.
pub fn procedural_image(h: usize, w: usize) -> Array3<f32> {
    Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        let v = (x * 2 + y * 3 + c * 40 + ((x * y) % 23) * 4) % 256;
        v as f32 / 255.0
    })
}

pub fn max_abs_diff<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
