//! The MultiDiffusion evaluation against a stand-in network that is pointwise in space: at
//! every latent position its output depends only on the inputs at that position. Then every
//! tile that covers a position predicts the same value there, so the tiled average must equal
//! a single whole-latent pass, and anything the orchestration gets wrong (offsets, batch
//! slicing, cond/uncond order, residual scales, the average) shows.

use super::*;
use crate::pipeline::clarity::control::RESIDUALS;
use crate::pipeline::clarity::network_traits::StageConditioning;
use crate::pipeline::clarity::testing::Pointwise;
use crate::pipeline::clarity::tiles::clarity_grid;
use ndarray::Array2;

struct Setup {
    x: Array4<f32>,
    cond: Array2<f32>,
    uncond: Array2<f32>,
    hint: Array4<f32>,
}

fn setup(h: usize, w: usize, uncond_len: usize) -> Setup {
    let x = Array4::from_shape_fn((1, 4, h, w), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x * 5) as f32 * 0.13).sin()
    });
    let cond = Array2::from_shape_fn((6, 3), |(i, j)| (i + j) as f32 * 0.1);
    let uncond = Array2::from_shape_fn((uncond_len, 3), |(i, j)| (i * j) as f32 * -0.05);
    let hint = Array4::from_shape_fn((1, 3, 8 * h, 8 * w), |(_, c, y, x)| {
        ((c + 1) as f32 * (y as f32 * 0.01 + x as f32 * 0.02)).cos()
    });
    Setup {
        x,
        cond,
        uncond,
        hint,
    }
}

/// Hands `s`'s text, `scales` and the hint of every batch of `tiles` to `net`, as a stage does.
fn begin(
    net: &mut Pointwise,
    s: &Setup,
    tiles: &[LatentTile],
    batch: usize,
    scales: [f32; RESIDUALS],
) {
    net.begin_stage(&StageConditioning {
        cond: s.cond.view(),
        uncond: s.uncond.view(),
        scales,
    })
    .unwrap();
    let condition = s.hint.index_axis(Axis(0), 0);
    for (i, (_, hints)) in hint_batches(condition, tiles, batch).enumerate() {
        net.embed_hints(i, hints.view()).unwrap();
    }
}

fn guidance<'a>(s: &Setup, tiles: &'a [LatentTile], batch: usize) -> Guidance<'a> {
    Guidance {
        tiles,
        batch,
        cfg: 6.0,
        paired: s.cond.nrows() == s.uncond.nrows(),
    }
}

fn run(
    s: &Setup,
    tiles: &[LatentTile],
    batch: usize,
    scales: [f32; RESIDUALS],
) -> (Array4<f32>, usize) {
    let mut net = Pointwise::default();
    begin(&mut net, s, tiles, batch, scales);
    let g = guidance(s, tiles, batch);
    let mut reported = 0;
    let d = denoise(&mut net, s.x.view(), 0.645, 230.07, &g, &mut || {
        reported += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(reported, net.calls, "one report per network call");
    assert_eq!(reported, calls_per_evaluation(&g));
    assert!(net.largest_batch <= 2 * batch);
    (d, reported)
}

fn scales() -> [f32; RESIDUALS] {
    crate::pipeline::clarity::control::residual_scales(0.6, 0.825)
}

#[test]
fn overlapping_tiles_average_to_the_whole_latent_pass() {
    let s = setup(40, 56, 6);
    let tiles = clarity_grid(56, 40, 24, 16);
    assert!(tiles.len() >= 6);
    let (tiled, _) = run(&s, &tiles, 4, scales());
    let (whole, _) = run(&s, &[LatentTile::whole(56, 40)], 1, scales());
    let diff = tiled
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "max difference {diff}");
}

#[test]
fn the_batch_size_does_not_change_a_single_bit() {
    let s = setup(40, 56, 6);
    let tiles = clarity_grid(56, 40, 24, 16);
    let (one, calls_one) = run(&s, &tiles, 1, scales());
    for batch in [2, 3, 8, 100] {
        let (d, calls) = run(&s, &tiles, batch, scales());
        assert_eq!(d, one, "batch {batch}");
        assert!(calls <= calls_one);
    }
}

#[test]
fn guidance_residual_scales_and_sigma_follow_the_formulas() {
    let s = setup(16, 16, 6);
    let whole = [LatentTile::whole(16, 16)];
    let (d, _) = run(&s, &whole, 1, scales());
    // By hand at one position: ε = 0.5·x·c_in + text·(ch + 1) + Σ kᵢ·rᵢ + 1e-3·t.
    let (ch, y, x) = (2, 5, 7);
    let sigma = 0.645f64;
    let c_in = (1.0 / (sigma * sigma + 1.0).sqrt()) as f32;
    let xin = s.x[[0, ch, y, x]] * c_in;
    let x0 = s.x[[0, 0, y, x]] * c_in;
    let emb: Vec<f32> = (0..2)
        .map(|c| {
            s.hint
                .slice(s![0, c, y * 8..y * 8 + 8, x * 8..x * 8 + 8])
                .mean()
                .unwrap()
        })
        .collect();
    let k = scales();
    let r: f32 = (0..RESIDUALS)
        .map(|i| k[i] * (emb[i % 2] + 0.01 * i as f32 * x0 + 1e-4 * 230.07))
        .sum();
    let eps = |text: f32| 0.5 * xin + text * (ch as f32 + 1.0) + r + 1e-3 * 230.07;
    let (ec, eu) = (eps(s.cond.mean().unwrap()), eps(s.uncond.mean().unwrap()));
    let expected = s.x[[0, ch, y, x]] - 0.645 * (eu + 6.0 * (ec - eu));
    assert!(
        (d[[0, ch, y, x]] - expected).abs() < 1e-4,
        "{} vs {expected}",
        d[[0, ch, y, x]]
    );
    // Without ControlNet influence the result changes.
    let (d0, _) = run(&s, &whole, 1, [0.0; RESIDUALS]);
    assert!((d0[[0, ch, y, x]] - d[[0, ch, y, x]]).abs() > 1e-3);
}

#[test]
fn cond_and_uncond_of_different_lengths_run_as_two_calls() {
    let same = setup(16, 24, 6);
    let longer = setup(16, 24, 9);
    let tiles = clarity_grid(24, 16, 16, 16);
    let (_, calls_same) = run(&same, &tiles, 8, scales());
    let (d, calls) = run(&longer, &tiles, 8, scales());
    assert_eq!(calls, 2 * calls_same);
    let (whole, _) = run(&longer, &[LatentTile::whole(24, 16)], 1, scales());
    let diff = d
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5);
}

#[test]
fn cancelling_stops_at_the_next_network_call() {
    let s = setup(16, 24, 6);
    let tiles = clarity_grid(24, 16, 16, 16);
    let mut net = Pointwise::default();
    begin(&mut net, &s, &tiles, 1, scales());
    let g = guidance(&s, &tiles, 1);
    let result = denoise(&mut net, s.x.view(), 1.0, 300.0, &g, &mut || Err(Cancelled));
    assert!(matches!(result, Err(StageError::Cancelled)));
    assert_eq!(net.calls, 1);
}
