//! Splitting an image into overlapping tiles and blending the upscaled tiles back together.
//!
//! Tiles are placed like A1111's `split_grid`: as few as needed for the requested overlap,
//! spread evenly, the last one flush with the edge. Where two tiles overlap, the seam is a
//! linear ramp at most [`BLEND`] input pixels wide in the *middle* of the overlap; the rest of
//! the overlap on each side is context that the network sees but whose output is discarded.
//! With A1111's default overlap of 8 the ramp spans the whole overlap, as in A1111. With an
//! overlap of `2·R + BLEND`, where R is the network's receptive-field radius, every output
//! pixel that is used was computed with its full receptive field inside the tile, so the tiled
//! result equals the whole-image result (up to float rounding).

/// Width of the seam ramp, in input pixels.
pub const BLEND: usize = 8;

/// How tiles are laid out along an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The fewest tiles of at most `tile` pixels that overlap by at least `overlap`, all of
    /// one size, just large enough to cover the image: an image up to `tile` is one tile.
    Fewest,
    /// A1111's `split_grid`, which Clarity uses: tiles of exactly `tile` pixels, as few as
    /// needed for the overlap, spread evenly (so neighbours often overlap by much more).
    A1111,
}

/// Tile size and overlap, in input pixels, and the placement rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
    pub placement: Placement,
}

impl Tiling {
    /// A1111's placement with this tile and overlap.
    pub const fn a1111(tile: usize, overlap: usize) -> Tiling {
        Tiling {
            tile,
            overlap,
            placement: Placement::A1111,
        }
    }

    /// The fewest tiles of at most `tile` pixels overlapping by `overlap`.
    pub const fn fewest(tile: usize, overlap: usize) -> Tiling {
        Tiling {
            tile,
            overlap,
            placement: Placement::Fewest,
        }
    }

    /// A1111's `ESRGAN_tile` / `ESRGAN_tile_overlap` defaults (192 / 8), which Clarity uses.
    pub const CLARITY: Tiling = Tiling::a1111(192, 8);
    /// The daemon's default: one tile up to 320 pixels a side (a 4× RRDBNet 64/23 computes
    /// a 320² tile in about 1 GB of activations), larger images in the fewest tiles of at
    /// most that, 32 pixels of overlap (12 of context each side of an 8-pixel seam ramp).
    pub const DEFAULT: Tiling = Tiling::fewest(320, 32);
}

impl Default for Tiling {
    fn default() -> Tiling {
        Tiling::DEFAULT
    }
}

/// A tile along one axis: where it starts and how long it is (input pixels), and the blend
/// weight of each of its output pixels (`len · scale` of them).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    pub weights: Vec<f32>,
}

/// Tiles along one axis of `size` input pixels (a multiple of `align`), upscaled by `scale`.
///
/// Tile starts and lengths are multiples of `align` (a pixel-unshuffle network needs whole
/// blocks, and aligned tiles see the same blocks as the whole image). The weights of all tiles
/// sum to one at every output pixel.
pub fn plan_axis(size: usize, tiling: Tiling, align: usize, scale: usize) -> Vec<Span> {
    let align = align.max(1);
    debug_assert_eq!(
        size % align,
        0,
        "pad the image to a multiple of the alignment first"
    );
    let max_tile = (tiling.tile / align * align).max(align).min(size);
    let overlap = tiling.overlap.min(max_tile.saturating_sub(align));
    let (tile, starts) = match tiling.placement {
        Placement::A1111 => (max_tile, place(size, max_tile, overlap, align)),
        Placement::Fewest => place_fewest(size, max_tile, overlap, align),
    };
    // Seam ramp width: bounded by the overlaps and the spacing so ramps never overlap.
    let mut ramp = BLEND as f64;
    for w in starts.windows(2) {
        ramp = ramp
            .min((w[0] + tile - w[1]) as f64)
            .min((w[1] - w[0]) as f64);
    }
    // Seam i sits between tile i and i+1, centred in their overlap.
    let seams: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] + w[0] + tile) as f64 / 2.0)
        .collect();
    let rising = |seam: f64, x: usize| -> f32 {
        let pos = (x as f64 + 0.5) / scale as f64;
        ((pos - (seam - ramp / 2.0)) / ramp).clamp(0.0, 1.0) as f32
    };
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let weights = (start * scale..(start + tile) * scale)
                .map(|x| {
                    let up = if i > 0 { rising(seams[i - 1], x) } else { 1.0 };
                    let down = if i + 1 < starts.len() {
                        1.0 - rising(seams[i], x)
                    } else {
                        1.0
                    };
                    up * down
                })
                .collect();
            Span {
                start,
                len: tile,
                weights,
            }
        })
        .collect()
}

/// The fewest tiles of at most `max_tile` whose neighbours overlap by at least `overlap`,
/// shrunk to the smallest common length (a multiple of `align`) that still covers `size`:
/// (that length, the starts).
fn place_fewest(size: usize, max_tile: usize, overlap: usize, align: usize) -> (usize, Vec<usize>) {
    if size <= max_tile {
        return (size, vec![0]);
    }
    let n = (size - overlap).div_ceil(max_tile - overlap).max(2);
    let mut tile = (size + (n - 1) * overlap).div_ceil(n).div_ceil(align) * align;
    loop {
        let starts = place_n(size, tile.min(size), n, align);
        if tile >= max_tile || starts.windows(2).all(|w| w[0] + tile >= w[1] + overlap) {
            return (tile.min(size), starts);
        }
        tile += align; // rounding the starts to `align` cost some overlap
    }
}

