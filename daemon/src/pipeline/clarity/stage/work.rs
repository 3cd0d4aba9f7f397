//! How much work each part of a stage is, in GFLOP of the network calls it makes: what a
//! stage reports after every call ([`Event`]), and what the job plans before it starts (the
//! denominator of its progress and the shares of its time-left estimate).

use super::StageSetup;

/// A stage's report after a network call: which phase, how far in it, and how much of the
/// job's estimated work the call did (see [`Work`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub phase: &'static str,
    pub step: usize,
    pub steps: usize,
    pub tile: usize,
    pub tiles: usize,
    pub work: f64,
}

/// Estimated cost of each kind of network call, in GFLOP (forward passes at SD 1.5's size):
/// what progress fractions and the ETA are weighted by.
pub struct Work;

impl Work {
    /// RRDBNet 64/23 per input pixel.
    pub const ESRGAN_PER_PIXEL: f64 = 0.036;
    /// VAE encoder per image pixel, decoder per image pixel.
    pub const ENCODE_PER_PIXEL: f64 = 0.004;
    pub const DECODE_PER_PIXEL: f64 = 0.009;
    /// ControlNet hint encoder per hint pixel.
    pub const HINT_PER_PIXEL: f64 = 0.000_06;
    /// UNet + ControlNet per latent position and sample (2158 GFLOP for 2 × 64²).
    pub const UNET_PER_LATENT: f64 = 0.263;
}

/// ESRGAN passes to reach `canvas` from `size` (A1111: while smaller, at most 3).
pub(super) fn passes(size: (usize, usize), canvas: (usize, usize), scale: usize) -> usize {
    let (mut w, mut h) = size;
    let mut n = 0;
    while (w < canvas.0 || h < canvas.1) && n < 3 && scale > 1 {
        w *= scale;
        h *= scale;
        n += 1;
    }
    n
}

/// The estimated work of a stage on an input of `input` pixels, with the same weights the
/// stage reports (the job's denominator for progress).
pub fn planned_work(setup: &StageSetup<'_>, input: (usize, usize), upscaler_scale: usize) -> f64 {
    planned_by_phase(setup, input, upscaler_scale)
        .iter()
        .map(|(_, work)| work)
        .sum()
}

/// [`planned_work`] by phase, as the stage's events name them.
pub fn planned_by_phase(
    setup: &StageSetup<'_>,
    input: (usize, usize),
    upscaler_scale: usize,
) -> [(&'static str, f64); 5] {
    let (cw, ch) = setup.stage.canvas;
    let mut upscale = 0.0;
    let (mut w, mut h) = input;
    for _ in 0..passes(input, setup.stage.canvas, upscaler_scale) {
        upscale += (w * h) as f64 * Work::ESRGAN_PER_PIXEL;
        w *= upscaler_scale;
        h *= upscaler_scale;
    }
    let pixels = (cw * ch) as f64;
    let tiles = setup.grid();
    let per_eval: f64 = tiles
        .iter()
        .map(|t| 2.0 * (t.w * t.h) as f64 * Work::UNET_PER_LATENT)
        .sum();
    [
        ("upscale", upscale),
        ("encode", pixels * Work::ENCODE_PER_PIXEL),
        ("condition", pixels * Work::HINT_PER_PIXEL),
        ("denoise", per_eval * setup.run().evaluations() as f64),
        ("decode", pixels * Work::DECODE_PER_PIXEL),
    ]
}

/// The estimated work of the pre-upscale of an input of `input` (`[3, H, W]`) to `canvas`.
pub(super) fn planned_pre_upscale(
    input: (usize, usize, usize),
    canvas: (usize, usize),
    scale: usize,
) -> f64 {
    let (_, mut h, mut w) = input;
    let mut work = 0.0;
    for _ in 0..passes((w, h), canvas, scale) {
        work += (w * h) as f64 * Work::ESRGAN_PER_PIXEL;
        w *= scale;
        h *= scale;
    }
    work
}
