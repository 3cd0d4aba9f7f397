//! Helpers of the Stable Diffusion tests: the fixtures of `tests/fixtures/sd/` (written by
//! `tests/fixtures/gen_sd.py`), their references, the hint image, error measures.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::ArrayD;
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::vae::CompiledVae;
use tessera::weights::sd::{self, DiffusersConfig};

/// The tiny fixtures' heads and groups (SD 1.5's 8 and 32 do not fit 4–8 channels).
pub const TINY: DiffusersConfig = DiffusersConfig {
    attention_heads: Some(2),
    norm_groups: Some(2),
};

pub fn sd_fixture(name: &str) -> PathBuf {
    super::common::repo_root()
        .join("tests/fixtures/sd")
        .join(name)
}

/// The tiny fixture VAE (`tiny-ldm.safetensors`) compiled in f32 into `cache`, which must
/// outlive its sessions.
pub fn tiny_ldm_vae(cache: &Path) -> CompiledVae {
    let net = sd::vae(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let options = SdOptions {
        precision: Precision::F32,
        config: Some(TINY),
        patch: None,
    };
    CompiledVae::compile(&net, cache, &options).unwrap()
}

/// A tensor of `tests/fixtures/sd/reference.safetensors`, read with the `safetensors` crate.
pub fn sd_reference(name: &str) -> ArrayD<f32> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| std::fs::read(sd_fixture("reference.safetensors")).unwrap());
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no reference `{name}`"));
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ArrayD::from_shape_vec(t.shape().to_vec(), data).unwrap()
}

/// The ControlNet hint, as `gen_sd.hint_image` defines it.
pub fn hint_image(batch: usize, h: usize, w: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![batch, 3, h, w], |i| {
        let (b, c, y, x) = (i[0], i[1], i[2], i[3]);
        let v = (x * 2 + y * 3 + c * 40 + ((x * y) % 23) * 4 + 97 * b) % 256;
        v as f32 / 255.0
    })
}

pub fn max_abs(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest magnitude of the reference, to state fp16 errors relative to it.
pub fn max_magnitude(a: &ArrayD<f32>) -> f32 {
    a.iter().map(|v| v.abs()).fold(0.0, f32::max)
}
