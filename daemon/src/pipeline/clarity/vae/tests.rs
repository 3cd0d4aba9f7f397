//! Tiling against a small VAE written out in Rust: a GroupNorm, a 3×3 blur, an 8×8 average
//! pool and a second GroupNorm for the encoder; a GroupNorm, nearest ×8 and a blur for the
//! decoder. Its receptive field is a few pixels, so with frozen statistics a tiled pass must
//! reproduce the whole-image pass exactly; with the proxy's statistics, closely.

use super::*;
use crate::pipeline::clarity::testing::TinyVae;
use ndarray::Array4;

fn image(h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
        let (y, x) = (y as f32 / h as f32, x as f32 / w as f32);
        ((3.0 * x + 2.0 * y + c as f32).sin() * 0.6 + 0.2 * (17.0 * x * y).cos()).clamp(-1.0, 1.0)
    })
}

fn tiling() -> VaeTiling {
    VaeTiling {
        encoder_tile: 64,
        encoder_pad: 16,
        decoder_tile: 8,
        decoder_pad: 2,
    }
}

fn no_progress() -> impl FnMut(usize, usize) -> Result<(), Cancelled> {
    |_, _| Ok(())
}

fn max_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn spans_cover_the_axis_once_with_aligned_cores_and_clamped_context() {
    for (len, tile, pad, align) in [
        (200, 64, 16, 8),
        (1000, 128, 11, 1),
        (96, 64, 16, 8),
        (8, 4, 0, 8),
    ] {
        let spans = split(len, tile, pad, align);
        assert_eq!(spans[0].core.start, 0);
        assert_eq!(spans.last().unwrap().core.end, len);
        for w in spans.windows(2) {
            assert_eq!(w[0].core.end, w[1].core.start);
        }
        for sp in &spans {
            assert_eq!(sp.core.start % align, 0);
            assert!(spans.len() == 1 || sp.input.len() <= tile + 2 * pad);
            assert!(!sp.core.is_empty());
            assert_eq!(sp.input.start, sp.core.start.saturating_sub(pad));
            assert_eq!(sp.input.end, (sp.core.end + pad).min(len));
        }
    }
    assert_eq!(split(96, 64, 16, 8).len(), 1, "96 ≤ 64 + 2·16: one pass");
}

#[test]
fn the_bound_is_on_what_a_tile_computes_so_edge_tiles_take_more_core() {
    let inputs = |len, tile, pad| -> Vec<usize> {
        split(len, tile, pad, 1)
            .iter()
            .map(|s| s.input.len())
            .collect()
    };
    // 128 latents, 54 + 2·11 at most: two edge tiles of 64 + 11, not three.
    assert_eq!(inputs(128, 54, 11), [75, 75]);
    // With 48 + 2·11, 64 + 11 is too much: three tiles.
    assert_eq!(inputs(128, 48, 11), [54, 65, 53]);
    // Interior tiles carry context on both sides: 512 latents take ten tiles of at most 76
    // (nine would give interior cores of 57 and inputs of 79).
    let wide = inputs(512, 54, 11);
    assert_eq!(wide.len(), 10);
    assert!(wide.iter().all(|&n| n <= 76), "{wide:?}");
    assert_eq!(wide.iter().max(), Some(&74));
}

#[test]
fn tiled_passes_with_frozen_statistics_equal_the_whole_image_pass() {
    let img = image(200, 136);
    let mut whole = TinyVae::default();
    let (_, enc_stats) = whole.run_encoder(img.view(), Norms::Own);
    let (reference, _) = whole.encode(img.view(), Norms::Frozen(&enc_stats)).unwrap();
    let latent = reference.clone();
    let (_, dec_stats) = whole.run_decoder(latent.view(), Norms::Own);
    let reference_image = whole
        .decode(latent.view(), Norms::Frozen(&dec_stats))
        .unwrap();

    let mut tiled = TinyVae {
        fixed: Some((enc_stats, dec_stats)),
        ..TinyVae::default()
    };
    let mut calls = Vec::new();
    let (mean, logvar) = encode(&mut tiled, img.view(), &tiling(), &mut |d, t| {
        calls.push((d, t));
        Ok(())
    })
    .unwrap();
    assert!(
        max_diff(&mean, &reference) < 1e-5,
        "{}",
        max_diff(&mean, &reference)
    );
    assert!(max_diff(&logvar, &reference.mapv(|v| 0.1 * v)) < 1e-5);
    // One statistics pass, then 3 × 2 tiles of at most 64 + 2·16; progress after every call.
    assert_eq!(calls.len(), 7);
    assert_eq!(calls.last(), Some(&(7, 7)));
    assert_eq!(encode_calls(200, 136, &tiling()), 7);
    assert!(tiled.largest_input <= 96 * 96, "tiles stay small");

    let decoded = decode(&mut tiled, latent.view(), &tiling(), &mut no_progress()).unwrap();
    assert!(max_diff(&decoded, &reference_image) < 1e-5);
}

#[test]
fn what_fits_one_tile_runs_once_without_a_statistics_pass() {
    let img = image(96, 80);
    let mut vae = TinyVae::default();
    let (mean, _) = encode(&mut vae, img.view(), &tiling(), &mut no_progress()).unwrap();
    assert_eq!((vae.calls, vae.stats_calls), (1, 0));
    let mut plain = TinyVae::default();
    assert_eq!(mean, plain.encode(img.view(), Norms::Own).unwrap().0);
    decode(&mut vae, mean.view(), &tiling(), &mut no_progress()).unwrap();
    assert_eq!((vae.calls, vae.stats_calls), (2, 0));
}

#[test]
fn proxy_statistics_keep_large_images_close_to_the_whole_pass() {
    let img = image(400, 320);
    let mut vae = TinyVae::default();
    let (mean, _) = encode(&mut vae, img.view(), &tiling(), &mut no_progress()).unwrap();
    assert_eq!(vae.stats_calls, 1);
    let (whole, _) = TinyVae::default().encode(img.view(), Norms::Own).unwrap();
    // The proxy's statistics differ a little from the full image's; no seams appear.
    let diff = max_diff(&mean, &whole);
    assert!(diff < 0.1, "proxy statistics drift {diff}");
    let decoded = decode(&mut vae, whole.view(), &tiling(), &mut no_progress()).unwrap();
    let reference = TinyVae::default().decode(whole.view(), Norms::Own).unwrap();
    assert!(max_diff(&decoded, &reference) < 0.1);
}

#[test]
fn the_proxy_is_small_and_has_the_full_moments() {
    let img = image(400, 320);
    let p = proxy(img.view(), 96, 8);
    assert_eq!(p.dim(), (1, 3, 96, 72));
    for c in 0..3 {
        let (m, s) = moments(img.slice(s![0, c, .., ..]).iter());
        let (pm, ps) = moments(p.slice(s![0, c, .., ..]).iter());
        assert!((m - pm).abs() < 1e-5 && (s - ps).abs() < 1e-5);
    }
    // Nothing to shrink: the image itself.
    assert_eq!(proxy(img.view(), 1000, 8), img);
}

#[test]
fn cancelling_stops_between_tiles() {
    let img = image(200, 136);
    let mut vae = TinyVae::default();
    let result = encode(&mut vae, img.view(), &tiling(), &mut |done, _| {
        if done >= 3 { Err(Cancelled) } else { Ok(()) }
    });
    assert!(matches!(
        result,
        Err(crate::pipeline::clarity::nets::StageError::Cancelled)
    ));
    assert_eq!(vae.calls, 3);
}
