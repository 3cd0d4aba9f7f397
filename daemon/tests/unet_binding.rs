//! The UNet + ControlNet through I/O binding, on the CPU execution provider (the same code path
//! as on a GPU, where "device" memory is the CPU allocator): one evaluation moves only the
//! latents in and the predicted noise out (plus the timestep), never the 13 residuals, and it
//! predicts what the host round trip predicts (ControlNet residuals to host arrays, scaled
//! there, uploaded to the UNet).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ndarray::{Array2, Array4, ArrayD, Axis, s};
use tessera::engine::binding;
use tessera::engine::{Engine, EngineOptions};
use tessera::nets::controlnet::{CompiledControlNet, ControlNet};
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::unet::{CompiledUnet, Unet};
use tessera::pipeline::clarity::control::residual_scales;
use tessera::pipeline::clarity::model_set::SdUnet;
use tessera::pipeline::clarity::network_traits::{ControlledUnet, Prompts, StageConditioning};
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

fn fixture(name: &str) -> PathBuf {
    common::repo_root()
        .join("tests/fixtures/pipeline")
        .join(name)
}

/// The tiny pipeline's UNet and ControlNet, compiled into `cache`.
fn networks(cache: &std::path::Path, precision: Precision) -> (Unet, ControlNet) {
    let options = SdOptions {
        precision,
        config: None,
        patch: None,
    };
    let unet = CompiledUnet::compile(
        &sd::unet(&fixture("tiny-clarity")).unwrap(),
        cache,
        &options,
    )
    .unwrap();
    let cn = CompiledControlNet::compile(
        &sd::controlnet(&fixture("tiny-tile")).unwrap(),
        cache,
        &options,
    )
    .unwrap();
    (Unet::new(unet), ControlNet::new(&engine(), cn).unwrap())
}

struct Case {
    cond: Array2<f32>,
    uncond: Array2<f32>,
    hints: Array4<f32>,
    sample: Array4<f32>,
}

/// `b` tiles of `h`×`w` latents; contexts of 77 and `uncond_len` tokens, 16 wide.
fn case(b: usize, h: usize, w: usize, uncond_len: usize) -> Case {
    Case {
        cond: Array2::from_shape_fn((77, 16), |(i, j)| ((i * 3 + j) as f32 * 0.07).sin()),
        uncond: Array2::from_shape_fn((uncond_len, 16), |(i, j)| ((i + 5 * j) as f32 * 0.05).cos()),
        hints: Array4::from_shape_fn((b, 3, 8 * h, 8 * w), |(n, c, y, x)| {
            (((x + 2 * y) as f32 * 0.01 + c as f32 * 0.3 + n as f32).sin() * 0.5 + 0.5).min(1.0)
        }),
        sample: Array4::from_shape_fn((b, 4, h, w), |(n, c, y, x)| {
            ((c * 7 + y * 3 + x * 5 + n * 11) as f32 * 0.13).sin()
        }),
    }
}

/// The host round trip, as the pipeline ran before I/O binding: the embedding repeated for
/// the CFG pair, residuals to host arrays, scaled there, the UNet fed from host arrays.
fn host_path(
    unet: &mut Unet,
    cn: &ControlNet,
    sample: &Array4<f32>,
    context: &ArrayD<f32>,
    hints: &Array4<f32>,
    timestep: f32,
    scales: &[f32],
) -> ArrayD<f32> {
    let n = sample.len_of(Axis(0));
    let embedding = cn.embed_hint(hints.view().into_dyn()).unwrap();
    let repeats = n / embedding.shape()[0];
    let views: Vec<_> = (0..repeats).map(|_| embedding.view()).collect();
    let embedding = ndarray::concatenate(Axis(0), &views).unwrap();
    let t = ArrayD::from_elem(vec![n], timestep);
    let mut residuals = cn
        .residuals(
            sample.view().into_dyn(),
            t.view(),
            context.view(),
            embedding.view(),
        )
        .unwrap();
    for (r, &k) in residuals.iter_mut().zip(scales) {
        r.mapv_inplace(|v| v * k);
    }
    unet.forward(
        &engine(),
        sample.view().into_dyn(),
        t.view(),
        context.view(),
        Some(&residuals),
    )
    .unwrap()
}

