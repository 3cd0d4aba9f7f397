//! VAE encoding and decoding of images too large for one pass: tiles with context on every
//! side, hard seams, and every GroupNorm frozen to statistics of the whole image, so that a
//! 4096² output fits in bounded memory and the tiles agree on brightness and colour.
//!
//! The statistics come from one pass over a proxy of the whole input, shrunk to one tile
//! (nearest-exact) and matched per channel to the full input's mean and standard deviation:
//! Tiled VAE's "fast" mode, which Clarity runs. An image that fits one tile is encoded or
//! decoded whole, and then no statistics pass runs at all.

use std::ops::Range;

use ndarray::{Array4, ArrayView4, Axis, s};

use super::nets::{NetResult, Norms, Vae};
use crate::Cancelled;

/// Tile sizes and context, per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeTiling {
    /// Encoder tile core, in pixels (a multiple of 8).
    pub encoder_tile: usize,
    /// Encoder context on each side, in pixels (a multiple of 8; Tiled VAE: 32).
    pub encoder_pad: usize,
    /// Decoder tile core, in latents.
    pub decoder_tile: usize,
    /// Decoder context on each side, in latents (Tiled VAE: 11).
    pub decoder_pad: usize,
}

impl VaeTiling {
    pub fn new(encoder_tile: usize, decoder_tile: usize) -> VaeTiling {
        VaeTiling {
            encoder_tile: encoder_tile.div_ceil(8).max(1) * 8,
            encoder_pad: 32,
            decoder_tile: decoder_tile.max(1),
            decoder_pad: 11,
        }
    }

    /// These tiles halved `times` times (encoder tiles down to 64 pixels, decoder tiles down to
    /// 8 latents): what a decode that ran out of GPU memory tries next (`stage.rs`).
    pub fn halved(&self, times: u32) -> VaeTiling {
        VaeTiling {
            encoder_tile: ((self.encoder_tile >> times) / 8 * 8)
                .max(64)
                .min(self.encoder_tile),
            decoder_tile: (self.decoder_tile >> times).max(8).min(self.decoder_tile),
            ..*self
        }
    }

    /// How many halvings still make the tiles smaller.
    pub fn halvings(&self) -> u32 {
        (1..16)
            .take_while(|&k| self.halved(k) != self.halved(k - 1))
            .count() as u32
    }
}

/// One tile along one axis: the part it is responsible for and the part it is computed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub core: Range<usize>,
    pub input: Range<usize>,
}

/// Whether `len` needs tiles of `tile` with `pad` context (else one pass covers it).
fn must_tile(len: usize, tile: usize, pad: usize) -> bool {
    len > tile + 2 * pad
}

/// The fewest tiles covering `len`, cores multiples of `align` and evenly spread, each computed
/// on itself plus `pad` context clamped to the image, with no tile computing on more than
/// `tile + 2·pad`: the bound is on what one call holds, so the cores of edge tiles (context on
/// one side only) may be larger than interior ones — two tiles cover up to `2·(tile + pad)`.
pub fn split(len: usize, tile: usize, pad: usize, align: usize) -> Vec<Span> {
    let limit = tile + 2 * pad;
    if !must_tile(len, tile, pad) {
        return vec![Span {
            core: 0..len,
            input: 0..len,
        }];
    }
    let blocks = (len / align).max(1);
    let spans = |n: usize| -> Vec<Span> {
        let bounds: Vec<usize> = (0..=n).map(|i| (i * blocks).div_ceil(n) * align).collect();
        bounds
            .windows(2)
            .map(|b| Span {
                core: b[0]..b[1],
                input: b[0].saturating_sub(pad)..(b[1] + pad).min(len),
            })
            .collect()
    };
    (len.div_ceil(limit).max(2)..=blocks)
        .map(spans)
        .find(|s| s.iter().all(|sp| sp.input.len() <= limit))
        .unwrap_or_else(|| spans(blocks))
}

/// Network calls an encode of an `h`×`w` image makes (statistics pass included).
pub fn encode_calls(h: usize, w: usize, t: &VaeTiling) -> usize {
    calls(h, w, t.encoder_tile, t.encoder_pad, 8)
}

/// Network calls a decode of an `h`×`w` latent makes.
pub fn decode_calls(h: usize, w: usize, t: &VaeTiling) -> usize {
    calls(h, w, t.decoder_tile, t.decoder_pad, 1)
}

/// Whether the encode or the decode of a `width`×`height` canvas goes in tiles.
pub fn tiles(width: usize, height: usize, t: &VaeTiling) -> bool {
    encode_calls(height, width, t) > 1 || decode_calls(height / 8, width / 8, t) > 1
}

fn calls(h: usize, w: usize, tile: usize, pad: usize, align: usize) -> usize {
    if !must_tile(h, tile, pad) && !must_tile(w, tile, pad) {
        1
    } else {
        1 + split(h, tile, pad, align).len() * split(w, tile, pad, align).len()
    }
}

/// The longest side of the statistics pass's proxy, in pixels (encoder) and latents (decoder).
/// The statistics graphs keep more of their activations alive than the plain ones (measured: a
/// decoder proxy of 48 latents took 1.4 GiB above the weights, about three times a frozen tile
/// of the same size), so their input stays small; 256 pixels a side already give every
/// GroupNorm over a hundred thousand samples.
const ENCODER_PROXY: usize = 384;
const DECODER_PROXY: usize = 32;

