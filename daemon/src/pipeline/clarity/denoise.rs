//! One MultiDiffusion evaluation (Bar-Tal et al., 2023) as Clarity runs it: the latent is cut
//! into tiles, each tile goes through ControlNet and UNet with cond and uncond in one batch,
//! classifier-free guidance gives each tile's denoised estimate x0, and the estimates are
//! averaged where tiles overlap. The sampler then takes one step on the whole latent.
//!
//! Tiles run in batches (several tiles per network call) purely for speed: each tile's
//! estimate is added to the average in tile order, so the result does not depend on the
//! batch size.

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis, s};

use super::network_traits::{ControlledUnet, NetResult, Prompts, StageError};
use super::tiles::{LatentTile, coverage};
use crate::Cancelled;

/// What stays fixed over a stage's evaluations (the conditioning itself is with the network,
/// see [`ControlledUnet::begin_stage`]).
pub struct Guidance<'a> {
    pub tiles: &'a [LatentTile],
    /// Tiles per network call.
    pub batch: usize,
    /// Classifier-free guidance scale.
    pub cfg: f32,
    /// Whether cond and uncond share one call (their contexts have the same length).
    pub paired: bool,
}

/// Network calls (ControlNet + UNet) of one evaluation: one per batch, twice when cond and
/// uncond cannot share a call.
pub fn calls_per_evaluation(g: &Guidance<'_>) -> usize {
    let batches = super::tiles::batches(g.tiles.len(), g.batch).len();
    batches * if g.paired { 1 } else { 2 }
}

/// The hint crops of each batch of `tiles`, `[b, 3, 8h, 8w]`, from the condition image
/// `[3, H, W]`.
pub fn hint_batches<'a>(
    condition: ArrayView3<'a, f32>,
    tiles: &'a [LatentTile],
    batch: usize,
) -> impl Iterator<Item = (std::ops::Range<usize>, Array4<f32>)> + 'a {
    super::tiles::batches(tiles.len(), batch)
        .into_iter()
        .map(move |range| {
            let batch = &tiles[range.clone()];
            let (th, tw) = (8 * batch[0].h, 8 * batch[0].w);
            let mut hints = Array4::<f32>::zeros((batch.len(), 3, th, tw));
            for (i, t) in batch.iter().enumerate() {
                hints.index_axis_mut(Axis(0), i).assign(&condition.slice(s![
                    ..,
                    t.y * 8..(t.y + t.h) * 8,
                    t.x * 8..(t.x + t.w) * 8
                ]));
            }
            (range, hints)
        })
}

/// The denoised estimate D of latent `x` (`[1, 4, h, w]`) at noise level `sigma` and UNet
/// timestep `timestep`; `on_call` follows every network call.
pub fn denoise(
    net: &mut dyn ControlledUnet,
    x: ArrayView4<f32>,
    sigma: f64,
    timestep: f64,
    g: &Guidance<'_>,
    on_call: &mut dyn FnMut() -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let (_, channels, h, w) = x.dim();
    let c_in = (1.0 / (sigma * sigma + 1.0).sqrt()) as f32;
    let t = timestep as f32;
    let mut sum = Array3::<f32>::zeros((channels, h, w));
    for (index, range) in super::tiles::batches(g.tiles.len(), g.batch)
        .into_iter()
        .enumerate()
    {
        let tiles = &g.tiles[range.clone()];
        let (th, tw) = (tiles[0].h, tiles[0].w);
        let b = tiles.len();
        let mut sample = Array4::<f32>::zeros((b, channels, th, tw));
        for (i, t) in tiles.iter().enumerate() {
            sample.index_axis_mut(Axis(0), i).assign(&x.slice(s![
                0,
                ..,
                t.y..t.y + t.h,
                t.x..t.x + t.w
            ]));
        }
        sample.mapv_inplace(|v| v * c_in);
        let eps = if g.paired {
            let both = ndarray::concatenate(Axis(0), &[sample.view(), sample.view()])
                .expect("same shapes");
            let eps = net.predict(index, both.view(), t, Prompts::Both)?;
            on_call()?;
            eps
        } else {
            let ec = net.predict(index, sample.view(), t, Prompts::Cond)?;
            on_call()?;
            let eu = net.predict(index, sample.view(), t, Prompts::Uncond)?;
            on_call()?;
            if ec.dim() != eu.dim() {
                return Err(StageError::Unexpected(format!(
                    "the UNet returned {:?} and {:?} for the same samples",
                    ec.shape(),
                    eu.shape()
                )));
            }
            ndarray::concatenate(Axis(0), &[ec.view(), eu.view()]).expect("same shapes")
        };
        if eps.dim() != (2 * b, channels, th, tw) {
            return Err(StageError::Unexpected(format!(
                "the UNet returned {:?} for {} samples of {channels}×{th}×{tw}",
                eps.shape(),
                2 * b
            )));
        }
        let (cfg, sigma) = (g.cfg, sigma as f32);
        for (i, t) in tiles.iter().enumerate() {
            let (ec, eu) = (eps.index_axis(Axis(0), i), eps.index_axis(Axis(0), b + i));
            let xt = x.slice(s![0, .., t.y..t.y + t.h, t.x..t.x + t.w]);
            let mut acc = sum.slice_mut(s![.., t.y..t.y + t.h, t.x..t.x + t.w]);
            ndarray::Zip::from(&mut acc)
                .and(&xt)
                .and(&ec)
                .and(&eu)
                .for_each(|a, &x, &c, &u| *a += x - sigma * (u + cfg * (c - u)));
        }
    }
    let count = coverage(g.tiles, w, h);
    let mut d = sum.insert_axis(Axis(0));
    for (v, &n) in d
        .slice_mut(s![0, .., .., ..])
        .lanes_mut(Axis(0))
        .into_iter()
        .zip(count.iter())
    {
        let inv = 1.0 / n as f32;
        for a in v {
            *a *= inv;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