/// `n` starts of `tile`-long tiles spread evenly over `size`, the last flush with the end.
fn place_n(size: usize, tile: usize, n: usize, align: usize) -> Vec<usize> {
    let room = size - tile;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                room
            } else {
                (i * room / (n - 1)) / align * align
            }
        })
        .collect()
}

/// Tile starts: the fewest tiles whose neighbours overlap by at least `overlap`.
fn place(size: usize, tile: usize, overlap: usize, align: usize) -> Vec<usize> {
    if size <= tile {
        return vec![0];
    }
    let step = tile - overlap; // > 0: overlap < tile
    let mut n = (size - overlap).div_ceil(step).max(2);
    loop {
        let starts = place_n(size, tile, n, align);
        if starts.windows(2).all(|w| w[0] + tile >= w[1] + overlap) {
            return starts;
        }
        n += 1; // rounding to `align` shrank an overlap; spread one more tile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(spans: &[Span], size: usize, scale: usize) -> Vec<f32> {
        let mut sum = vec![0.0f32; size * scale];
        for s in spans {
            for (i, w) in s.weights.iter().enumerate() {
                sum[s.start * scale + i] += w;
            }
        }
        sum
    }

    #[test]
    fn small_images_are_one_tile() {
        let spans = plan_axis(50, Tiling::CLARITY, 1, 4);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].len), (0, 50));
        assert!(spans[0].weights.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn a1111_grid_for_the_defaults() {
        // W = 500: cols = ceil((500 − 8) / 184) = 3, starts 0, 154, 308.
        let spans = plan_axis(500, Tiling::CLARITY, 1, 4);
        let starts: Vec<usize> = spans.iter().map(|s| s.start).collect();
        assert_eq!(starts, [0, 154, 308]);
        for w in coverage(&spans, 500, 4) {
            assert!((w - 1.0).abs() < 1e-6, "weights sum to one, got {w}");
        }
    }

    #[test]
    fn weights_partition_unity_and_respect_context() {
        for (size, tile, overlap, align) in [
            (137, 40, 30, 1),
            (200, 64, 8, 4),
            (122, 24, 20, 2),
            (33, 16, 15, 1),
        ] {
            let tiling = Tiling::a1111(tile, overlap);
            let spans = plan_axis(size, tiling, align, 2);
            for s in &spans {
                assert_eq!(s.start % align, 0);
                assert!(s.start + s.len <= size);
            }
            for w in coverage(&spans, size, 2) {
                assert!((w - 1.0).abs() < 1e-6, "{size}/{tile}/{overlap}: sum {w}");
            }
            // Output used from a tile keeps (overlap − BLEND)/2 input pixels of context from
            // every inner edge.
            let context = overlap.saturating_sub(BLEND) / 2;
            for (i, s) in spans.iter().enumerate() {
                for (x, &w) in s.weights.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    let pos = x / 2;
                    if i > 0 {
                        assert!(
                            pos >= context,
                            "{size}/{tile}/{overlap}: tile {i} uses x={pos}"
                        );
                    }
                    if i + 1 < spans.len() {
                        assert!(s.len - 1 - pos >= context);
                    }
                }
            }
        }
    }

    #[test]
    fn the_fewest_tiles_cover_the_image_with_the_overlap() {
        // 256 fits one tile; 512 takes 2 tiles of 272 (overlap 32) instead of A1111's 3 of 192.
        assert_eq!(plan_axis(256, Tiling::DEFAULT, 1, 4).len(), 1);
        let spans = plan_axis(512, Tiling::DEFAULT, 1, 4);
        let layout: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.len)).collect();
        assert_eq!(layout, [(0, 272), (240, 272)]);
        assert_eq!(plan_axis(512, Tiling::CLARITY, 1, 4).len(), 3);
        for (size, tile, overlap, align) in [(1000, 320, 32, 1), (332, 100, 30, 4), (96, 40, 20, 2)]
        {
            let tiling = Tiling::fewest(tile, overlap);
            let spans = plan_axis(size, tiling, align, 2);
            let n = (size - overlap).div_ceil(tile - overlap);
            assert_eq!(spans.len(), n, "{size}/{tile}/{overlap}");
            for w in spans.windows(2) {
                assert!(w[0].start + w[0].len >= w[1].start + overlap);
                assert_eq!(w[1].start % align, 0);
            }
            assert!(spans.iter().all(|s| s.len <= tile && s.len == spans[0].len));
            assert_eq!(spans.last().map(|s| s.start + s.len), Some(size));
            for w in coverage(&spans, size, 2) {
                assert!((w - 1.0).abs() < 1e-6, "{size}/{tile}/{overlap}: sum {w}");
            }
        }
    }

    #[test]
    fn overlap_larger_than_the_tile_still_progresses() {
        let spans = plan_axis(100, Tiling::a1111(10, 50), 1, 1);
        assert!(spans.len() >= 10);
        assert_eq!(spans.last().unwrap().start + 10, 100);
    }
}
