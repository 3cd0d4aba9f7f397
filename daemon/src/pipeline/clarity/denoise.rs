//! One MultiDiffusion evaluation (Bar-Tal et al., 2023) as Clarity runs it: the latent is cut
//! into tiles, each tile goes through ControlNet and UNet with cond and uncond in one batch,
//! classifier-free guidance gives each tile's denoised estimate x0, and the estimates are
//! averaged where tiles overlap. The sampler then takes one step on the whole latent.
//!
//! Tiles run in batches (several tiles per network call) purely for speed: each tile's
//! estimate is added to the average in tile order, so the result does not depend on the
//! batch size.

use ndarray::{Array1, Array3, Array4, ArrayView2, ArrayView4, Axis, s};

use super::control::RESIDUALS;
use super::nets::{ControlledUnet, NetResult, StageError};
use super::tiles::{LatentTile, coverage};
use crate::Cancelled;

/// What stays fixed over a stage's evaluations.
pub struct Guidance<'a> {
    pub tiles: &'a [LatentTile],
    /// Tiles per network call.
    pub batch: usize,
    /// Text conditioning `[L, C]` of the prompt and of the negative prompt.
    pub cond: ArrayView2<'a, f32>,
    pub uncond: ArrayView2<'a, f32>,
    /// Classifier-free guidance scale.
    pub cfg: f32,
    /// Scale of each ControlNet residual.
    pub scales: [f32; RESIDUALS],
    /// The hint embedding of each tile, `[1, C₀, h, w]`.
    pub hints: &'a [Array4<f32>],
}

/// Network calls of one evaluation (ControlNet and UNet per batch, twice when cond and uncond
/// have different lengths and cannot share a batch).
pub fn calls_per_evaluation(g: &Guidance<'_>) -> usize {
    let batches = super::tiles::batches(g.tiles.len(), g.batch).len();
    let passes = if g.cond.nrows() == g.uncond.nrows() {
        1
    } else {
        2
    };
    2 * batches * passes
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
    let mut sum = Array3::<f32>::zeros((channels, h, w));
    for range in super::tiles::batches(g.tiles.len(), g.batch) {
        let tiles = &g.tiles[range.clone()];
        let (th, tw) = (tiles[0].h, tiles[0].w);
        let b = tiles.len();
        let mut sample = Array4::<f32>::zeros((b, channels, th, tw));
        let mut embedding = None::<Array4<f32>>;
        for (i, t) in tiles.iter().enumerate() {
            sample.index_axis_mut(Axis(0), i).assign(&x.slice(s![
                0,
                ..,
                t.y..t.y + t.h,
                t.x..t.x + t.w
            ]));
            let hint = &g.hints[range.start + i];
            let e = embedding.get_or_insert_with(|| {
                let (_, c, eh, ew) = hint.dim();
                Array4::zeros((b, c, eh, ew))
            });
            e.index_axis_mut(Axis(0), i)
                .assign(&hint.index_axis(Axis(0), 0));
        }
        let embedding = embedding.expect("a batch has at least one tile");
        sample.mapv_inplace(|v| v * c_in);
        let eps = if g.cond.nrows() == g.uncond.nrows() {
            let both = ndarray::concatenate(Axis(0), &[sample.view(), sample.view()])
                .expect("same shapes");
            let emb = ndarray::concatenate(Axis(0), &[embedding.view(), embedding.view()])
                .expect("same shapes");
            let context = contexts(&[(g.cond, b), (g.uncond, b)]);
            evaluate(
                net,
                both.view(),
                timestep,
                context.view(),
                emb.view(),
                g,
                on_call,
            )?
        } else {
            let c = contexts(&[(g.cond, b)]);
            let u = contexts(&[(g.uncond, b)]);
            let ec = evaluate(
                net,
                sample.view(),
                timestep,
                c.view(),
                embedding.view(),
                g,
                on_call,
            )?;
            let eu = evaluate(
                net,
                sample.view(),
                timestep,
                u.view(),
                embedding.view(),
                g,
                on_call,
            )?;
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

/// `[Σ n, L, C]`: each context repeated for its `n` samples.
fn contexts(parts: &[(ArrayView2<'_, f32>, usize)]) -> Array3<f32> {
    let (l, c) = parts[0].0.dim();
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Array3::zeros((total, l, c));
    let mut at = 0;
    for &(ctx, n) in parts {
        for _ in 0..n {
            out.index_axis_mut(Axis(0), at).assign(&ctx);
            at += 1;
        }
    }
    out
}

/// ControlNet, residual scaling, UNet: ε̂ for one batch.
fn evaluate(
    net: &mut dyn ControlledUnet,
    sample: ArrayView4<f32>,
    timestep: f64,
    context: ndarray::ArrayView3<f32>,
    embedding: ArrayView4<f32>,
    g: &Guidance<'_>,
    on_call: &mut dyn FnMut() -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let t = Array1::from_elem(sample.shape()[0], timestep as f32);
    let mut residuals = net.control(sample, t.view(), context, embedding)?;
    on_call()?;
    if residuals.len() != RESIDUALS {
        return Err(StageError::Unexpected(format!(
            "the ControlNet returned {} residuals, not {RESIDUALS}",
            residuals.len()
        )));
    }
    for (r, &k) in residuals.iter_mut().zip(&g.scales) {
        r.mapv_inplace(|v| v * k);
    }
    let eps = net.unet(sample, t.view(), context, &residuals)?;
    on_call()?;
    Ok(eps)
}

#[cfg(test)]
mod tests;
