//! Which way each VAE pass of a stage runs: whole, in Clarity's tiles, or in the memory-bounded
//! tiles of a CPU. The choice is a function of explicit inputs ([`VaePolicy`]): the size, the
//! preset's rule, whether the job runs on an accelerator and the memory a pass may take.
//!
//! Clarity (Tiled VAE with encoder tile 2048, decoder tile 128, fast encoder and decoder,
//! encoder colour fix) encodes whole up to 2048 + 2·32 = 2112 pixels a side and decodes whole
//! up to 128 + 2·11 = 150 latents; above, it tiles, with statistics from a proxy whose longer
//! side is the tile size, the encoder's later GroupNorms from the tiles' averaged statistics.
//! On an accelerator that is what runs. On a CPU the same runs when its estimated memory
//! ([`estimate`]) fits the budget; else the pass falls back to the bounded tiles
//! (`diffusion.vae_encoder_tile` / `vae_decoder_tile`), which keep a 4096² output's memory in
//! check at the price of frozen statistics from a small proxy and no colour fix.

use super::split::Grid;

/// Clarity's Tiled VAE settings (`predict.py`: encoder tile 2048, decoder tile 128; the
/// extension's context: 32 pixels, 11 latents).
pub const CLARITY_ENCODER_TILE: usize = 2048;
pub const CLARITY_ENCODER_PAD: usize = 32;
pub const CLARITY_DECODER_TILE: usize = 128;
pub const CLARITY_DECODER_PAD: usize = 11;

/// The longest side of the bounded path's statistics proxy, in pixels (encoder) and latents
/// (decoder). The statistics graphs keep more of their activations alive than the plain ones
/// (measured: a decoder proxy of 48 latents took 1.4 GiB above the weights, about three times
/// a frozen tile of the same size), so their input stays small.
pub const BOUNDED_ENCODER_PROXY: usize = 384;
pub const BOUNDED_DECODER_PROXY: usize = 32;

/// The bounded path's tile sizes and context, per axis.
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
            encoder_pad: CLARITY_ENCODER_PAD,
            decoder_tile: decoder_tile.max(1),
            decoder_pad: CLARITY_DECODER_PAD,
        }
    }

    /// These tiles halved `times` times (encoder tiles down to 64 pixels, decoder tiles down to
    /// 8 latents): what a pass that ran out of GPU memory tries next (`stage.rs`).
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

/// A pass in tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledPass {
    pub grid: Grid,
    /// Tile core and context, in pixels (encoder) or latents (decoder).
    pub tile: usize,
    pub pad: usize,
    /// The longest side of the statistics proxy (Tiled VAE: the tile size).
    pub proxy: usize,
    /// Tiled VAE's encoder colour fix: only the GroupNorms before the first downsample take
    /// the proxy's statistics; the later ones the pixel-weighted average of the tiles' own.
    pub colour_fix: bool,
}

/// How one VAE pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaePass {
    /// One call on the whole input, every GroupNorm on its own statistics.
    Whole,
    Tiled(TiledPass),
}

/// Whose rule picks the passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeRule {
    /// Clarity's Tiled VAE where the device allows it (see the module docs).
    Clarity,
    /// The bounded tiles only (the Refiners preset, which has its own tiling that Tessera
    /// does not reproduce).
    Bounded,
}

/// Everything the choice of a pass depends on besides the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaePolicy {
    pub rule: VaeRule,
    /// The job runs on an accelerator: Clarity's rule holds whatever the memory estimate.
    pub accelerator: bool,
    /// Bytes of activations one VAE pass may take on a CPU (`diffusion.vae_memory_budget`).
    pub budget: u64,
    /// The bounded path's tiles.
    pub bounded: VaeTiling,
}

impl VaePolicy {
    /// The bounded tiles alone, whatever the memory (today's rule for the Refiners preset;
    /// also what tests of the bounded path use).
    pub fn bounded(tiling: VaeTiling) -> VaePolicy {
        VaePolicy {
            rule: VaeRule::Bounded,
            accelerator: false,
            budget: 0,
            bounded: tiling,
        }
    }

