//! Where a tiled VAE pass cuts an axis: Tiled VAE's grid (Clarity's) and the memory-bounded
//! grid of a CPU. Both give each tile a core it is responsible for and the context it is
//! computed with; the result keeps each tile's core (hard seams, no blending).

use std::ops::Range;

/// One tile along one axis: the part it is responsible for and the part it is computed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub core: Range<usize>,
    pub input: Range<usize>,
}

/// Which grid a tiled pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// Tiled VAE's `split_tiles` (see [`clarity_split`]).
    Clarity,
    /// The fewest tiles that keep every call within `tile + 2·pad` (see [`bounded_split`]).
    Bounded,
}

impl Grid {
    pub fn split(self, len: usize, tile: usize, pad: usize, align: usize) -> Vec<Span> {
        match self {
            Grid::Clarity => clarity_split(len, tile, pad, align),
            Grid::Bounded => bounded_split(len, tile, pad, align),
        }
    }
}

/// Whether `len` needs tiles of `tile` with `pad` context (else one pass covers it).
pub fn must_tile(len: usize, tile: usize, pad: usize) -> bool {
    len > tile + 2 * pad
}

fn whole(len: usize) -> Vec<Span> {
    vec![Span {
        core: 0..len,
        input: 0..len,
    }]
}

/// Tiled VAE's grid along one axis (`VAEHook.split_tiles`): n = ⌈(len − 2·pad)/tile⌉ tiles of
/// ⌈(len − 2·pad)/n⌉, that size rounded up to a multiple of 32, 16, 8, 4 or 2 where the result
/// still fits `tile`; tile i's core starts at pad + i·size, the first and last cores reach the
/// edges, each tile is computed with `pad` more on both sides (clamped to the image). `align`
/// (8 for an image that is encoded) must divide the cores, which it does for the tile sizes
/// Clarity uses; else the boundaries are rounded down to it.
pub fn clarity_split(len: usize, tile: usize, pad: usize, align: usize) -> Vec<Span> {
    let inner = len.saturating_sub(2 * pad);
    let n = inner.div_ceil(tile.max(1)).max(1);
    if n == 1 {
        return whole(len);
    }
    let size = best_tile_size(inner.div_ceil(n), tile);
    let boundary = |i: usize| -> usize {
        let b = pad + i * size;
        if i == 0 || b >= len.saturating_sub(pad) {
            // The first core starts at the edge; a core that reaches the last `pad` runs to it.
            if i == 0 { 0 } else { len }
        } else {
            b / align * align
        }
    };
    (0..n)
        .map(|i| {
            let core = boundary(i)..boundary(i + 1).max(boundary(i));
            let (lo, hi) = (pad + i * size, (pad + (i + 1) * size).min(len));
            Span {
                input: lo.saturating_sub(pad)..(hi + pad).min(len),
                core,
            }
        })
        .collect()
}

/// Tiled VAE's `get_best_tile_size`: `size` rounded up to a multiple of 32, else 16, 8, 4, 2,
/// as long as that stays within `limit`.
fn best_tile_size(size: usize, limit: usize) -> usize {
    let mut divider = 32;
    while divider >= 2 {
        let rest = size % divider;
        if rest == 0 {
            return size;
        }
        let candidate = size - rest + divider;
        if candidate <= limit {
            return candidate;
        }
        divider /= 2;
    }
    size
}

/// The fewest tiles covering `len`, cores multiples of `align` and evenly spread, each computed
/// on itself plus `pad` context clamped to the image, with no tile computing on more than
/// `tile + 2·pad`: the bound is on what one call holds, so the cores of edge tiles (context on
/// one side only) may be larger than interior ones — two tiles cover up to `2·(tile + pad)`.
pub fn bounded_split(len: usize, tile: usize, pad: usize, align: usize) -> Vec<Span> {
    let limit = tile + 2 * pad;
    if !must_tile(len, tile, pad) {
        return whole(len);
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
