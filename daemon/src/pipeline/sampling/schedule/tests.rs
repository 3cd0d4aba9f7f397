//! The σ tables, timesteps and start indices of every sampler, from the references' formulas
//! (`docs/pipeline.md`), with the numbers recomputed independently in Python.

use super::*;

const STRENGTHS: [f32; 5] = [0.2, 0.35, 0.5, 0.7, 0.9];

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

/// Clarity's 18-step "DPM++ 3M SDE Karras" table: k-diffusion's `get_sigmas_karras` over 19
/// values with the next-to-last dropped, as A1111 does for this sampler (`docs/pipeline.md`).
const CLARITY_TABLE: [f64; 19] = [
    14.6146, 11.5804, 9.1029, 7.0944, 5.4784, 4.1888, 3.1686, 2.3693, 1.7494, 1.2741, 0.9141,
    0.6450, 0.4469, 0.3034, 0.2014, 0.1303, 0.0819, 0.0498, 0.0,
];

#[test]
fn the_training_schedule_ends_where_sd_does() {
    let t = Training::sd15();
    assert!((t.sigma_min() - 0.029167).abs() < 1e-6);
    assert!((t.sigma_max() - 14.614641).abs() < 1e-6);
    assert_eq!(t.t_from_sigma(t.sigmas[500]), 500.0);
    assert_eq!(t.t_from_sigma(100.0), 999.0);
    assert_eq!(t.t_from_sigma(0.001), 0.0);
}

#[test]
fn clarity_karras_table_with_the_next_to_last_sigma_discarded() {
    let s = full(Sampler::DpmPp3mSdeKarras, 18, &Training::sd15());
    close(&s.sigmas, &CLARITY_TABLE, 5e-5);
    assert_eq!(s.output_scale, 1.0);
    // Continuous UNet timesteps (k-diffusion's `sigma_to_t`: t ≈ 230, 146, 82, 41, 18, 6.7, 1.9
    // from σ 0.6450).
    close(
        &s.timesteps[11..],
        &[230.07, 145.938, 82.236, 40.856, 17.858, 6.732, 1.916],
        1e-3,
    );
}

#[test]
fn clarity_start_indices_and_evaluations() {
    let schedule = full(Sampler::DpmPp3mSdeKarras, 18, &Training::sd15());
    let expected = [(4, 14), (7, 11), (10, 8), (13, 5), (17, 1)];
    for (strength, (evals, start)) in STRENGTHS.iter().zip(expected) {
        let e = evaluations(StrengthRule::A1111, decimal(*strength), 18);
        assert_eq!(e, evals, "strength {strength}");
        let r = run(&schedule, e);
        assert_eq!(r.start, start, "strength {strength}");
        close(&r.sigmas, &CLARITY_TABLE[start..], 5e-5);
        assert_eq!(r.evaluations(), evals);
    }
    let at_035 = run(&schedule, 7);
    close(
        &at_035.sigmas,
        &[0.6450, 0.4469, 0.3034, 0.2014, 0.1303, 0.0819, 0.0498, 0.0],
        5e-5,
    );
    // Later stages (×0.8 each): 0.28 → 6 evaluations from 0.4469, 0.224 → 5 from 0.3034.
    assert_eq!(evaluations(StrengthRule::A1111, 0.35 * 0.8, 18), 6);
    assert_eq!(evaluations(StrengthRule::A1111, 0.35 * 0.8 * 0.8, 18), 5);
    assert_eq!(
        evaluations(StrengthRule::A1111, 1.0, 18),
        18,
        "capped at 0.999"
    );
}

/// The same 18-step "DPM++ 3M SDE Karras" table from A1111 1.7's fp16 ᾱ (Clarity's fork), as
/// numpy computes it: ᾱ float64 → float32 → float16, each σ operation rounded to float16, the
/// Karras ramp in float32.
const CLARITY_HALF_TABLE: [f64; 19] = [
    14.6094, 11.5953, 9.1307, 7.1295, 5.5167, 4.2273, 3.2053, 2.4029, 1.7792, 1.2997, 0.9356,
    0.6626, 0.4610, 0.3144, 0.2098, 0.1365, 0.0864, 0.0529, 0.0,
];

#[test]
fn a1111_halves_the_training_table() {
    let t = Training::sd15_half();
    assert_eq!(t.sigma_min(), 0.03125);
    assert_eq!(t.sigma_max(), 14.609375);
    // Every value is an fp16 number.
    for (&a, &s) in t.alphas_cumprod.iter().zip(&t.sigmas) {
        for v in [a, s] {
            assert_eq!(f64::from(half::f16::from_f64(v).to_f32()), v);
        }
    }
    // σ still rises with t; a training σ maps back near its own timestep only (its log σ
    // is rounded to fp16 too, as k-diffusion's buffer is).
    assert!(t.sigmas.windows(2).all(|w| w[0] < w[1]));
    let back = t.t_from_sigma(t.sigmas[500]);
    assert!(back != 500.0 && (back - 500.0).abs() < 0.05, "{back}");
    // The float64 table is the one the Refiners library uses.
    assert!((Training::sd15().sigma_min() - 0.029167).abs() < 1e-6);
}