fn contexts(parts: &[&Array2<f32>]) -> ArrayD<f32> {
    let views: Vec<_> = parts
        .iter()
        .map(|p| p.view().insert_axis(Axis(0)))
        .collect();
    ndarray::concatenate(Axis(0), &views).unwrap().into_dyn()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn residuals_stay_with_the_networks_and_only_the_latents_cross() {
    let cache = tempfile::tempdir().unwrap();
    let (unet, cn) = networks(cache.path(), Precision::F32);
    let residual_shapes = unet.compiled.config.residuals();
    let mid = unet.compiled.config.mid();
    let mut net = SdUnet::new(engine(), unet, cn);
    let (b, h, w) = (2, 16, 24);
    let c = case(b, h, w, 77);
    let scales = residual_scales(0.6, 0.825);
    net.begin_stage(&StageConditioning {
        cond: c.cond.view(),
        uncond: c.uncond.view(),
        scales,
    })
    .unwrap();
    let staged = net.traffic();
    net.embed_hints(0, c.hints.view()).unwrap();
    let hinted = net.traffic() - staged;
    assert_eq!(hinted.uploaded, 4 * c.hints.len() as u64, "the hints, once");
    assert_eq!(hinted.downloaded, 0, "the embedding stays");

    let both = ndarray::concatenate(Axis(0), &[c.sample.view(), c.sample.view()]).unwrap();
    let latent_bytes = 4 * both.len() as u64;
    let timestep_bytes = 4 * both.len_of(Axis(0)) as u64;
    // The first evaluation also uploads the stage's context for this batch shape.
    let context_bytes = 4 * (2 * b * 77 * 16) as u64;
    let mut eps = Vec::new();
    for step in 0..3 {
        let before = net.traffic();
        let global = binding::total();
        eps.push(
            net.predict(0, both.view(), 500.0 - 100.0 * step as f32, Prompts::Both)
                .unwrap(),
        );
        let step_traffic = net.traffic() - before;
        let context = if step == 0 { context_bytes } else { 0 };
        assert_eq!(step_traffic.calls, 2, "ControlNet body, then UNet");
        assert_eq!(
            step_traffic.uploaded,
            latent_bytes + timestep_bytes + context,
            "step {step}: only the latents and the timestep go up"
        );
        assert_eq!(
            step_traffic.downloaded, latent_bytes,
            "step {step}: only the predicted noise comes down"
        );
        // The process-wide counter saw at least this call (other tests run alongside).
        let seen = binding::total() - global;
        assert!(seen.uploaded >= step_traffic.uploaded && seen.calls >= 2);
    }
    // What the host round trip moves per step, for comparison: the residuals down and up again.
    let n = 2 * b;
    let residual_bytes: u64 = residual_shapes
        .iter()
        .chain([&mid])
        .map(|&(channels, divisor)| 4 * (n * channels * (h / divisor) * (w / divisor)) as u64)
        .sum();
    assert!(residual_bytes > 0);
    eprintln!(
        "per step: {} bytes bound, the host round trip would move {} more (13 residuals down and up)",
        2 * latent_bytes + timestep_bytes,
        2 * residual_bytes
    );

    // The same ε as the host round trip, within fp32 rounding.
    let cache2 = tempfile::tempdir().unwrap();
    let (mut unet, cn) = networks(cache2.path(), Precision::F32);
    let context = contexts(&[&c.cond, &c.cond, &c.uncond, &c.uncond]);
    for (step, e) in eps.iter().enumerate() {
        let want = host_path(
            &mut unet,
            &cn,
            &both,
            &context,
            &c.hints,
            500.0 - 100.0 * step as f32,
            &scales,
        );
        let d = max_diff(&e.clone().into_dyn(), &want);
        eprintln!("step {step}: bound vs host round trip, max |Δ| {d:.2e}");
        assert!(d <= 1e-6, "step {step}: {d}");
    }
    net.end_stage();
    assert!(
        net.predict(0, both.view(), 1.0, Prompts::Both).is_err(),
        "no stage, no call"
    );
}

#[test]
fn cond_and_uncond_apart_give_the_host_round_trip_results_in_fp16_too() {
    for precision in [Precision::F32, Precision::F16] {
        let cache = tempfile::tempdir().unwrap();
        let (unet, cn) = networks(cache.path(), precision);
        let mut net = SdUnet::new(engine(), unet, cn);
        let c = case(3, 8, 16, 154);
        let scales = residual_scales(0.9, 0.825);
        net.begin_stage(&StageConditioning {
            cond: c.cond.view(),
            uncond: c.uncond.view(),
            scales,
        })
        .unwrap();
        // Two batches: tiles 0..2 and 2..3.
        net.embed_hints(0, c.hints.slice(s![..2, .., .., ..]))
            .unwrap();
        net.embed_hints(1, c.hints.slice(s![2.., .., .., ..]))
            .unwrap();
        let (mut unet, cn) = networks(cache.path(), precision);
        for (batch, range) in [(0, 0..2), (1, 2..3)] {
            let sample = c.sample.slice(s![range.clone(), .., .., ..]).to_owned();
            let hints = c.hints.slice(s![range.clone(), .., .., ..]).to_owned();
            for (prompts, text) in [(Prompts::Cond, &c.cond), (Prompts::Uncond, &c.uncond)] {
                let got = net.predict(batch, sample.view(), 321.5, prompts).unwrap();
                let parts: Vec<&Array2<f32>> = (0..sample.len_of(Axis(0))).map(|_| text).collect();
                let want = host_path(
                    &mut unet,
                    &cn,
                    &sample,
                    &contexts(&parts),
                    &hints,
                    321.5,
                    &scales,
                );
                let d = max_diff(&got.into_dyn(), &want);
                eprintln!("{precision:?} batch {batch} {prompts:?}: max |Δ| {d:.2e}");
                // fp16: the two paths cast the same f32 values at the same places, so they
                // agree as closely as fp32 does.
                assert!(d <= 1e-5, "{precision:?} batch {batch} {prompts:?}: {d}");
            }
        }
        net.end_stage();
    }
}

#[test]
fn a_resident_keeps_its_values_where_the_session_wants_them() {
    let cache = tempfile::tempdir().unwrap();
    let (_, cn) = networks(cache.path(), Precision::F32);
    let c = case(2, 8, 8, 77);
    let (resident, traffic) = cn.upload("sample", c.sample.view().into_dyn()).unwrap();
    assert_eq!(resident.shape(), c.sample.shape());
    assert_eq!(resident.bytes(), 4 * c.sample.len() as u64);
    assert_eq!(traffic.uploaded, resident.bytes());
    assert_eq!((traffic.calls, traffic.downloaded), (0, 0));
    // On the CPU execution provider "device" memory is the CPU allocator's.
    assert_eq!(resident.device(), "Cpu");
    let back = binding::download(&resident, "test").unwrap();
    assert_eq!(back, c.sample.into_dyn());
    assert!(cn.upload("no_such_input", back.view()).is_err());
}