    /// How a `width`×`height` image is encoded.
    pub fn encoder(&self, width: usize, height: usize) -> VaePass {
        let long = width.max(height);
        let clarity = if long <= CLARITY_ENCODER_TILE + 2 * CLARITY_ENCODER_PAD {
            (VaePass::Whole, estimate::whole_encode(width, height))
        } else {
            let pass = TiledPass {
                grid: Grid::Clarity,
                tile: CLARITY_ENCODER_TILE,
                pad: CLARITY_ENCODER_PAD,
                proxy: CLARITY_ENCODER_TILE,
                colour_fix: true,
            };
            (
                VaePass::Tiled(pass),
                estimate::colour_fix_encode(width, height),
            )
        };
        let b = &self.bounded;
        let bounded = if long <= b.encoder_tile + 2 * b.encoder_pad {
            VaePass::Whole
        } else {
            VaePass::Tiled(TiledPass {
                grid: Grid::Bounded,
                tile: b.encoder_tile,
                pad: b.encoder_pad,
                proxy: (b.encoder_tile + 2 * b.encoder_pad).min(BOUNDED_ENCODER_PROXY),
                colour_fix: false,
            })
        };
        self.choose(clarity, bounded)
    }

    /// How a `width`×`height` latent is decoded.
    pub fn decoder(&self, width: usize, height: usize) -> VaePass {
        let long = width.max(height);
        let clarity = if long <= CLARITY_DECODER_TILE + 2 * CLARITY_DECODER_PAD {
            (VaePass::Whole, estimate::whole_decode(width, height))
        } else {
            let pass = TiledPass {
                grid: Grid::Clarity,
                tile: CLARITY_DECODER_TILE,
                pad: CLARITY_DECODER_PAD,
                proxy: CLARITY_DECODER_TILE,
                colour_fix: false,
            };
            (
                VaePass::Tiled(pass),
                estimate::clarity_decode(width, height),
            )
        };
        let b = &self.bounded;
        let bounded = if long <= b.decoder_tile + 2 * b.decoder_pad {
            VaePass::Whole
        } else {
            VaePass::Tiled(TiledPass {
                grid: Grid::Bounded,
                tile: b.decoder_tile,
                pad: b.decoder_pad,
                proxy: (b.decoder_tile + 2 * b.decoder_pad).min(BOUNDED_DECODER_PROXY),
                colour_fix: false,
            })
        };
        self.choose(clarity, bounded)
    }

    fn choose(&self, (clarity, bytes): (VaePass, u64), bounded: VaePass) -> VaePass {
        match self.rule {
            VaeRule::Bounded => bounded,
            VaeRule::Clarity if self.accelerator || bytes <= self.budget => clarity,
            // The bounded path is never larger than Clarity's: it is the fallback.
            VaeRule::Clarity => bounded,
        }
    }

    /// The policy after `level` out-of-memory retries of a pass: level 0 is this one; from
    /// level 1 on, the bounded tiles, halved `level − 1` times (a whole pass or Clarity's
    /// tiles that did not fit the accelerator's memory go to the smaller tiles first).
    pub fn shrunk(&self, level: u32) -> VaePolicy {
        if level == 0 {
            *self
        } else {
            VaePolicy::bounded(self.bounded.halved(level - 1))
        }
    }

    /// How many out-of-memory retries [`VaePolicy::shrunk`] can make smaller.
    pub fn shrink_levels(&self) -> u32 {
        1 + self.bounded.halvings()
    }

    /// Whether a `width`×`height` canvas goes in tiles (encode or decode): such a job is
    /// large, and sets aside what it is done with.
    pub fn tiles(&self, width: usize, height: usize) -> bool {
        self.encoder(width, height) != VaePass::Whole
            || self.decoder(width / 8, height / 8) != VaePass::Whole
    }
}