#[test]
fn clarity_runs_on_the_half_table() {
    let s = full(Sampler::DpmPp3mSdeKarras, 18, &Training::sd15_half());
    close(&s.sigmas, &CLARITY_HALF_TABLE, 5e-5);
    // Creativity 0.35: 7 evaluations from σ 0.6626 (t ≈ 237, not 0.6450 and 230); the later
    // stages (0.28, 0.224) from 0.4610 and 0.3144.
    let r = run(&s, evaluations(StrengthRule::A1111, 0.35, 18));
    assert_eq!((r.start, r.evaluations()), (11, 7));
    close(&r.timesteps[..3], &[237.026, 152.312, 87.026], 1e-3);
    for (strength, sigma) in [(0.35 * 0.8, 0.4610), (0.35 * 0.8 * 0.8, 0.3144)] {
        let r = run(&s, evaluations(StrengthRule::A1111, strength, 18));
        assert!((r.start_sigma() - sigma).abs() < 5e-5, "{strength}");
    }
    // Creativity 0 still evaluates once, at the last nonzero σ, and lands on 0.
    let r = run(&s, evaluations(StrengthRule::A1111, 0.0, 18));
    assert_eq!(r.evaluations(), 1);
    close(&r.sigmas, &[0.0529, 0.0], 5e-5);
    assert!((r.timesteps[0] - 2.3977).abs() < 1e-3);
}

#[test]
fn a1111_dpmpp_2m_karras_keeps_sigma_min() {
    let s = full(Sampler::DpmPp2mKarras, 18, &Training::sd15());
    close(
        &s.sigmas,
        &[
            14.6146, 11.4201, 8.8439, 6.7827, 5.1478, 3.8631, 2.8635, 2.0944, 1.5096, 1.0708,
            0.7462, 0.5098, 0.3408, 0.2223, 0.1410, 0.0866, 0.0513, 0.0292, 0.0,
        ],
        5e-5,
    );
    let expected = [(4, 14), (7, 11), (10, 8), (13, 5), (17, 1)];
    for (strength, (evals, start)) in STRENGTHS.iter().zip(expected) {
        let r = run(&s, evaluations(StrengthRule::A1111, decimal(*strength), 18));
        assert_eq!((r.evaluations(), r.start), (evals, start), "{strength}");
    }
    close(&s.timesteps[11..13], &[173.591, 98.614], 1e-3);
}

#[test]
fn refiners_dpm_solver_on_linear_timesteps() {
    let s = full(Sampler::DpmPp2m, 18, &Training::sd15());
    let timesteps: Vec<f64> = [
        999, 944, 888, 832, 777, 722, 666, 610, 555, 500, 444, 388, 333, 278, 222, 166, 111, 56,
    ]
    .iter()
    .map(|&t| t as f64)
    .collect();
    assert_eq!(s.timesteps, timesteps);
    assert!((s.output_scale - 0.999_575).abs() < 1e-6, "√ᾱ_0");
    let expected = [(4, 14), (7, 11), (9, 9), (13, 5), (17, 1)];
    for (strength, (evals, start)) in STRENGTHS.iter().zip(expected) {
        let e = evaluations(StrengthRule::Refiners, decimal(*strength), 18);
        let r = run(&s, e);
        assert_eq!((r.evaluations(), r.start), (evals, start), "{strength}");
        assert_eq!(r.timesteps, timesteps[start..]);
    }
    let r = run(&s, 7);
    assert_eq!(
        r.timesteps,
        [388.0, 333.0, 278.0, 222.0, 166.0, 111.0, 56.0]
    );
    close(
        &r.sigmas,
        &[
            1.1194, 0.9324, 0.7706, 0.6250, 0.4924, 0.3687, 0.2408, 0.0292,
        ],
        5e-5,
    );
}

#[test]
fn refiners_ddim_on_leading_timesteps() {
    let s = full(Sampler::Ddim, 18, &Training::sd15());
    assert_eq!(s.timesteps[0], 936.0);
    assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    let expected = [(4, 14), (7, 11), (9, 9), (13, 5), (17, 1)];
    for (strength, (evals, start)) in STRENGTHS.iter().zip(expected) {
        let r = run(
            &s,
            evaluations(StrengthRule::Refiners, decimal(*strength), 18),
        );
        assert_eq!((r.evaluations(), r.start), (evals, start), "{strength}");
        let t0 = 55 * (17 - start) + 1;
        assert_eq!(r.timesteps[0], t0 as f64);
    }
    let r = run(&s, 7);
    assert_eq!(r.timesteps, [331.0, 276.0, 221.0, 166.0, 111.0, 56.0, 1.0]);
    // add_noise at t = 331: √ᾱ = 0.7337, σ = 0.926.
    assert!((r.start_sigma() - 0.926_079).abs() < 1e-5);
    assert!((r.output_scale - 0.999_575).abs() < 1e-6);
}

#[test]
fn the_two_strength_rules_differ_at_half_strength() {
    // A1111 runs ⌊s·N⌋ + 1 evaluations, Refiners N − ⌊N·(1 − s)⌋: the same 7 at 0.35, 10 vs 9
    // at 0.5.
    assert_eq!(evaluations(StrengthRule::A1111, 0.5, 18), 10);
    assert_eq!(evaluations(StrengthRule::Refiners, 0.5, 18), 9);
    assert_eq!(evaluations(StrengthRule::Refiners, 0.0, 18), 0);
    assert_eq!(evaluations(StrengthRule::Refiners, 1.0, 18), 18);
    assert_eq!(decimal(0.35), 0.35);
    assert_eq!(decimal(0.224), 0.224);
}

#[test]
fn one_step_schedules_are_well_formed() {
    let t = Training::sd15();
    for sampler in [
        Sampler::DpmPp3mSdeKarras,
        Sampler::DpmPp2mKarras,
        Sampler::DpmPp2m,
        Sampler::Ddim,
    ] {
        let s = full(sampler, 1, &t);
        assert_eq!(s.sigmas.len(), 2, "{sampler:?}");
        assert_eq!(s.timesteps.len(), 1, "{sampler:?}");
        assert!(s.sigmas[0] > s.sigmas[1]);
    }
}
