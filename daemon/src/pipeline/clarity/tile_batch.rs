//! How many MultiDiffusion tiles go into one UNet + ControlNet call when the configuration
//! leaves it to the device (`diffusion.tile_batch` unset). The result never depends on it
//! (`denoise.rs`); speed and memory do.
//!
//! On the CPU one tile per call: the convolutions already fill every core at one tile, and
//! more tiles only add memory. On an accelerator several tiles per call keep it busy, as many
//! as its free memory holds (read through NVML for CUDA), up to [`GPU_MAX`]; where the free
//! memory cannot be read, [`GPU_UNKNOWN`].
//!
//! The memory a tile takes is an estimate on paper until a GPU run measures it: the UNet +
//! ControlNet activations of one CFG pair, about [`F16_BYTES_PER_LATENT`] per latent position
//! in fp16 (twice that in fp32), from the widest level's feature maps (320 channels at the
//! latent size, a few dozen alive at once through the skips) with fused attention (no
//! N × N scores); a margin is left for the VAE's tiles and the arena's rounding.

use crate::engine::ExecutionProvider;
use crate::engine::device_memory;
use crate::nets::Precision;

/// The most tiles per call on an accelerator.
pub const GPU_MAX: usize = 4;
/// Tiles per call on an accelerator whose free memory cannot be read.
pub const GPU_UNKNOWN: usize = 2;
/// Estimated activation bytes of one tile's CFG pair per latent position, fp16.
pub const F16_BYTES_PER_LATENT: u64 = 64 * 1024;
/// Left free for everything else a job does on the device.
const MARGIN: u64 = 1536 << 20;

/// The tiles per call: `configured` if set, else the device's choice for tiles of `tile`
/// (w, h) latents computed in `precision` on `providers` (best first).
pub fn resolve(
    configured: Option<usize>,
    providers: &[ExecutionProvider],
    precision: Precision,
    tile: (usize, usize),
) -> usize {
    if let Some(n) = configured {
        return n.max(1);
    }
    let Some(&first) = providers.first() else {
        return 1;
    };
    if first == ExecutionProvider::Cpu {
        return 1;
    }
    for_free_memory(device_memory::free_bytes(first), precision, tile)
}

/// The accelerator's choice given its free memory (`None`: unknown).
pub fn for_free_memory(free: Option<u64>, precision: Precision, tile: (usize, usize)) -> usize {
    let Some(free) = free else {
        return GPU_UNKNOWN;
    };
    let per_latent = match precision {
        Precision::F16 => F16_BYTES_PER_LATENT,
        Precision::F32 => 2 * F16_BYTES_PER_LATENT,
    };
    let per_tile = per_latent * (tile.0 * tile.1) as u64;
    let fits = free.saturating_sub(MARGIN) / per_tile.max(1);
    (fits as usize).clamp(1, GPU_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    /// Clarity's default tile, 112 × 144 latents.
    const TILE: (usize, usize) = (112, 144);

    #[test]
    fn the_cpu_runs_one_tile_per_call_and_a_setting_wins() {
        let cpu = [ExecutionProvider::Cpu];
        assert_eq!(resolve(None, &cpu, Precision::F32, TILE), 1);
        assert_eq!(resolve(Some(3), &cpu, Precision::F32, TILE), 3);
        let gpu = [
            ExecutionProvider::DirectMl { device_id: 0 },
            ExecutionProvider::Cpu,
        ];
        assert_eq!(resolve(Some(1), &gpu, Precision::F16, TILE), 1);
        // DirectML's free memory cannot be read.
        assert_eq!(resolve(None, &gpu, Precision::F16, TILE), GPU_UNKNOWN);
    }

    #[test]
    fn an_accelerator_takes_what_its_free_memory_holds() {
        // One fp16 tile pair at 112 × 144: about 1 GiB.
        let per_tile = F16_BYTES_PER_LATENT * 112 * 144;
        assert!((per_tile as f64 / GIB as f64 - 0.98).abs() < 0.01);
        assert_eq!(for_free_memory(None, Precision::F16, TILE), GPU_UNKNOWN);
        assert_eq!(for_free_memory(Some(GIB), Precision::F16, TILE), 1);
        // An 8 GB card with the fp16 model set loaded has about 4.5 GiB free.
        assert_eq!(for_free_memory(Some(9 * GIB / 2), Precision::F16, TILE), 3);
        assert_eq!(for_free_memory(Some(9 * GIB / 2), Precision::F32, TILE), 1);
        assert_eq!(
            for_free_memory(Some(70 * GIB), Precision::F16, TILE),
            GPU_MAX
        );
    }
}
