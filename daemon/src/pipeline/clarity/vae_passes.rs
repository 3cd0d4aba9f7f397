//! VAE encoding and decoding of a stage's canvas, in the pass [`plan`] picks: whole, in
//! Clarity's tiles (Tiled VAE, with its encoder colour fix), or in the memory-bounded tiles of a
//! CPU.
//!
//! A tiled pass computes every tile with context on each side and keeps its core (hard seams,
//! as Tiled VAE). Its GroupNorms run on statistics of the whole image, so the tiles agree on
//! brightness and colour: one pass over a proxy of the input (shrunk with nearest-exact
//! sampling so that its longer side is the pass's proxy size, matched per channel to the
//! input's mean and standard deviation, clamped to its range: Tiled VAE's "fast" mode) gives
//! them, and every tile runs on them frozen — except, with the encoder colour fix, the
//! GroupNorms after the first downsample, which take the pixel-weighted average of the tiles'
//! own statistics ([`colour_fix`]).

#[cfg(feature = "dev")]
pub mod bench;
mod colour_fix;
pub mod plan;
pub mod split;

use ndarray::{Array4, ArrayView4, Axis, s};

pub use plan::{TiledPass, VaePass, VaePolicy, VaeRule, VaeTiling};
pub use split::{Grid, Span, bounded_split, clarity_split};

use super::network_traits::{NetResult, Norms, Vae};
use crate::Cancelled;

/// Tiles of `pass` over an `h`×`w` input whose cores are multiples of `align`.
fn tile_grid(h: usize, w: usize, pass: &TiledPass, align: usize) -> (Vec<Span>, Vec<Span>) {
    (
        pass.grid.split(h, pass.tile, pass.pad, align),
        pass.grid.split(w, pass.tile, pass.pad, align),
    )
}

/// `x` (`[1, C, H, W]`) as Tiled VAE's fast mode shrinks it for the statistics pass:
/// `F.interpolate(scale_factor = side / max(H, W), mode = "nearest-exact")` (sides
/// ⌊H·k⌋ × ⌊W·k⌋, source index ⌊(i + ½)/k⌋ in float32), each channel then matched to `x`'s mean
/// and unbiased standard deviation, and clamped to `x`'s range. An `x` no larger than `side` is
/// returned as it is.
pub fn proxy(x: ArrayView4<f32>, side: usize) -> Array4<f32> {
    let (_, c, h, w) = x.dim();
    let long = h.max(w);
    if long <= side {
        return x.to_owned();
    }
    let k = side as f64 / long as f64;
    let (ph, pw) = (
        ((h as f64 * k).floor() as usize).max(1),
        ((w as f64 * k).floor() as usize).max(1),
    );
    let step = (1.0 / k) as f32;
    let index =
        |dst: usize, len: usize| (((dst as f32 + 0.5) * step).floor() as usize).min(len - 1);
    let rows: Vec<usize> = (0..ph).map(|y| index(y, h)).collect();
    let cols: Vec<usize> = (0..pw).map(|x| index(x, w)).collect();
    let (low, high) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let mut out = Array4::<f32>::zeros((1, c, ph, pw));
    for ch in 0..c {
        let plane = x.slice(s![0, ch, .., ..]);
        let mut small = out.slice_mut(s![0, ch, .., ..]);
        for (y, &sy) in rows.iter().enumerate() {
            for (xx, &sx) in cols.iter().enumerate() {
                small[[y, xx]] = plane[[sy, sx]];
            }
        }
        let (m_full, s_full) = unbiased_moments(plane.iter());
        let (m_small, s_small) = unbiased_moments(small.iter());
        // A constant proxy has no spread to match (PyTorch would divide by zero).
        let gain = if s_small > 0.0 { s_full / s_small } else { 1.0 };
        small
            .mapv_inplace(|v| (((f64::from(v) - m_small) * gain + m_full) as f32).clamp(low, high));
    }
    out
}

