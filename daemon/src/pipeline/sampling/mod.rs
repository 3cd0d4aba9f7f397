//! Samplers: given the denoised estimate D at each level of a [`schedule::Run`], move the
//! latent to the next level. They never call a network themselves; the caller (the
//! MultiDiffusion stage) computes D for the whole latent and hands it over, so sampling,
//! tiling and networks stay apart.
//!
//! All updates are written in k-diffusion's space (x = z0 + σ·ε). The Refiners solvers map
//! onto it exactly: DPM-Solver++(2M) on scaled latents is k-diffusion's `sample_dpmpp_2m`,
//! and DDIM with η = 0 is the Euler step (`docs/pipeline.md` has the algebra).

pub mod noise;
pub mod schedule;

use ndarray::{ArrayD, ArrayViewD, Zip};
use tessera_protocol::Sampler;

/// How a sampler moves from level i to level i + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// k-diffusion `sample_dpmpp_3m_sde` with η = 1 and s_noise = 1.
    DpmPp3mSde,
    /// k-diffusion `sample_dpmpp_2m` (= Refiners' DPM-Solver++ 2M).
    DpmPp2m,
    /// Euler on the probability-flow ODE (= DDIM with η = 0).
    Euler,
}

impl Update {
    pub fn of(sampler: Sampler) -> Update {
        match sampler {
            Sampler::DpmPp3mSdeKarras => Update::DpmPp3mSde,
            Sampler::DpmPp2mKarras | Sampler::DpmPp2m => Update::DpmPp2m,
            Sampler::Ddim => Update::Euler,
        }
    }

    /// Whether step i needs fresh Gaussian noise for the whole latent.
    pub fn is_stochastic(self) -> bool {
        self == Update::DpmPp3mSde
    }
}

/// A sampler's memory across steps: the previous denoised estimates and step sizes.
#[derive(Debug)]
pub struct SamplerState {
    update: Update,
    /// D of the previous two steps, most recent first.
    denoised: Vec<ArrayD<f32>>,
    /// h of the previous two steps, most recent first.
    h: Vec<f64>,
}

impl SamplerState {
    pub fn new(update: Update) -> SamplerState {
        SamplerState {
            update,
            denoised: Vec::new(),
            h: Vec::new(),
        }
    }

    /// Moves `x` from `sigma` to `sigma_next` given its denoised estimate; `noise` (standard
    /// normal, the shape of `x`) is required by stochastic updates when `sigma_next > 0`.
    pub fn step(
        &mut self,
        x: &mut ArrayD<f32>,
        denoised: ArrayD<f32>,
        sigma: f64,
        sigma_next: f64,
        noise: Option<ArrayViewD<'_, f32>>,
    ) {
        if sigma_next == 0.0 {
            // Every sampler's last step to σ = 0 returns the denoised estimate.
            x.assign(&denoised);
            self.remember(denoised, None);
            return;
        }
        let h = sigma.ln() - sigma_next.ln();
        match self.update {
            Update::Euler => {
                let ratio = (sigma_next / sigma) as f32;
                Zip::from(&mut *x)
                    .and(&denoised)
                    .for_each(|x, &d| *x = d + ratio * (*x - d));
            }
            Update::DpmPp2m => {
                let ratio = (sigma_next / sigma) as f32;
                let c = (-(-h).exp_m1()) as f32;
                match (self.denoised.first(), self.h.first()) {
                    (Some(old), Some(&h_last)) => {
                        let r = h_last / h;
                        let (a, b) = ((1.0 + 1.0 / (2.0 * r)) as f32, (1.0 / (2.0 * r)) as f32);
                        Zip::from(&mut *x)
                            .and(&denoised)
                            .and(old)
                            .for_each(|x, &d, &o| *x = ratio * *x + c * (a * d - b * o));
                    }
                    _ => Zip::from(&mut *x)
                        .and(&denoised)
                        .for_each(|x, &d| *x = ratio * *x + c * d),
                }
            }
            Update::DpmPp3mSde => {
                let h_eta = 2.0 * h;
                let decay = (-h_eta).exp() as f32;
                let c = (-(-h_eta).exp_m1()) as f32;
                Zip::from(&mut *x)
                    .and(&denoised)
                    .for_each(|x, &d| *x = decay * *x + c * d);
                let phi2 = (-h_eta).exp_m1() / h_eta + 1.0;
                match (&self.denoised[..], &self.h[..]) {
                    ([d1, d2, ..], [h1, h2, ..]) => {
                        let (r0, r1) = (h1 / h, h2 / h);
                        let phi3 = phi2 / h_eta - 0.5;
                        // x += φ2·d1 − φ3·d2 with d1_0 = (D − D₁)/r0, d1_1 = (D₁ − D₂)/r1,
                        // d1 = d1_0 + (d1_0 − d1_1)·r0/(r0 + r1), d2 = (d1_0 − d1_1)/(r0 + r1).
                        let (ir0, ir1) = ((1.0 / r0) as f32, (1.0 / r1) as f32);
                        let k = (r0 / (r0 + r1)) as f32;
                        let inv_sum = (1.0 / (r0 + r1)) as f32;
                        let (p2, p3) = (phi2 as f32, phi3 as f32);
                        Zip::from(&mut *x).and(&denoised).and(d1).and(d2).for_each(
                            |x, &d, &a, &b| {
                                let d10 = (d - a) * ir0;
                                let d11 = (a - b) * ir1;
                                let first = d10 + (d10 - d11) * k;
                                let second = (d10 - d11) * inv_sum;
                                *x += p2 * first - p3 * second;
                            },
                        );
                    }
                    ([d1, ..], [h1, ..]) => {
                        let ir = (h / h1) as f32;
                        let p2 = phi2 as f32;
                        Zip::from(&mut *x)
                            .and(&denoised)
                            .and(d1)
                            .for_each(|x, &d, &a| *x += p2 * (d - a) * ir);
                    }
                    _ => {}
                }
                let scale = (sigma_next * (-(-2.0 * h).exp_m1()).sqrt()) as f32;
                let noise = noise.expect("the SDE sampler needs noise before σ reaches 0");
                Zip::from(&mut *x)
                    .and(&noise)
                    .for_each(|x, &n| *x += n * scale);
            }
        }
        self.remember(denoised, Some(h));
    }

    fn remember(&mut self, denoised: ArrayD<f32>, h: Option<f64>) {
        self.denoised.insert(0, denoised);
        self.denoised.truncate(2);
        if let Some(h) = h {
            self.h.insert(0, h);
            self.h.truncate(2);
        }
    }
}

#[cfg(test)]
mod tests;
