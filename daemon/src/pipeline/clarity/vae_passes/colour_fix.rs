//! Tiled VAE's encoder colour fix ("Fast Encoder Color Fix", which Clarity turns on): the
//! GroupNorms before the encoder's first downsample take the statistics of the downscaled
//! proxy; every later GroupNorm waits for all tiles to reach it and normalises each of them by
//! the average of their statistics, each tile weighted by its pixel count at that layer
//! (Tiled VAE's `GroupNormParam.summary`: means and variances are averaged alike, the spread
//! between the tiles' means is not added).
//!
//! The encoder is cut at those GroupNorms (`Vae::encoder_segment`, `nets::vae::segments`), so
//! the tiles run through it segment by segment, all tiles' state held between two segments.

use ndarray::{Array4, ArrayView4, s};

use super::{Span, TiledPass, place_latent, proxy, tile_grid};
use crate::Cancelled;
use crate::pipeline::clarity::network_traits::{
    Carried, GroupNormStats, GroupStats, NetResult, Segmented, StageError, Vae,
};

/// Encodes `image` in the tiles of `pass`, colour-fixed.
pub fn encode(
    vae: &mut dyn Vae,
    image: ArrayView4<f32>,
    pass: &TiledPass,
    on_call: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let (_, _, h, w) = image.dim();
    let (rows, cols) = tile_grid(h, w, pass, 8);
    let tiles: Vec<(&Span, &Span)> = rows
        .iter()
        .flat_map(|r| cols.iter().map(move |c| (r, c)))
        .collect();
    let segments = vae.encoder_segments()?;
    let total = 1 + tiles.len() * segments;
    let head = vae.encoder_head_stats(proxy(image, pass.proxy).view())?;
    on_call(1, total)?;
    let mut done = 1;

    let mut states: Vec<Carried> = Vec::with_capacity(tiles.len());
    let mut seen: Vec<(GroupStats, usize)> = Vec::with_capacity(tiles.len());
    for (r, c) in &tiles {
        let crop = image
            .slice(s![.., .., r.input.clone(), c.input.clone()])
            .to_owned();
        let input = Carried {
            x: crop,
            skip: None,
        };
        let (state, stats) = expect_state(vae.encoder_segment(0, input, &head)?)?;
        seen.push((stats, pixels(&state.x)));
        states.push(state);
        done += 1;
        on_call(done, total)?;
    }

    let mut mean = Array4::<f32>::zeros((1, 4, h / 8, w / 8));
    let mut logvar = mean.clone();
    for index in 1..segments {
        let shared = GroupNormStats {
            layers: vec![weighted_average(&seen)],
        };
        seen.clear();
        for (state, (r, c)) in std::mem::take(&mut states).into_iter().zip(&tiles) {
            match vae.encoder_segment(index, state, &shared)? {
                Segmented::State(next, stats) => {
                    seen.push((stats, pixels(&next.x)));
                    states.push(next);
                }
                Segmented::Posterior(m, l) => {
                    place_latent(&mut mean, &m, r, c)?;
                    place_latent(&mut logvar, &l, r, c)?;
                }
            }
            done += 1;
            on_call(done, total)?;
        }
    }
    if !states.is_empty() {
        return Err(StageError::Unexpected(
            "the encoder's last segment gave no posterior".into(),
        ));
    }
    Ok((mean, logvar))
}

fn expect_state(out: Segmented) -> NetResult<(Carried, GroupStats)> {
    match out {
        Segmented::State(state, stats) => Ok((state, stats)),
        Segmented::Posterior(..) => Err(StageError::Unexpected(
            "the encoder's head gave a posterior".into(),
        )),
    }
}

/// Positions of a `[1, C, H, W]` tile at the layer it has reached.
fn pixels(x: &Array4<f32>) -> usize {
    x.shape()[2] * x.shape()[3]
}

/// The tiles' statistics averaged with weights proportional to their pixel counts.
pub fn weighted_average(tiles: &[(GroupStats, usize)]) -> GroupStats {
    let total: f64 = tiles.iter().map(|(_, n)| *n as f64).sum();
    let groups = tiles.first().map_or(0, |(s, _)| s.mean.len());
    let average = |pick: fn(&GroupStats) -> &Vec<f32>| -> Vec<f32> {
        (0..groups)
            .map(|g| {
                let sum: f64 = tiles
                    .iter()
                    .map(|(s, n)| f64::from(pick(s)[g]) * *n as f64)
                    .sum();
                (sum / total) as f32
            })
            .collect()
    };
    GroupStats {
        mean: average(|s| &s.mean),
        var: average(|s| &s.var),
    }
}
