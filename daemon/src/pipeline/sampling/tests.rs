//! Samplers against a data distribution whose denoiser is known exactly: per element
//! z ~ N(μ, s²), so D(x, σ) = μ + s²/(s² + σ²)·(x − μ), and the probability-flow ODE carries
//! x = μ + √(s² + σ²)·u along unchanged u.

use super::noise::{NoisePurpose, NoiseSource, SeededNoise};
use super::schedule::{self, Training};
use super::*;
use ndarray::IxDyn;

const MU: f32 = 0.3;
const S: f64 = 0.5;

fn exact_denoiser(x: &ArrayD<f32>, sigma: f64) -> ArrayD<f32> {
    let k = (S * S / (S * S + sigma * sigma)) as f32;
    x.mapv(|v| MU + k * (v - MU))
}

/// Runs `sampler`'s full schedule of `steps` from σ_max and returns (x, u, σ_end).
fn sample(sampler: Sampler, steps: usize, len: usize) -> (ArrayD<f32>, ArrayD<f32>, f64) {
    let training = Training::sd15();
    let schedule = schedule::full(sampler, steps, &training);
    let mut noise = SeededNoise { seed: 5 };
    let u = noise.noise(0, NoisePurpose::Initial, &[len]);
    let s0 = (S * S + schedule.sigmas[0].powi(2)).sqrt() as f32;
    let mut x = u.mapv(|v| MU + s0 * v);
    let mut state = SamplerState::new(Update::of(sampler));
    for i in 0..steps {
        let (sigma, next) = (schedule.sigmas[i], schedule.sigmas[i + 1]);
        let d = exact_denoiser(&x, sigma);
        let xi = noise.noise(0, NoisePurpose::Step(i), &[len]);
        state.step(&mut x, d, sigma, next, Some(xi.view()));
    }
    (x, u, *schedule.sigmas.last().unwrap())
}

fn ode_error(sampler: Sampler, steps: usize) -> f64 {
    let (x, u, end) = sample(sampler, steps, 64);
    let s_end = (S * S + end * end).sqrt();
    x.iter()
        .zip(&u)
        .map(|(&x, &u)| (f64::from(x) - (f64::from(MU) + s_end * f64::from(u))).abs())
        .fold(0.0, f64::max)
}

#[test]
fn ode_samplers_follow_the_exact_flow_and_converge_at_their_order() {
    // Karras σ put the steps where the flow bends: 18 steps are already close.
    assert!(ode_error(Sampler::DpmPp2mKarras, 40) < 0.005);
    // Second order: doubling the steps divides the error by about 4 (here more).
    let ratio = ode_error(Sampler::DpmPp2mKarras, 20) / ode_error(Sampler::DpmPp2mKarras, 40);
    assert!(ratio > 3.0, "2M error ratio {ratio}");
    // Linear timesteps waste steps at high σ: the same solvers converge, more slowly, the
    // second-order one faster than DDIM's first order.
    for sampler in [Sampler::DpmPp2m, Sampler::Ddim] {
        let (coarse, fine) = (ode_error(sampler, 40), ode_error(sampler, 160));
        assert!(fine < 0.6 * coarse, "{sampler:?}: {fine} vs {coarse}");
        assert!(fine < 0.025, "{sampler:?}: error {fine} after 160 steps");
    }
    assert!(ode_error(Sampler::DpmPp2m, 80) < 0.8 * ode_error(Sampler::Ddim, 80));
}

#[test]
fn the_sde_sampler_lands_on_the_data_distribution() {
    // 50 steps: at Clarity's 18 the discretisation still widens the spread by about 3%.
    let (x, _, end) = sample(Sampler::DpmPp3mSdeKarras, 50, 200_000);
    assert_eq!(end, 0.0);
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!((mean - f64::from(MU)).abs() < 0.01, "mean {mean}");
    assert!((var.sqrt() - S).abs() < 0.01, "std {} vs {S}", var.sqrt());
}

#[test]
fn the_sde_sampler_without_noise_would_collapse_the_spread() {
    // The same run with zero noise loses variance: the noise term is doing its job above.
    let training = Training::sd15();
    let schedule = schedule::full(Sampler::DpmPp3mSdeKarras, 18, &training);
    let len = 20_000;
    let u = SeededNoise { seed: 9 }.noise(0, NoisePurpose::Initial, &[len]);
    let s0 = (S * S + schedule.sigmas[0].powi(2)).sqrt() as f32;
    let mut x = u.mapv(|v| MU + s0 * v);
    let mut state = SamplerState::new(Update::DpmPp3mSde);
    let zero = ArrayD::<f32>::zeros(IxDyn(&[len]));
    for i in 0..18 {
        let d = exact_denoiser(&x, schedule.sigmas[i]);
        state.step(
            &mut x,
            d,
            schedule.sigmas[i],
            schedule.sigmas[i + 1],
            Some(zero.view()),
        );
    }
    let mean = x.mean().unwrap();
    let std = x.mapv(|v| (v - mean).powi(2)).mean().unwrap().sqrt();
    assert!(f64::from(std) < 0.8 * S, "std {std}");
}

#[test]
fn the_last_step_to_zero_returns_the_denoised_estimate() {
    for update in [Update::DpmPp3mSde, Update::DpmPp2m, Update::Euler] {
        let mut state = SamplerState::new(update);
        let mut x = ArrayD::from_elem(IxDyn(&[3]), 2.0f32);
        let d = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.1, -0.2, 0.3]).unwrap();
        state.step(&mut x, d.clone(), 0.5, 0.0, None);
        assert_eq!(x, d, "{update:?}");
    }
}
