//! The stage plan (Clarity's `predict.py`): a scale above 2 is reached in ×2 stages, each
//! a full upscale-and-diffuse pass on the previous stage's output, with the creativity
//! multiplied by the multistep factor and the seed increased by one for each stage after the
//! first. The Refiners preset runs one pass at the whole scale.

use crate::pipeline::sampling::schedule::decimal;

/// Clarity's `calc_scale_factors`: [s] up to 2; above, a 2 for every halving while the rest
/// is at least 2, then the rest if it is above 1 (3 → [2, 1.5], 4 → [2, 2], 6 → [2, 2, 1.5]).
pub fn multipliers(scale: f64) -> Vec<f64> {
    if scale <= 2.0 {
        return vec![scale];
    }
    let mut rest = scale;
    let mut out = Vec::new();
    while rest >= 2.0 {
        out.push(2.0);
        rest /= 2.0;
    }
    if rest > 1.0 {
        out.push(rest);
    }
    out
}

/// One stage of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// Nominal size multiplier of this stage.
    pub multiplier: f64,
    /// Denoising strength (creativity) of this stage.
    pub strength: f64,
    pub seed: u64,
    /// The size the stage works at (pixels, multiples of 8): the pre-upscale target, the
    /// VAE's input and output.
    pub canvas: (usize, usize),
    /// The part of the canvas (from the top left) that is the stage's output.
    pub output: (usize, usize),
}

fn floor8(v: f64) -> usize {
    ((v.floor() as usize) / 8 * 8).max(8)
}

fn ceil8(v: usize) -> usize {
    v.div_ceil(8).max(1) * 8
}

/// The stages that take an image of `input` pixels to `target` pixels.
///
/// Intermediate stages work at Clarity's ⌊W·m⌋₈ × ⌊H·m⌋₈. The last one works at the target
/// rounded up to a multiple of 8 and keeps the target (the VAE needs multiples of 8; an editor
/// needs the exact size); Clarity would stop at the multiple of 8 below.
pub fn plan(
    input: (usize, usize),
    target: (usize, usize),
    scale: f32,
    creativity: f32,
    multistep_factor: f32,
    seed: u64,
    single_pass: bool,
) -> Vec<Stage> {
    let scale = decimal(scale);
    let factors = if single_pass {
        vec![scale]
    } else {
        multipliers(scale)
    };
    let factor = decimal(multistep_factor);
    let mut strength = decimal(creativity);
    let mut size = (input.0 as f64, input.1 as f64);
    let mut stages = Vec::with_capacity(factors.len());
    for (k, &m) in factors.iter().enumerate() {
        if k > 0 {
            strength *= factor;
        }
        let (canvas, output) = if k + 1 == factors.len() {
            ((ceil8(target.0), ceil8(target.1)), target)
        } else {
            let c = (floor8(size.0 * m), floor8(size.1 * m));
            (c, c)
        };
        stages.push(Stage {
            multiplier: m,
            strength,
            seed: seed.wrapping_add(k as u64),
            canvas,
            output,
        });
        size = (output.0 as f64, output.1 as f64);
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strengths(stages: &[Stage]) -> Vec<f64> {
        stages.iter().map(|s| s.strength).collect()
    }

    #[test]
    fn multipliers_follow_calc_scale_factors() {
        assert_eq!(multipliers(1.5), [1.5]);
        assert_eq!(multipliers(2.0), [2.0]);
        assert_eq!(multipliers(2.5), [2.0, 1.25]);
        assert_eq!(multipliers(3.0), [2.0, 1.5]);
        assert_eq!(multipliers(4.0), [2.0, 2.0]);
        assert_eq!(multipliers(6.0), [2.0, 2.0, 1.5]);
        assert_eq!(multipliers(8.0), [2.0, 2.0, 2.0]);
        assert_eq!(multipliers(16.0), [2.0, 2.0, 2.0, 2.0]);
        assert_eq!(multipliers(1.0), [1.0]);
    }

    #[test]
    fn plans_for_the_scales_of_section_10() {
        let job = |scale: f32, w: usize, h: usize| {
            let target = (
                (w as f64 * f64::from(scale)).round() as usize,
                (h as f64 * f64::from(scale)).round() as usize,
            );
            plan((w, h), target, scale, 0.35, 0.8, 1337, false)
        };
        // ×1.5: one stage.
        let s = job(1.5, 512, 512);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].multiplier, s[0].canvas, s[0].seed),
            (1.5, (768, 768), 1337)
        );
        // ×2: one stage, Clarity's defaults.
        let s = job(2.0, 768, 512);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].canvas, s[0].output), ((1536, 1024), (1536, 1024)));
        assert_eq!(strengths(&s), [0.35]);
        // ×3: [2, 1.5] with creativity [0.35, 0.28].
        let s = job(3.0, 100, 60);
        assert_eq!(
            s.iter().map(|s| s.multiplier).collect::<Vec<_>>(),
            [2.0, 1.5]
        );
        assert_eq!(s[0].canvas, (200, 120));
        assert_eq!((s[1].canvas, s[1].output), ((304, 184), (300, 180)));
        assert!((s[1].strength - 0.28).abs() < 1e-12);
        assert_eq!((s[0].seed, s[1].seed), (1337, 1338));
        // ×4: [2, 2].
        let s = job(4.0, 256, 256);
        assert_eq!(
            s.iter().map(|s| s.canvas).collect::<Vec<_>>(),
            [(512, 512), (1024, 1024)]
        );
        // ×8: [2, 2, 2] with [0.35, 0.28, 0.224] → 7, 6, 5 evaluations.
        let s = job(8.0, 64, 48);
        assert_eq!(s.len(), 3);
        let expect = [0.35, 0.28, 0.224];
        for (a, b) in strengths(&s).iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let evals: Vec<usize> = s
            .iter()
            .map(|s| {
                crate::pipeline::sampling::schedule::evaluations(
                    crate::pipeline::sampling::schedule::StrengthRule::A1111,
                    s.strength,
                    18,
                )
            })
            .collect();
        assert_eq!(evals, [7, 6, 5]);
        assert_eq!(s.last().unwrap().output, (512, 384));
        assert_eq!(
            s.iter().map(|s| s.seed).collect::<Vec<_>>(),
            [1337, 1338, 1339]
        );
    }

    #[test]
    fn intermediate_sizes_snap_down_to_multiples_of_eight() {
        // 101 × 2 = 202 → 200 (Clarity's floor), then ×2 again to the exact 404 target.
        let s = plan((101, 77), (404, 308), 4.0, 0.35, 0.8, 0, false);
        assert_eq!(s[0].canvas, (200, 152));
        assert_eq!((s[1].canvas, s[1].output), ((408, 312), (404, 308)));
    }

    #[test]
    fn a_single_pass_takes_the_whole_scale() {
        let s = plan((64, 64), (256, 256), 4.0, 0.35, 0.8, 42, true);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].multiplier, s[0].canvas, s[0].seed),
            (4.0, (256, 256), 42)
        );
    }
}
