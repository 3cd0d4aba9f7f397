//! Noise schedules: SD 1.x's training schedule, the σ (and UNet timestep) of every step of a
//! full denoise for each sampler, and how a denoising strength picks where a run starts.
//!
//! Everything is in k-diffusion's terms (Karras et al., 2022): a latent at noise level σ is
//! x = z0 + σ·ε, and the UNet sees x·c_in with c_in = 1/√(σ² + 1). The Refiners solvers,
//! written on scaled latents x' = x/√(σ² + 1), map onto this exactly (`docs/pipeline.md`).
//! How each reference gets its table is in `docs/pipeline.md` ("The σ table"): the Refiners
//! library computes it in float64; Clarity's A1111 1.7 halves the whole model, ᾱ included, so
//! its σ come from fp16 values ([`Training::sd15_half`]).

use half::f16;
use tessera_protocol::Sampler;

/// Training steps of SD 1.x.
pub const TRAIN_STEPS: usize = 1000;
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
/// Karras et al.'s ρ.
const KARRAS_RHO: f64 = 7.0;

/// SD 1.x's "scaled linear" training schedule: β_i = (√β₀ + (√β₁ − √β₀)·i/999)².
#[derive(Clone, Debug)]
pub struct Training {
    /// ᾱ_t, t = 0..999.
    pub alphas_cumprod: Vec<f64>,
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t).
    pub sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl Training {
    pub fn sd15() -> Training {
        let (a, b) = (BETA_START.sqrt(), BETA_END.sqrt());
        let mut cumprod = 1.0;
        let alphas_cumprod: Vec<f64> = (0..TRAIN_STEPS)
            .map(|i| {
                let beta = (a + (b - a) * i as f64 / (TRAIN_STEPS - 1) as f64).powi(2);
                cumprod *= 1.0 - beta;
                cumprod
            })
            .collect();
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&ac| ((1.0 - ac) / ac).sqrt())
            .collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Training {
            alphas_cumprod,
            sigmas,
            log_sigmas,
        }
    }

    /// The table A1111 before 1.8 samples with, so Clarity's: `model.half()` turns the ᾱ
    /// buffer (float64 → float32 at registration) to fp16, and k-diffusion's `CompVisDenoiser`
    /// derives σ = ((1 − ᾱ)/ᾱ)^½ and log σ from it in fp16, each operation rounded to fp16.
    /// σ_min becomes 0.03125 and σ_max 14.609375 (float64: 0.029167 and 14.614641).
    pub fn sd15_half() -> Training {
        let exact = Training::sd15();
        let half = |v: f32| f16::from_f32(v).to_f32();
        let alphas: Vec<f32> = exact
            .alphas_cumprod
            .iter()
            .map(|&a| half(a as f32))
            .collect();
        let sigmas: Vec<f32> = alphas
            .iter()
            .map(|&a| half(half(half(1.0 - a) / a).sqrt()))
            .collect();
        Training {
            alphas_cumprod: alphas.iter().map(|&a| f64::from(a)).collect(),
            log_sigmas: sigmas.iter().map(|&s| f64::from(half(s.ln()))).collect(),
            sigmas: sigmas.iter().map(|&s| f64::from(s)).collect(),
        }
    }

    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    pub fn sigma_max(&self) -> f64 {
        self.sigmas[TRAIN_STEPS - 1]
    }

    /// k-diffusion's `sigma_to_t`: the (fractional) timestep whose log σ interpolates
    /// linearly between the two nearest training log σ; clamped to 0..999.
    pub fn t_from_sigma(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.ln();
        let low = self
            .log_sigmas
            .iter()
            .rposition(|&l| l <= log_sigma)
            .unwrap_or(0)
            .min(TRAIN_STEPS - 2);
        let (lo, hi) = (self.log_sigmas[low], self.log_sigmas[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        low as f64 + w
    }
}

/// The levels of a full denoise: `sigmas[i] → sigmas[i + 1]` is step i, evaluated by the
/// UNet at `timesteps[i]`; the final latent is multiplied by `output_scale` before decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// N + 1 values, decreasing; the last is 0 or σ_min.
    pub sigmas: Vec<f64>,
    /// N values.
    pub timesteps: Vec<f64>,
    /// √ᾱ of the last level for the Refiners solvers, which end on a scaled latent; else 1.
    pub output_scale: f64,
}

