//! MultiDiffusion tile grids over the latent, in latent units: Clarity's (the Tiled Diffusion
//! extension's `split_bboxes`, multidiffusion-upscaler-for-automatic1111) and Refiners'
//! (`MultiDiffusion.generate_latent_tiles`), and how tiles are grouped into batches for one
//! network call. `docs/pipeline.md`, "MultiDiffusion", states both grids.

use std::ops::Range;

/// A tile of the latent: origin and size, in latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatentTile {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

impl LatentTile {
    pub fn whole(w: usize, h: usize) -> LatentTile {
        LatentTile { x: 0, y: 0, w, h }
    }
}

/// Tiled Diffusion's minimum overlap, in latents.
pub const CLARITY_OVERLAP: usize = 4;
/// Refiners' minimum overlap, in latents.
pub const REFINERS_OVERLAP: usize = 8;
/// Tiled Diffusion's tile batch size.
pub const CLARITY_BATCH: usize = 8;

/// Clarity's grid for a `w`×`h` latent and a `tile_w`×`tile_h` tile, rows first.
///
/// No tiling unless the unclamped tile needs more than one column or row; else the tile is
/// clamped to the latent per axis, the fewest tiles with the overlap are spread evenly at
/// float spacing and truncated to integers, the last one flush with the edge.
pub fn clarity_grid(w: usize, h: usize, tile_w: usize, tile_h: usize) -> Vec<LatentTile> {
    let overlap = CLARITY_OVERLAP.min(tile_w.min(tile_h).saturating_sub(4));
    let count = |len: usize, tile: usize| {
        if tile <= overlap {
            return 1;
        }
        len.saturating_sub(overlap).div_ceil(tile - overlap).max(1)
    };
    if count(w, tile_w) <= 1 && count(h, tile_h) <= 1 {
        return vec![LatentTile::whole(w, h)];
    }
    let (tw, th) = (tile_w.min(w), tile_h.min(h));
    let axis = |len: usize, tile: usize| -> Vec<usize> {
        let n = count(len, tile);
        let step = if n > 1 {
            (len - tile) as f64 / (n - 1) as f64
        } else {
            0.0
        };
        (0..n)
            .map(|i| ((i as f64 * step) as usize).min(len - tile))
            .collect()
    };
    let (xs, ys) = (axis(w, tw), axis(h, th));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| LatentTile { x, y, w: tw, h: th }))
        .collect()
}

/// Refiners' grid: one whole-latent tile as soon as either tile side exceeds the latent;
/// else per axis n = ⌈(L − T)/(T − 8)⌉ + 1 tiles with overlap ⌊(n·T − L)/(n − 1)⌋.
pub fn refiners_grid(w: usize, h: usize, tile_w: usize, tile_h: usize) -> Vec<LatentTile> {
    if tile_w > w || tile_h > h {
        return vec![LatentTile::whole(w, h)];
    }
    let axis = |len: usize, tile: usize| -> Vec<usize> {
        if tile >= len {
            return vec![0];
        }
        let stride = tile.saturating_sub(REFINERS_OVERLAP).max(1);
        let n = (len - tile).div_ceil(stride) + 1;
        let overlap = (n * tile - len) / (n - 1);
        (0..n)
            .map(|j| (j * (tile - overlap)).min(len - tile))
            .collect()
    };
    let (xs, ys) = (axis(w, tile_w), axis(h, tile_h));
    ys.iter()
        .flat_map(|&y| {
            xs.iter().map(move |&x| LatentTile {
                x,
                y,
                w: tile_w,
                h: tile_h,
            })
        })
        .collect()
}

/// Tiled Diffusion's batching of `n` tiles with at most `max` per call: as few batches as
/// possible, of equal size but the last.
pub fn batches(n: usize, max: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(max.max(1));
    let size = n.div_ceil(count);
    (0..count)
        .map(|i| i * size..((i + 1) * size).min(n))
        .filter(|r| !r.is_empty())
        .collect()
}

