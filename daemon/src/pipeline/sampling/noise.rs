//! Seeded Gaussian noise that does not depend on how the work is cut up.
//!
//! Every noise sample is a pure function of (seed, purpose, element index): a counter-based
//! generator (Philox4x32-10, Salmon et al., SC 2011) maps the counter to random bits and the
//! Box–Muller transform turns them into normals. So the same seed gives the same noise
//! whatever the tile batch size, the thread count or the order in which tiles run, and any
//! part of a tensor can be drawn alone. The reference pipeline (PyTorch's GPU generator and
//! k-diffusion's Brownian tree) cannot be reproduced outside PyTorch/CUDA; what matters there
//! is the distribution, which this matches.

use ndarray::{ArrayD, IxDyn};

/// What a noise tensor is for; each purpose has its own stream under the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoisePurpose {
    /// ε of the VAE posterior sample z = mean + std·ε.
    Posterior,
    /// ε of the initial noising x = z0 + σ_start·ε.
    Initial,
    /// ξ of SDE sampler step `i` (0-based within the stage).
    Step(usize),
}

impl NoisePurpose {
    pub(crate) fn stream(self) -> u32 {
        match self {
            NoisePurpose::Posterior => 0,
            NoisePurpose::Initial => 1,
            NoisePurpose::Step(i) => 2 + i as u32,
        }
    }
}

/// Where a stage gets its noise. The product uses [`SeededNoise`]; the reference-parity test
/// injects the noise its PyTorch reference drew.
pub trait NoiseSource {
    /// Standard normal noise of shape `dims` for `purpose` in stage `stage` (0-based).
    fn noise(&mut self, stage: usize, purpose: NoisePurpose, dims: &[usize]) -> ArrayD<f32>;
}

/// Noise from the job's seed; stage k uses seed + k, as Clarity does.
#[derive(Clone, Debug)]
pub struct SeededNoise {
    pub seed: u64,
}

impl NoiseSource for SeededNoise {
    fn noise(&mut self, stage: usize, purpose: NoisePurpose, dims: &[usize]) -> ArrayD<f32> {
        let seed = self.seed.wrapping_add(stage as u64);
        let len: usize = dims.iter().product();
        let mut data = vec![0f32; len];
        gaussian(seed, purpose.stream(), 0, &mut data);
        ArrayD::from_shape_vec(IxDyn(dims), data).expect("the length is the product of dims")
    }
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: 128 random bits for a 128-bit counter under a 64-bit key.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(ctr[0]);
        let p1 = u64::from(M1) * u64::from(ctr[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// Fills `out` with the standard normals at element indices `first..first + out.len()` of
/// stream `stream` under `seed`. Element i comes from counter i/2 (two normals per counter).
pub fn gaussian(seed: u64, stream: u32, first: usize, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut i = first;
    let end = first + out.len();
    while i < end {
        let pair = (i / 2) as u64;
        let bits = philox4x32_10([pair as u32, (pair >> 32) as u32, stream, 0], key);
        let a = (u64::from(bits[0]) << 32 | u64::from(bits[1])) >> 11;
        let b = (u64::from(bits[2]) << 32 | u64::from(bits[3])) >> 11;
        // u1 in (0, 1] so that ln never sees 0; u2 in [0, 1).
        let u1 = (a + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = b as f64 * (1.0 / (1u64 << 53) as f64);
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        let normals = [radius * angle.cos(), radius * angle.sin()];
        for (lane, value) in normals.into_iter().enumerate() {
            let index = pair as usize * 2 + lane;
            if (i..end).contains(&index) {
                out[index - first] = value as f32;
            }
        }
        i = pair as usize * 2 + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn any_slice_equals_the_same_part_of_the_whole() {
        let mut whole = vec![0f32; 101];
        gaussian(7, 3, 0, &mut whole);
        for (start, len) in [(0, 1), (1, 1), (3, 10), (50, 51), (99, 2)] {
            let mut part = vec![0f32; len];
            gaussian(7, 3, start, &mut part);
            assert_eq!(part, whole[start..start + len], "{start}+{len}");
        }
    }

    #[test]
    fn streams_seeds_and_stages_differ_and_the_moments_are_normal() {
        let mut noise = SeededNoise { seed: 1337 };
        let a = noise.noise(0, NoisePurpose::Initial, &[4, 64, 64]);
        let b = noise.noise(0, NoisePurpose::Step(0), &[4, 64, 64]);
        let c = noise.noise(1, NoisePurpose::Initial, &[4, 64, 64]);
        assert_eq!(a, noise.noise(0, NoisePurpose::Initial, &[4, 64, 64]));
        assert_ne!(a, b);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let kurt = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(4))
            .sum::<f64>()
            / n
            / var
            / var;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
        // Neighbouring elements are uncorrelated (the pair from one counter included).
        let lag1 = a
            .as_slice()
            .unwrap()
            .windows(2)
            .map(|w| f64::from(w[0]) * f64::from(w[1]))
            .sum::<f64>()
            / n;
        assert!(lag1.abs() < 0.02, "lag-1 correlation {lag1}");
    }
}