/// Karras et al.'s σ: n values from σ_max to σ_min, evenly spaced in σ^(1/ρ), then 0.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (lo, hi) = (
        sigma_min.powf(1.0 / KARRAS_RHO),
        sigma_max.powf(1.0 / KARRAS_RHO),
    );
    let mut sigmas: Vec<f64> = (0..n)
        .map(|j| {
            let ramp = if n > 1 {
                j as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (hi + ramp * (lo - hi)).powf(KARRAS_RHO)
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// numpy's `round` (half to even), which the Refiners timestep tables use.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// The full schedule of `steps` steps for `sampler`.
pub fn full(sampler: Sampler, steps: usize, training: &Training) -> Schedule {
    let steps = steps.max(1);
    let (sigma_min, sigma_max) = (training.sigma_min(), training.sigma_max());
    let continuous = |sigmas: Vec<f64>| {
        let timesteps = sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&s| training.t_from_sigma(s))
            .collect();
        Schedule {
            sigmas,
            timesteps,
            output_scale: 1.0,
        }
    };
    let discrete = |timesteps: Vec<usize>, last: f64| {
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| training.sigmas[t]).collect();
        sigmas.push(last);
        Schedule {
            sigmas,
            timesteps: timesteps.iter().map(|&t| t as f64).collect(),
            output_scale: training.alphas_cumprod[0].sqrt(),
        }
    };
    match sampler {
        Sampler::DpmPp3mSdeKarras => {
            // A1111: Karras over steps + 1 values, then the next-to-last (σ_min) dropped.
            let mut sigmas = karras(steps + 1, sigma_min, sigma_max);
            sigmas.remove(sigmas.len() - 2);
            continuous(sigmas)
        }
        Sampler::DpmPp2mKarras => continuous(karras(steps, sigma_min, sigma_max)),
        Sampler::DpmPp2m => {
            // Refiners' DPMSolver: linspace(0, 999, N + 1) rounded, the first dropped,
            // reversed; the last step ends on σ_min (diffusers' final_sigmas_type).
            let last = (TRAIN_STEPS - 1) as f64;
            let timesteps = (1..=steps)
                .rev()
                .map(|i| round_half_even(last * i as f64 / steps as f64) as usize)
                .collect();
            discrete(timesteps, sigma_min)
        }
        Sampler::Ddim => {
            // Refiners' DDIM: "leading" spacing with offset 1; the last step lands on ᾱ_0
            // with the noise term dropped, i.e. σ 0 scaled by √ᾱ_0.
            let ratio = TRAIN_STEPS / steps;
            let timesteps = (0..steps)
                .rev()
                .map(|i| (ratio * i + 1).min(TRAIN_STEPS - 1))
                .collect();
            discrete(timesteps, 0.0)
        }
    }
}

/// How a denoising strength becomes a number of evaluations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrengthRule {
    /// A1111 img2img: t_enc = ⌊min(s, 0.999)·N⌋, then t_enc + 1 evaluations.
    A1111,
    /// Refiners: first step ⌊N·(1 − s)⌋, evaluations N − first step.
    Refiners,
}

/// `value` as the decimal a person typed: f32 0.35 is 0.3499999940…, and ⌊0.35·18⌋ must be
/// 6 as it is for the reference's Python float, not a step less at some other value.
pub fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// Evaluations at strength `strength` (already the stage's, as a decimal) of an N-step run.
pub fn evaluations(rule: StrengthRule, strength: f64, steps: usize) -> usize {
    let n = steps as f64;
    let evals = match rule {
        StrengthRule::A1111 => (strength.min(0.999) * n).floor() as usize + 1,
        StrengthRule::Refiners => steps - ((n * (1.0 - strength)).floor().max(0.0) as usize),
    };
    evals.min(steps)
}

/// The part of a schedule one stage runs: its last `evaluations` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Index of the first step within the full schedule.
    pub start: usize,
    /// evaluations + 1 levels, from the start σ down.
    pub sigmas: Vec<f64>,
    pub timesteps: Vec<f64>,
    pub output_scale: f64,
}

impl Run {
    pub fn evaluations(&self) -> usize {
        self.timesteps.len()
    }

    /// σ the encoded latent is noised to.
    pub fn start_sigma(&self) -> f64 {
        self.sigmas[0]
    }
}

/// The run of `schedule` with `evaluations` evaluations.
pub fn run(schedule: &Schedule, evaluations: usize) -> Run {
    let n = schedule.timesteps.len();
    let start = n - evaluations.min(n);
    Run {
        start,
        sigmas: schedule.sigmas[start..].to_vec(),
        timesteps: schedule.timesteps[start..].to_vec(),
        output_scale: schedule.output_scale,
    }
}

#[cfg(test)]
mod tests;