/// Mean and unbiased standard deviation (`torch.std_mean`'s default).
fn unbiased_moments<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> (f64, f64) {
    let n = values.clone().count() as f64;
    let mean = values.clone().map(|&v| f64::from(v)).sum::<f64>() / n.max(1.0);
    let var = values.map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Encodes `image` (`[1, 3, H, W]`, −1..1, H and W multiples of 8) to the posterior's
/// (mean, log-variance) in `pass`; `on_call(done, total)` follows every network call.
pub fn encode(
    vae: &mut dyn Vae,
    image: ArrayView4<f32>,
    pass: &VaePass,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let tiled = match pass {
        VaePass::Whole => {
            let out = vae.encode(image, Norms::Own)?;
            on_call(1, 1)?;
            return Ok(out);
        }
        VaePass::Tiled(t) => *t,
    };
    vae.begin_tiles(false);
    let result = if tiled.colour_fix {
        colour_fix::encode(vae, image, &tiled, on_call)
    } else {
        encode_frozen(vae, image, &tiled, on_call)
    };
    vae.end_tiles();
    result
}

/// The tiles of an encode, every GroupNorm frozen to the proxy's statistics.
fn encode_frozen(
    vae: &mut dyn Vae,
    image: ArrayView4<f32>,
    pass: &TiledPass,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let (_, _, h, w) = image.dim();
    let (rows, cols) = tile_grid(h, w, pass, 8);
    let total = 1 + rows.len() * cols.len();
    let stats = vae.encoder_stats(proxy(image, pass.proxy).view())?;
    on_call(1, total)?;
    let mut mean = Array4::<f32>::zeros((1, 4, h / 8, w / 8));
    let mut logvar = mean.clone();
    let mut done = 1;
    for r in &rows {
        for c in &cols {
            let crop = image.slice(s![.., .., r.input.clone(), c.input.clone()]);
            let (m, l) = vae.encode(crop, Norms::Frozen(&stats))?;
            place_latent(&mut mean, &m, r, c)?;
            place_latent(&mut logvar, &l, r, c)?;
            done += 1;
            on_call(done, total)?;
        }
    }
    Ok((mean, logvar))
}

/// Copies the core of a tile's latent (computed on `r.input` × `c.input` pixels) into `dst`.
fn place_latent(dst: &mut Array4<f32>, src: &Array4<f32>, r: &Span, c: &Span) -> NetResult<()> {
    check_channels(src, dst.shape()[1])?;
    let (y0, x0) = (
        (r.core.start - r.input.start) / 8,
        (c.core.start - c.input.start) / 8,
    );
    let (ch, cw) = (r.core.len() / 8, c.core.len() / 8);
    let (ty, tx) = (r.core.start / 8, c.core.start / 8);
    dst.slice_mut(s![.., .., ty..ty + ch, tx..tx + cw])
        .assign(&src.slice(s![.., .., y0..y0 + ch, x0..x0 + cw]));
    Ok(())
}

/// Decodes `latent` (`[1, 4, h, w]`, unscaled) to `[1, 3, 8h, 8w]` in `pass`.
pub fn decode(
    vae: &mut dyn Vae,
    latent: ArrayView4<f32>,
    pass: &VaePass,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let tiled = match pass {
        VaePass::Whole => {
            let out = vae.decode(latent, Norms::Own)?;
            on_call(1, 1)?;
            return Ok(out);
        }
        VaePass::Tiled(t) => *t,
    };
    vae.begin_tiles(true);
    let result = decode_tiles(vae, latent, &tiled, on_call);
    vae.end_tiles();
    result
}

fn decode_tiles(
    vae: &mut dyn Vae,
    latent: ArrayView4<f32>,
    pass: &TiledPass,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let (_, _, h, w) = latent.dim();
    let (rows, cols) = tile_grid(h, w, pass, 1);
    let total = 2 + rows.len() * cols.len();
    // Tiled VAE hooks the decoder behind post_quant_conv: the proxy is taken there.
    let input = vae.post_quant(latent)?;
    on_call(1, total)?;
    let stats = vae.decoder_stats(proxy(input.view(), pass.proxy).view())?;
    drop(input);
    on_call(2, total)?;
    let mut image = Array4::<f32>::zeros((1, 3, h * 8, w * 8));
    let mut done = 2;
    for r in &rows {
        for c in &cols {
            let crop = latent.slice(s![.., .., r.input.clone(), c.input.clone()]);
            let out = vae.decode(crop, Norms::Frozen(&stats))?;
            check_channels(&out, 3)?;
            let (y0, x0) = (
                8 * (r.core.start - r.input.start),
                8 * (c.core.start - c.input.start),
            );
            let (ch, cw) = (8 * r.core.len(), 8 * c.core.len());
            let (ty, tx) = (8 * r.core.start, 8 * c.core.start);
            image
                .slice_mut(s![.., .., ty..ty + ch, tx..tx + cw])
                .assign(&out.slice(s![.., .., y0..y0 + ch, x0..x0 + cw]));
            done += 1;
            on_call(done, total)?;
        }
    }
    Ok(image)
}

fn check_channels(x: &Array4<f32>, channels: usize) -> NetResult<()> {
    if x.len_of(Axis(1)) == channels {
        Ok(())
    } else {
        Err(super::network_traits::StageError::Unexpected(format!(
            "the VAE returned {} channels where {channels} were expected",
            x.len_of(Axis(1))
        )))
    }
}

#[cfg(test)]
mod tests;
