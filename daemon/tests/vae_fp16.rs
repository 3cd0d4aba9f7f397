//! An fp16 VAE whose activations overflow f16 gives NaN or ∞, and the job's VAE redoes every
//! such pass in fp32: the result is finite and equals the fp32 VAE's, and each redo is counted.
//!
//! The overflowing VAE is the tiny fixture with its decoder's first convolution scaled by 10⁶:
//! past 65504, f16's largest value, so the f16 graph's weights are ∞ and its output NaN, while
//! in f32 the next GroupNorm normalises the large activations away again. (SD 1.5's real
//! decoder overflows in its activations, not its weights; but ONNX Runtime's CPU kernels widen
//! f16 to f32 between ops, so on the CPU only an overflow that is stored in f16 shows.)

mod common;
mod sd_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use ndarray::Array4;
use sd_common::{TINY, sd_fixture};
use tessera::engine::{Engine, EngineOptions};
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::vae::CompiledVae;
use tessera::pipeline::clarity::checked_vae::CheckedVae;
use tessera::pipeline::clarity::model_set::SdVae;
use tessera::pipeline::clarity::network_traits::{Norms, Vae};
use tessera::pipeline::clarity::vae_passes::{self, VaePass, VaePolicy, VaeTiling};
use tessera::weights::sd;

fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut options = EngineOptions::new(std::env::temp_dir());
            options.ort_lib = Some(common::ort_lib());
            options.intra_threads = Some(1);
            Arc::new(Engine::new(options).unwrap_or_else(|e| panic!("{e}")))
        })
        .clone()
}

/// The tiny bf16 VAE fixture as f32, with `decoder.conv_in` scaled by `gain`, written to `path`.
fn overflowing_vae(path: &Path, gain: f32) {
    let bytes = std::fs::read(sd_fixture("tiny-vae-bf16.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
        let k = if name.starts_with("decoder.conv_in.") {
            gain
        } else {
            1.0
        };
        let data: Vec<u8> = view
            .data()
            .chunks_exact(2)
            .flat_map(|c| (half::bf16::from_le_bytes([c[0], c[1]]).to_f32() * k).to_le_bytes())
            .collect();
        tensors.push((name, view.shape().to_vec(), data));
    }
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

fn compile(path: &Path, cache: &Path, precision: Precision) -> CompiledVae {
    let net = sd::vae(path).unwrap();
    let options = SdOptions {
        precision,
        config: Some(TINY),
        patch: None,
    };
    CompiledVae::compile(&net, cache, &options).unwrap()
}

fn latent(h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 4, h, w), |(_, c, y, x)| {
        ((c as f32 - 1.5) * 0.7 + (x as f32 * 0.4 + y as f32 * 0.3).sin()) * 0.8
    })
}

fn max_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn an_overflowing_fp16_decode_is_redone_in_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overflowing-vae.safetensors");
    overflowing_vae(&file, 1e6);
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let engine = engine();
    let z = latent(6, 6);

    // The premise: in f32 the decode is finite, in f16 it is not.
    let mut full = SdVae::new(engine.clone(), compile(&file, &cache, Precision::F32)).unwrap();
    let want = full.decode(z.view(), Norms::Own).unwrap();
    assert!(want.iter().all(|v| v.is_finite()));
    let mut half = SdVae::new(engine.clone(), compile(&file, &cache, Precision::F16)).unwrap();
    let broken = half.decode(z.view(), Norms::Own).unwrap();
    assert!(
        broken.iter().any(|v| !v.is_finite()),
        "the scaled decoder must overflow f16"
    );

    // The job's VAE: the f16 pass overflows, the f32 redo gives the f32 result.
    let mut vae = CheckedVae::with_fp32_redo(half, engine.clone(), file.clone(), cache.clone());
    let whole =
        vae_passes::decode(&mut vae, z.view(), &VaePass::Whole, &mut |_, _| Ok(())).unwrap();
    assert_eq!(vae.redos(), 1);
    assert!(whole.iter().all(|v| v.is_finite()));
    assert_eq!(max_diff(&whole, &want), 0.0, "the redo is the fp32 decode");

    // In tiles: the statistics pass and every tile overflow, and each is redone.
    let tiling = VaeTiling {
        encoder_tile: 16,
        encoder_pad: 8,
        decoder_tile: 2,
        decoder_pad: 1,
    };
    let pass = VaePolicy::bounded(tiling).decoder(6, 6);
    assert!(matches!(pass, VaePass::Tiled(_)));
    let mut calls = 0;
    let tiled = vae_passes::decode(&mut vae, z.view(), &pass, &mut |_, total| {
        calls = total;
        Ok(())
    })
    .unwrap();
    // The whole decode's redo, then each of the tiled decode's calls but its first: the
    // post-quant convolution, in front of the scaled one, stays finite.
    assert_eq!(
        vae.redos(),
        1 + calls - 1,
        "the statistics pass and each tile once"
    );
    assert!(tiled.iter().all(|v| v.is_finite()));

    // The encoder is unharmed (only the decoder was scaled): no redo.
    let image = Array4::from_shape_fn((1, 3, 16, 16), |(_, c, y, x)| {
        ((x + 2 * y + c) as f32 * 0.1).sin()
    });
    let before = vae.redos();
    let (mean, _) = vae.encode(image.view(), Norms::Own).unwrap();
    assert!(mean.iter().all(|v| v.is_finite()));
    assert_eq!(vae.redos(), before);
}

#[test]
fn an_fp32_vae_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overflowing-vae.safetensors");
    overflowing_vae(&file, 1e6);
    let engine = engine();
    let full = SdVae::new(engine.clone(), compile(&file, dir.path(), Precision::F32)).unwrap();
    let mut vae = CheckedVae::with_fp32_redo(full, engine, file.clone(), dir.path().into());
    let out = vae.decode(latent(4, 4).view(), Norms::Own).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    assert_eq!(vae.redos(), 0);
}