/// How many tiles cover each latent position (for the MultiDiffusion average).
pub fn coverage(tiles: &[LatentTile], w: usize, h: usize) -> Vec<u32> {
    let mut count = vec![0u32; w * h];
    for t in tiles {
        for y in t.y..t.y + t.h {
            for c in &mut count[y * w + t.x..y * w + t.x + t.w] {
                *c += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(tiles: &[LatentTile]) -> (Vec<usize>, Vec<usize>) {
        let mut xs: Vec<usize> = tiles.iter().map(|t| t.x).collect();
        let mut ys: Vec<usize> = tiles.iter().map(|t| t.y).collect();
        xs.sort_unstable();
        xs.dedup();
        ys.sort_unstable();
        ys.dedup();
        (xs, ys)
    }

    #[test]
    fn clarity_examples_of_section_2_8() {
        // 768×512 → 1536×1024 px, latent 192×128: tiles 112×128 at x 0, 80.
        let t = clarity_grid(192, 128, 112, 144);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].w, t[0].h), (112, 128));
        assert_eq!(origins(&t), (vec![0, 80], vec![0]));
        // 1024×1024 → latent 256×256: x 0, 72, 144; y 0, 112.
        let t = clarity_grid(256, 256, 112, 144);
        assert_eq!(t.len(), 6);
        assert_eq!(origins(&t), (vec![0, 72, 144], vec![0, 112]));
        // 1024×768 → latent 256×192: x 0, 72, 144; y 0, 48.
        let t = clarity_grid(256, 192, 112, 144);
        assert_eq!(origins(&t), (vec![0, 72, 144], vec![0, 48]));
        // 2048×1536 → latent 512×384: 15 tiles.
        let t = clarity_grid(512, 384, 112, 144);
        assert_eq!(t.len(), 15);
        assert_eq!(
            origins(&t),
            (vec![0, 100, 200, 300, 400], vec![0, 120, 240])
        );
        // Rows first.
        assert_eq!((t[1].x, t[1].y), (100, 0));
    }

    #[test]
    fn clarity_does_not_tile_what_one_tile_covers() {
        assert_eq!(clarity_grid(64, 64, 112, 144), [LatentTile::whole(64, 64)]);
        assert_eq!(
            clarity_grid(112, 144, 112, 144),
            [LatentTile::whole(112, 144)]
        );
        // One latent more than the tile needs a second column.
        assert_eq!(clarity_grid(113, 100, 112, 144).len(), 2);
        assert_eq!(clarity_grid(112, 145, 112, 144).len(), 2);
    }

    #[test]
    fn refiners_examples_of_section_3_2() {
        // 768×512 ×2: one 192×128 tile (Clarity uses two).
        assert_eq!(
            refiners_grid(192, 128, 112, 144),
            [LatentTile::whole(192, 128)]
        );
        // 512×512 ×2: one tile.
        assert_eq!(refiners_grid(128, 128, 112, 144).len(), 1);
        // 1024×1024 ×2: the same 6 tiles as Clarity.
        let t = refiners_grid(256, 256, 112, 144);
        assert_eq!(origins(&t), (vec![0, 72, 144], vec![0, 112]));
        // 2048×1536 ×2 (latent 512×384): n = ⌈400/104⌉ + 1 = 5, overlap ⌊48/4⌋ = 12, step 100;
        // rows ⌈240/136⌉ + 1 = 3, overlap ⌊48/2⌋ = 24, step 120.
        let t = refiners_grid(512, 384, 112, 144);
        assert_eq!(
            origins(&t),
            (vec![0, 100, 200, 300, 400], vec![0, 120, 240])
        );
        // Where they differ: latent 300×200 → Clarity x 0, 94, 188; Refiners overlap ⌊36/2⌋
        // = 18, x 0, 94, 188 too; y: Clarity 0, 56; Refiners ⌊88/1⌋ = 88 → 0, 56.
        let c = clarity_grid(300, 200, 112, 144);
        let r = refiners_grid(300, 200, 112, 144);
        assert_eq!(origins(&c), origins(&r));
        // …but latent 240×150: Clarity ⌈236/108⌉ = 3 columns at 0, 64, 128; Refiners
        // ⌈128/104⌉ + 1 = 3 columns, overlap ⌊96/2⌋ = 48, at 0, 64, 128; rows: Clarity
        // ⌈146/140⌉ = 2 at 0, 6; Refiners ⌈6/136⌉ + 1 = 2 at 0, 6.
        let c = clarity_grid(240, 150, 112, 144);
        let r = refiners_grid(240, 150, 112, 144);
        assert_eq!(origins(&c), (vec![0, 64, 128], vec![0, 6]));
        assert_eq!(origins(&r), (vec![0, 64, 128], vec![0, 6]));
        // Small tiles expose the different rounding: latent 100, tile 32. Clarity: 4 tiles at
        // float spacing 22.67; Refiners: 4 tiles, integer overlap ⌊28/3⌋ = 9, step 23.
        let c = clarity_grid(100, 32, 32, 32);
        let r = refiners_grid(100, 32, 32, 32);
        assert_eq!(origins(&c).0, [0, 22, 45, 68]);
        assert_eq!(origins(&r).0, [0, 23, 46, 68]);
    }

    #[test]
    fn every_latent_is_covered_and_tiles_stay_inside() {
        for (w, h, tw, th) in [(250, 130, 112, 144), (97, 301, 16, 32), (512, 512, 64, 64)] {
            for tiles in [clarity_grid(w, h, tw, th), refiners_grid(w, h, tw, th)] {
                assert!(coverage(&tiles, w, h).iter().all(|&c| c > 0));
                for t in &tiles {
                    assert!(t.x + t.w <= w && t.y + t.h <= h);
                }
            }
        }
    }

    #[test]
    fn batches_are_as_even_as_tiled_diffusion_makes_them() {
        assert_eq!(batches(15, 8), [0..8, 8..15]);
        assert_eq!(batches(6, 8), vec![0..6]);
        assert_eq!(batches(17, 8), [0..6, 6..12, 12..17]);
        assert_eq!(batches(5, 1), [0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(batches(0, 8).is_empty());
    }
}