/// Estimated peak bytes of activations (beyond the weights) of each kind of VAE pass on ONNX
/// Runtime's CPU provider, with the arena a VAE session holds for each call
/// ([`crate::engine::CpuMemory::ArenaPerCall`]): linear in the pixels, from `tessera bench vae` on
/// SD 1.5's VAE (`bench/README.md`). The mid-block attention adds no visible quadratic term up to
/// 128² latents (ONNX Runtime's attention does not hold the score matrix).
pub mod estimate {
    /// Bytes per image pixel of a whole encode (measured 1998 at 1024²), and of a whole decode
    /// (measured 4226). The arena's blocks are reused within the call but not packed as tightly
    /// as the heap's (1568 and 3072 without it), for two thirds of the time.
    const ENCODE_PER_PIXEL: u64 = 2_050;
    const DECODE_PER_PIXEL: u64 = 4_300;
    /// The statistics passes keep more alive (measured per proxy pixel: 4227 for the encoder
    /// head, 9394–11072 for the whole decoder, session start included).
    const HEAD_STATISTICS_PER_PIXEL: u64 = 4_300;
    const DECODER_STATISTICS_PER_PIXEL: u64 = 11_000;
    /// A tile's state between two segments of the cut encoder, per image pixel: at its largest
    /// (the first ResNet after the first downsample) `x` and the residual, 256 channels each on
    /// a quarter of the pixels, in f32.
    const CARRIED_PER_PIXEL: u64 = 2 * 256 * 4 / 4;

    fn pixels(width: usize, height: usize) -> u64 {
        (width * height) as u64
    }

    pub fn whole_encode(width: usize, height: usize) -> u64 {
        pixels(width, height) * ENCODE_PER_PIXEL
    }

    /// A whole decode of a `width`×`height` latent.
    pub fn whole_decode(width: usize, height: usize) -> u64 {
        pixels(width, height) * 64 * DECODE_PER_PIXEL
    }

    /// The colour fix's statistics pass: the encoder's head on a `width`×`height` proxy.
    pub fn head_statistics(width: usize, height: usize) -> u64 {
        pixels(width, height) * HEAD_STATISTICS_PER_PIXEL
    }

    /// The fast decoder's statistics pass on a `width`×`height` latent proxy.
    pub fn decoder_statistics(width: usize, height: usize) -> u64 {
        pixels(width, height) * 64 * DECODER_STATISTICS_PER_PIXEL
    }

    /// The sides of a proxy whose longer side is `side`.
    fn proxy(width: usize, height: usize, side: usize) -> (usize, usize) {
        let k = (side as f64 / width.max(height) as f64).min(1.0);
        ((width as f64 * k) as usize, (height as f64 * k) as usize)
    }

    /// Clarity's tiled decode: the statistics pass on a 128-latent proxy, then tiles of at
    /// most 150 latents a side.
    pub fn clarity_decode(width: usize, height: usize) -> u64 {
        let (t, p) = (super::CLARITY_DECODER_TILE, super::CLARITY_DECODER_PAD);
        let (pw, ph) = proxy(width, height, t);
        let side = |l: usize| l.min(t + 2 * p);
        decoder_statistics(pw, ph).max(whole_decode(side(width), side(height)))
    }

    /// Clarity's colour-fixed tiled encode: the head's statistics pass on a 2048-pixel proxy,
    /// then every tile's state held between segments beside one tile's segment.
    pub fn colour_fix_encode(width: usize, height: usize) -> u64 {
        let (t, p) = (super::CLARITY_ENCODER_TILE, super::CLARITY_ENCODER_PAD);
        let (pw, ph) = proxy(width, height, t);
        let side = |l: usize| l.min(t + 2 * p);
        let carried = pixels(width, height) * CARRIED_PER_PIXEL;
        head_statistics(pw, ph).max(carried + whole_encode(side(width), side(height)))
    }
}