/// `x` (`[1, C, H, W]`) shrunk with nearest-exact sampling so that its longer side is at most
/// `max_side`, sides multiples of `align`, then matched per channel to `x`'s mean and
/// standard deviation.
pub fn proxy(x: ArrayView4<f32>, max_side: usize, align: usize) -> Array4<f32> {
    let (_, c, h, w) = x.dim();
    let k = (max_side as f64 / h.max(w) as f64).min(1.0);
    let side = |v: usize| {
        (((v as f64 * k) as usize) / align * align)
            .max(align)
            .min(v)
    };
    let (ph, pw) = (side(h), side(w));
    let index = |dst: usize, from: usize, to: usize| {
        ((((dst as f64 + 0.5) * from as f64 / to as f64) as usize).min(from - 1)) as isize
    };
    let rows: Vec<isize> = (0..ph).map(|y| index(y, h, ph)).collect();
    let cols: Vec<isize> = (0..pw).map(|x| index(x, w, pw)).collect();
    let mut out = Array4::<f32>::zeros((1, c, ph, pw));
    for ch in 0..c {
        let plane = x.slice(s![0, ch, .., ..]);
        let mut small = out.slice_mut(s![0, ch, .., ..]);
        for (y, &sy) in rows.iter().enumerate() {
            for (xx, &sx) in cols.iter().enumerate() {
                small[[y, xx]] = plane[[sy as usize, sx as usize]];
            }
        }
        let (m_full, s_full) = moments(plane.iter());
        let (m_small, s_small) = moments(small.iter());
        let gain = if s_small > 0.0 { s_full / s_small } else { 1.0 };
        small.mapv_inplace(|v| ((f64::from(v) - m_small) * gain + m_full) as f32);
    }
    out
}

fn moments<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values.map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Encodes `image` (`[1, 3, H, W]`, −1..1, H and W multiples of 8) to the posterior's
/// (mean, log-variance), whole or in tiles; `on_call` follows every network call.
pub fn encode(
    vae: &mut dyn Vae,
    image: ArrayView4<f32>,
    tiling: &VaeTiling,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let (_, _, h, w) = image.dim();
    let total = encode_calls(h, w, tiling);
    if total == 1 {
        let out = vae.encode(image, Norms::Own)?;
        on_call(1, 1)?;
        return Ok(out);
    }
    vae.begin_tiles(false);
    let tiled = encode_tiles(vae, image, tiling, total, on_call);
    vae.end_tiles();
    tiled
}

fn encode_tiles(
    vae: &mut dyn Vae,
    image: ArrayView4<f32>,
    tiling: &VaeTiling,
    total: usize,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let (_, _, h, w) = image.dim();
    let (tile, pad) = (tiling.encoder_tile, tiling.encoder_pad);
    let stats = vae.encoder_stats(proxy(image, (tile + 2 * pad).min(ENCODER_PROXY), 8).view())?;
    on_call(1, total)?;
    let (rows, cols) = (split(h, tile, pad, 8), split(w, tile, pad, 8));
    let mut mean = Array4::<f32>::zeros((1, 4, h / 8, w / 8));
    let mut logvar = mean.clone();
    let mut done = 1;
    for r in &rows {
        for c in &cols {
            let crop = image.slice(s![.., .., r.input.clone(), c.input.clone()]);
            let (m, l) = vae.encode(crop, Norms::Frozen(&stats))?;
            let (y0, x0) = (
                (r.core.start - r.input.start) / 8,
                (c.core.start - c.input.start) / 8,
            );
            let (ch, cw) = (r.core.len() / 8, c.core.len() / 8);
            let (ty, tx) = (r.core.start / 8, c.core.start / 8);
            for (dst, src) in [(&mut mean, &m), (&mut logvar, &l)] {
                check_channels(src, dst.shape()[1])?;
                dst.slice_mut(s![.., .., ty..ty + ch, tx..tx + cw])
                    .assign(&src.slice(s![.., .., y0..y0 + ch, x0..x0 + cw]));
            }
            done += 1;
            on_call(done, total)?;
        }
    }
    Ok((mean, logvar))
}

/// Decodes `latent` (`[1, 4, h, w]`, unscaled) to `[1, 3, 8h, 8w]`, whole or in tiles.
pub fn decode(
    vae: &mut dyn Vae,
    latent: ArrayView4<f32>,
    tiling: &VaeTiling,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let (_, _, h, w) = latent.dim();
    let total = decode_calls(h, w, tiling);
    if total == 1 {
        let out = vae.decode(latent, Norms::Own)?;
        on_call(1, 1)?;
        return Ok(out);
    }
    vae.begin_tiles(true);
    let tiled = decode_tiles(vae, latent, tiling, total, on_call);
    vae.end_tiles();
    tiled
}

fn decode_tiles(
    vae: &mut dyn Vae,
    latent: ArrayView4<f32>,
    tiling: &VaeTiling,
    total: usize,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<Array4<f32>> {
    let (_, _, h, w) = latent.dim();
    let (tile, pad) = (tiling.decoder_tile, tiling.decoder_pad);
    let stats = vae.decoder_stats(proxy(latent, (tile + 2 * pad).min(DECODER_PROXY), 1).view())?;
    on_call(1, total)?;
    let (rows, cols) = (split(h, tile, pad, 1), split(w, tile, pad, 1));
    let mut image = Array4::<f32>::zeros((1, 3, h * 8, w * 8));
    let mut done = 1;
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
        Err(super::nets::StageError::Unexpected(format!(
            "the VAE returned {} channels where {channels} were expected",
            x.len_of(Axis(1))
        )))
    }
}

#[cfg(test)]
mod tests;
