//! The tiled VAE's graphs with exported or frozen GroupNorm statistics hold ONNX Runtime
//! sessions only while a tiled pass runs: a large image's next phases get that memory back.
//! A tiled pass also sets aside its side's plain graph, which it does not use, until the VAE
//! is warmed again.

mod common;
mod sd_common;

use std::sync::{Arc, OnceLock};

use ndarray::Array4;
use tessera::Cancelled;
use tessera::engine::{Engine, EngineOptions};
use tessera::pipeline::clarity::model_set::SdVae;
use tessera::pipeline::clarity::network_traits::StageError;
use tessera::pipeline::clarity::vae_passes::{
    self, Grid, TiledPass, VaePass, VaePolicy, VaeTiling,
};

/// This binary's one engine (one ONNX Runtime environment per process), shared as the
/// pipeline shares it.
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

/// The tests look at every session the shared engine holds, so they take turns: one test's
/// warm VAE would otherwise show up in the other's checks.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the plain (own statistics) graph of the `side` ("encoder", "decoder") is held.
fn plain_held(engine: &Engine, side: &str) -> bool {
    engine.held_sessions().iter().any(|name| {
        name.starts_with(&format!("VAE {side}"))
            && !name.contains("statistics")
            && !name.contains("post_quant_conv")
    })
}

fn statistics_sessions(engine: &Engine) -> Vec<String> {
    engine
        .held_sessions()
        .into_iter()
        .filter(|name| name.contains("GroupNorm statistics") && !name.contains(" segment "))
        .collect()
}

/// 48 × 48 pixels in tiles computing at most 16 + 2·8, 6 × 6 latents at most 2 + 2·1: four
/// tiles each way.
const TILING: VaeTiling = VaeTiling {
    encoder_tile: 16,
    encoder_pad: 8,
    decoder_tile: 2,
    decoder_pad: 1,
};

/// The tiny fixture VAE compiled in f32 into a cache of its own (kept alive by the caller), on a
/// fresh engine.
fn tiny_vae() -> (Arc<Engine>, SdVae, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let compiled = sd_common::tiny_ldm_vae(cache.path());
    let engine = engine();
    let net = SdVae::new(engine.clone(), compiled).unwrap();
    (engine, net, cache)
}

/// A smooth `side`² image in −1..1.
fn smooth_image(side: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, side, side), |(_, c, y, x)| {
        ((x as f32 * 0.3 + y as f32 * 0.2 + c as f32).sin() * 0.8).clamp(-1.0, 1.0)
    })
}

#[test]
fn statistics_sessions_live_only_while_a_tiled_pass_runs() {
    let _turn = one_at_a_time();
    let (engine, mut net, _cache) = tiny_vae();
    let image = smooth_image(48);

    assert!(net.is_warm() && plain_held(&engine, "encoder") && plain_held(&engine, "decoder"));
    for decoder in [false, true] {
        let side = if decoder { "decoder" } else { "encoder" };
        let other = if decoder { "encoder" } else { "decoder" };
        let mut seen = Vec::new();
        let mut on_call = |done: usize, total: usize| {
            assert!(!plain_held(&engine, side), "{side}: set aside while tiling");
            assert!(plain_held(&engine, other), "{other}: untouched");
            seen.push((done, total, statistics_sessions(&engine)));
            Ok(())
        };
        if decoder {
            let latent = Array4::from_shape_fn((1, 4, 6, 6), |(_, c, y, x)| {
                (c as f32 - 1.5) * 0.5 + (x + y) as f32 * 0.1
            });
            let pass = VaePolicy::bounded(TILING).decoder(6, 6);
            vae_passes::decode(&mut net, latent.view(), &pass, &mut on_call).unwrap();
        } else {
            let pass = VaePolicy::bounded(TILING).encoder(48, 48);
            vae_passes::encode(&mut net, image.view(), &pass, &mut on_call).unwrap();
        }
        // The decoder's statistics proxy is taken behind post_quant_conv: one call more.
        let first_tile = usize::from(decoder) + 1;
        assert_eq!(
            seen.len(),
            first_tile + 4,
            "{side}: the statistics pass and four tiles"
        );
        // The statistics graph's session ends with its one call.
        for (_, _, held) in &seen[..first_tile] {
            assert_eq!(held, &Vec::<String>::new(), "{side}: {seen:?}");
        }
        for (_, _, held) in &seen[first_tile..] {
            assert_eq!(held.len(), 1, "{side}: {held:?}");
            assert!(
                held[0].contains("(Frozen GroupNorm statistics)"),
                "{held:?}"
            );
        }
        assert_eq!(statistics_sessions(&engine), Vec::<String>::new(), "{side}");
        assert!(
            !net.is_warm() && !plain_held(&engine, side),
            "{side}: until warmed"
        );
        net.warm().unwrap();
        assert!(plain_held(&engine, side), "{side}: warm again");
    }

    // A whole image still runs on the plain graphs, created again if they were set aside.
    let tiled = VaePolicy::bounded(TILING).encoder(48, 48);
    vae_passes::encode(&mut net, image.view(), &tiled, &mut |_, _| Ok(())).unwrap();
    assert!(!plain_held(&engine, "encoder"));
    let small = image.slice(ndarray::s![.., .., ..24, ..24]);
    vae_passes::encode(&mut net, small, &VaePass::Whole, &mut |_, _| Ok(())).unwrap();
    assert!(
        plain_held(&engine, "encoder"),
        "a whole pass brings it back"
    );

    // A cancelled pass lets them go too.
    let mut calls = 0;
    let cancelled = vae_passes::encode(&mut net, image.view(), &tiled, &mut |_, _| {
        calls += 1;
        if calls == 3 { Err(Cancelled) } else { Ok(()) }
    });
    assert!(matches!(cancelled, Err(StageError::Cancelled)));
    assert_eq!(statistics_sessions(&engine), Vec::<String>::new());
}

#[test]
fn the_cut_encoder_holds_its_sessions_only_while_a_colour_fixed_pass_runs() {
    let _turn = one_at_a_time();
    let (engine, mut net, _cache) = tiny_vae();
    let image = smooth_image(96);
    let pass = VaePass::Tiled(TiledPass {
        grid: Grid::Clarity,
        tile: 32,
        pad: 8,
        proxy: 32,
        colour_fix: true,
    });
    let segments = |engine: &Engine| {
        engine
            .held_sessions()
            .into_iter()
            .filter(|n| n.contains(" segment "))
            .count()
    };
    let mut seen = Vec::new();
    vae_passes::encode(&mut net, image.view(), &pass, &mut |done, total| {
        seen.push((done, total, segments(&engine)));
        Ok(())
    })
    .unwrap();
    // 96 px: ⌈80/32⌉ = 3 tiles a side; the head's statistics, then 9 tiles through the 19
    // segments of SD's encoder (the head, 16 ResNet halves, the attention, the output).
    let total = 1 + 9 * 19;
    assert_eq!(seen.len(), total);
    assert_eq!(seen[0], (1, total, 0));
    assert!(
        seen[1..].iter().all(|&(_, _, held)| held == 19),
        "{:?}",
        &seen[1..3]
    );
    assert_eq!(segments(&engine), 0, "released at the end");
}
