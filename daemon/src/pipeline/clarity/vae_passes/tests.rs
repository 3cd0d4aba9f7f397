//! Tiling against a small VAE written out in Rust: a GroupNorm, a 3×3 blur, an 8×8 average
//! pool and a second GroupNorm for the encoder; a GroupNorm, nearest ×8 and a blur for the
//! decoder. Its receptive field is a few pixels, so with frozen statistics a tiled pass must
//! reproduce the whole-image pass exactly; with the proxy's statistics, closely. The policy
//! and the grids are checked against numbers worked out from Tiled VAE's rules by hand.

use super::colour_fix::weighted_average;
use super::plan::estimate;
use super::*;
use crate::pipeline::clarity::network_traits::{GroupStats, StageError};
use crate::pipeline::clarity::testing::{TinyVae, moments};
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

fn bounded() -> VaePolicy {
    VaePolicy::bounded(tiling())
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

fn spans(v: &[Span]) -> Vec<(usize, usize, usize, usize)> {
    v.iter()
        .map(|s| (s.core.start, s.core.end, s.input.start, s.input.end))
        .collect()
}

#[test]
fn bounded_spans_cover_the_axis_once_with_aligned_cores_and_clamped_context() {
    for (len, tile, pad, align) in [
        (200, 64, 16, 8),
        (1000, 128, 11, 1),
        (96, 64, 16, 8),
        (8, 4, 0, 8),
    ] {
        let spans = bounded_split(len, tile, pad, align);
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
    assert_eq!(
        bounded_split(96, 64, 16, 8).len(),
        1,
        "96 ≤ 64 + 2·16: one pass"
    );
}

#[test]
fn the_bound_is_on_what_a_tile_computes_so_edge_tiles_take_more_core() {
    let inputs = |len, tile, pad| -> Vec<usize> {
        bounded_split(len, tile, pad, 1)
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
fn clarity_spans_follow_tiled_vae() {
    // A 4096-pixel side: n = ⌈4032/2048⌉ = 2 tiles of 2016 (already a multiple of 32), cores
    // from 32 + i·2016 with the first and last reaching the edges.
    assert_eq!(
        spans(&clarity_split(4096, 2048, 32, 8)),
        [(0, 2048, 0, 2080), (2048, 4096, 2016, 4096)]
    );
    // 512 latents: n = ⌈490/128⌉ = 4, ⌈490/4⌉ = 123 rounds up to 128.
    assert_eq!(
        spans(&clarity_split(512, 128, 11, 1)),
        [
            (0, 139, 0, 150),
            (139, 267, 128, 278),
            (267, 395, 256, 406),
            (395, 512, 384, 512)
        ]
    );
    // 300 latents: n = 3, ⌈278/3⌉ = 93 rounds up to 96 (a multiple of 32 within 128).
    assert_eq!(
        spans(&clarity_split(300, 128, 11, 1)),
        [(0, 107, 0, 118), (107, 203, 96, 214), (203, 300, 192, 300)]
    );
    // What one tile covers (the short side of a wide image, or a small image) is whole.
    for len in [150, 40, 2112] {
        let pad = if len == 2112 { 32 } else { 11 };
        let tile = if len == 2112 { 2048 } else { 128 };
        assert_eq!(spans(&clarity_split(len, tile, pad, 1)), [(0, len, 0, len)]);
    }
    // Every tile computes on at most tile + 2·pad.
    for len in [151, 700, 1999, 5000] {
        for s in clarity_split(len, 128, 11, 1) {
            assert!(s.input.len() <= 150, "{len}: {s:?}");
        }
    }
}

#[test]
fn the_clarity_rule_follows_the_size_the_device_and_the_budget() {
    let tiles = VaeTiling::new(512, 54);
    let gpu = VaePolicy {
        rule: VaeRule::Clarity,
        accelerator: true,
        budget: 0,
        bounded: tiles,
    };
    // Clarity encodes whole up to 2048 + 2·32 pixels and decodes whole up to 128 + 2·11
    // latents; above, Clarity's tiles, the encoder's with the colour fix.
    assert_eq!(gpu.encoder(2112, 1000), VaePass::Whole);
    assert_eq!(gpu.decoder(150, 100), VaePass::Whole);
    let VaePass::Tiled(enc) = gpu.encoder(2120, 1000) else {
        panic!("tiles")
    };
    assert_eq!(
        (enc.grid, enc.tile, enc.pad, enc.proxy, enc.colour_fix),
        (Grid::Clarity, 2048, 32, 2048, true)
    );
    let VaePass::Tiled(dec) = gpu.decoder(151, 100) else {
        panic!("tiles")
    };
    assert_eq!(
        (dec.grid, dec.tile, dec.pad, dec.proxy, dec.colour_fix),
        (Grid::Clarity, 128, 11, 128, false)
    );

    // On a CPU the same where the estimate fits the budget, else the bounded tiles.
    let cpu = |budget| VaePolicy {
        accelerator: false,
        budget,
        ..gpu
    };
    assert_eq!(cpu(u64::MAX).encoder(2112, 1000), VaePass::Whole);
    assert_eq!(cpu(u64::MAX).decoder(200, 100), VaePass::Tiled(dec));
    let needed = estimate::whole_encode(1024, 1024);
    assert_eq!(cpu(needed).encoder(1024, 1024), VaePass::Whole);
    let VaePass::Tiled(small) = cpu(needed - 1).encoder(1024, 1024) else {
        panic!("bounded tiles")
    };
    assert_eq!(
        (
            small.grid,
            small.tile,
            small.pad,
            small.proxy,
            small.colour_fix
        ),
        (Grid::Bounded, 512, 32, 384, false)
    );
    // What the bounded tiles cover is whole anyway.
    assert_eq!(cpu(0).encoder(576, 400), VaePass::Whole);
    assert_eq!(cpu(0).decoder(76, 76), VaePass::Whole);
    // The Refiners preset keeps the bounded tiles whatever the device.
    let refiners = VaePolicy {
        rule: VaeRule::Bounded,
        ..gpu
    };
    assert_eq!(refiners.encoder(1024, 1024), VaePass::Tiled(small));
    // A job is large when either pass tiles.
    assert!(cpu(0).tiles(1024, 1024) && !gpu.tiles(1024, 1024) && gpu.tiles(2400, 512));
}

#[test]
fn the_estimates_grow_with_the_size() {
    for (a, b) in [(512, 768), (768, 1024), (1024, 2048)] {
        assert!(estimate::whole_encode(a, a) < estimate::whole_encode(b, b));
        assert!(estimate::whole_decode(a / 8, a / 8) < estimate::whole_decode(b / 8, b / 8));
    }
    assert!(estimate::colour_fix_encode(3000, 3000) < estimate::colour_fix_encode(6000, 6000));
    // Clarity's decode is bounded by its tile and its proxy, whatever the size.
    assert!(estimate::clarity_decode(151, 151) <= estimate::clarity_decode(600, 600));
    assert_eq!(
        estimate::clarity_decode(600, 600),
        estimate::clarity_decode(1200, 1200)
    );
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
    let pass = bounded().encoder(136, 200);
    let (mean, logvar) = encode(&mut tiled, img.view(), &pass, &mut |d, t| {
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
    assert!(tiled.largest_input <= 96 * 96, "tiles stay small");

    let mut calls = Vec::new();
    let pass = bounded().decoder(17, 25);
    let decoded = decode(&mut tiled, latent.view(), &pass, &mut |d, t| {
        calls.push((d, t));
        Ok(())
    })
    .unwrap();
    assert!(max_diff(&decoded, &reference_image) < 1e-5);
    // post_quant_conv and the statistics pass, then the tiles.
    assert_eq!(calls.first(), Some(&(1, calls.len())));
    assert_eq!(calls.last(), Some(&(calls.len(), calls.len())));
}

#[test]
fn a_whole_pass_runs_once_without_a_statistics_pass() {
    let img = image(96, 80);
    let mut vae = TinyVae::default();
    assert_eq!(bounded().encoder(80, 96), VaePass::Whole);
    let (mean, _) = encode(&mut vae, img.view(), &VaePass::Whole, &mut no_progress()).unwrap();
    assert_eq!((vae.calls, vae.stats_calls), (1, 0));
    let mut plain = TinyVae::default();
    assert_eq!(mean, plain.encode(img.view(), Norms::Own).unwrap().0);
    decode(&mut vae, mean.view(), &VaePass::Whole, &mut no_progress()).unwrap();
    assert_eq!((vae.calls, vae.stats_calls), (2, 0));
}

#[test]
fn proxy_statistics_keep_large_images_close_to_the_whole_pass() {
    let img = image(400, 320);
    let mut vae = TinyVae::default();
    let pass = bounded().encoder(320, 400);
    let (mean, _) = encode(&mut vae, img.view(), &pass, &mut no_progress()).unwrap();
    assert_eq!(vae.stats_calls, 1);
    let (whole, _) = TinyVae::default().encode(img.view(), Norms::Own).unwrap();
    // The 96-pixel proxy's statistics differ a little from the full image's; no seams appear.
    let diff = max_diff(&mean, &whole);
    assert!(diff < 0.15, "proxy statistics drift {diff}");
    let pass = bounded().decoder(40, 50);
    let decoded = decode(&mut vae, whole.view(), &pass, &mut no_progress()).unwrap();
    let reference = TinyVae::default().decode(whole.view(), Norms::Own).unwrap();
    assert!(max_diff(&decoded, &reference) < 0.1);
}

#[test]
fn the_proxy_is_tiled_vaes() {
    let img = image(400, 320);
    let p = proxy(img.view(), 96);
    // ⌊400·0.24⌋ × ⌊320·0.24⌋, nearest-exact: row i reads ⌊(i + ½)/0.24⌋.
    assert_eq!(p.dim(), (1, 3, 96, 76));
    let (low, high) = img
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    for c in 0..3 {
        let (m, s) = unbiased_moments(img.slice(s![0, c, .., ..]).iter());
        let (pm, ps) = unbiased_moments(p.slice(s![0, c, .., ..]).iter());
        // Matched, up to what the clamp to the input's range took off.
        assert!((m - pm).abs() < 1e-2 && (s - ps).abs() < 1e-2, "{c}");
        assert!(p.iter().all(|&v| (low..=high).contains(&v)));
    }
    // Up to the matching (affine per channel), value (i, j) is the input's at
    // ⌊(i + ½)/0.24⌋, ⌊(j + ½)/0.24⌋: rows 2, 6, 10, …, 397 and the same columns.
    let ramp = Array4::from_shape_fn((1, 1, 400, 320), |(_, _, y, x)| (y * 1000 + x) as f32);
    let p = proxy(ramp.view(), 96);
    let sample = |i: usize, j: usize| {
        let at = |k: usize| ((k as f32 + 0.5) * (1.0 / 0.24f64) as f32).floor();
        f64::from(at(i) * 1000.0 + at(j))
    };
    assert_eq!((sample(0, 0), sample(95, 75)), (2002.0, 397_314.0));
    let (first, last) = (f64::from(p[[0, 0, 0, 0]]), f64::from(p[[0, 0, 95, 75]]));
    let gain = (last - first) / (sample(95, 75) - sample(0, 0));
    for ((_, _, i, j), &v) in p.indexed_iter() {
        let expected = first + gain * (sample(i, j) - sample(0, 0));
        assert!(
            (f64::from(v) - expected).abs() < 1e-3 * gain.abs() * 1000.0,
            "{i} {j}"
        );
    }
    // Nothing to shrink: the image itself.
    assert_eq!(proxy(img.view(), 1000), img);
    let _ = moments(img.iter());
}

#[test]
fn the_colour_fix_averages_the_tiles_statistics_by_their_pixels() {
    let tiles = [
        (
            GroupStats {
                mean: vec![1.0, 0.0],
                var: vec![2.0, 1.0],
            },
            300,
        ),
        (
            GroupStats {
                mean: vec![3.0, 1.0],
                var: vec![4.0, 1.0],
            },
            100,
        ),
    ];
    let avg = weighted_average(&tiles);
    assert_eq!(avg.mean, [1.5, 0.25]);
    // Variances average alike: the spread between the tiles' means is not added.
    assert_eq!(avg.var, [2.5, 1.0]);
}

fn clarity_pass(tile: usize, pad: usize, proxy: usize) -> VaePass {
    VaePass::Tiled(TiledPass {
        grid: Grid::Clarity,
        tile,
        pad,
        proxy,
        colour_fix: true,
    })
}

#[test]
fn the_colour_fix_with_one_tile_and_a_full_proxy_is_the_whole_pass() {
    let img = image(96, 80);
    let mut vae = TinyVae::default();
    let (mean, logvar) = encode(
        &mut vae,
        img.view(),
        &clarity_pass(128, 16, 1000),
        &mut no_progress(),
    )
    .unwrap();
    let (whole, whole_logvar) = TinyVae::default().encode(img.view(), Norms::Own).unwrap();
    assert!(max_diff(&mean, &whole) < 1e-6 && max_diff(&logvar, &whole_logvar) < 1e-6);
}

#[test]
fn the_colour_fix_runs_every_tile_through_every_segment() {
    let img = image(200, 136);
    let mut vae = TinyVae::default();
    let mut calls = Vec::new();
    // 200 px: ⌈168/64⌉ = 3 tiles of 64; 136 px: ⌈104/64⌉ = 2 tiles of 64.
    let (mean, _) = encode(
        &mut vae,
        img.view(),
        &clarity_pass(64, 16, 64),
        &mut |d, t| {
            calls.push((d, t));
            Ok(())
        },
    )
    .unwrap();
    // The head's statistics pass, then 6 tiles × 2 segments.
    assert_eq!(calls.len(), 13);
    assert!(calls.iter().enumerate().all(|(i, &c)| c == (i + 1, 13)));
    // The tiles computed on at most 64 + 2·16 a side.
    assert!(vae.largest_input <= 96 * 96);
    // What the colour fix computes, by hand: the first GroupNorm on the 64-pixel proxy's
    // statistics, the second on the average of the six tiles' statistics weighted by their
    // pooled sizes; with this VAE's few-pixel receptive field, the whole image run on those
    // same statistics equals the tiles.
    let mut by_hand = TinyVae::default();
    let head = by_hand
        .encoder_head_stats(proxy(img.view(), 64).view())
        .unwrap();
    let (rows, cols) = (clarity_split(200, 64, 16, 8), clarity_split(136, 64, 16, 8));
    assert_eq!((rows.len(), cols.len()), (3, 2));
    let mut seen = Vec::new();
    for r in &rows {
        for c in &cols {
            let crop = img
                .slice(s![.., .., r.input.clone(), c.input.clone()])
                .to_owned();
            let input = crate::pipeline::clarity::network_traits::Carried {
                x: crop,
                skip: None,
            };
            match by_hand.encoder_segment(0, input, &head).unwrap() {
                crate::pipeline::clarity::network_traits::Segmented::State(state, stats) => {
                    seen.push((stats, state.x.shape()[2] * state.x.shape()[3]))
                }
                _ => panic!("the head gives a state"),
            }
        }
    }
    let frozen = crate::pipeline::clarity::network_traits::GroupNormStats {
        layers: vec![head.layers[0].clone(), weighted_average(&seen)],
    };
    let (expected, _) = by_hand.run_encoder(img.view(), Norms::Frozen(&frozen));
    assert!(
        max_diff(&mean, &expected) < 1e-5,
        "{}",
        max_diff(&mean, &expected)
    );
    // Averaging within-tile variances leaves out the spread between the tiles' means: on this
    // smooth image the result is far from the whole pass's (Tiled VAE's behaviour).
    let (whole, _) = TinyVae::default().encode(img.view(), Norms::Own).unwrap();
    assert!(max_diff(&mean, &whole) > 0.1);
}

#[test]
fn cancelling_stops_between_tiles() {
    let img = image(200, 136);
    for pass in [bounded().encoder(136, 200), clarity_pass(64, 16, 64)] {
        let mut vae = TinyVae::default();
        let result = encode(&mut vae, img.view(), &pass, &mut |done, _| {
            if done >= 3 { Err(Cancelled) } else { Ok(()) }
        });
        assert!(matches!(result, Err(StageError::Cancelled)), "{pass:?}");
        assert_eq!(vae.calls, 3, "{pass:?}");
    }
}
