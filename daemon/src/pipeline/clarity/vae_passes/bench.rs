//! `tessera bench vae`: the time and the peak memory of each way to run SD 1.5's VAE (random
//! full-size weights) on square canvases: whole, Clarity's tiles and the bounded tiles, as the
//! pipeline would run them. The peak is the process's resident high-water mark during the pass
//! above its resident set before it (Linux: `VmHWM` reset through `/proc/self/clear_refs`),
//! which is what [`super::plan::estimate`] models.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array4;

use super::{VaePass, VaePolicy, VaeRule, VaeTiling};
use crate::Cancelled;
use crate::engine::Engine;
use crate::nets::sd::SdOptions;
use crate::nets::vae::CompiledVae;
use crate::pipeline::clarity::model_set::SdVae;
use crate::pipeline::clarity::network_traits::Vae;
use crate::weights::sd;

/// One measured pass.
#[derive(Clone, Debug)]
pub struct PassReport {
    /// Canvas side in pixels.
    pub side: usize,
    /// `encode` or `decode`.
    pub direction: &'static str,
    /// Which rule picked the pass (`whole`, `clarity tiles`, `bounded tiles`).
    pub mode: String,
    pub seconds: f64,
    /// Peak resident memory above the resident set before the pass.
    pub peak_mib: f64,
    /// What [`super::plan::estimate`] predicts for a whole pass, where it is one.
    pub estimate_mib: Option<f64>,
}

fn resident_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Runs `pass` and measures it.
fn measure(run: impl FnOnce()) -> (f64, f64) {
    // Resets the high-water mark to the current resident set (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = resident_kib("VmRSS:");
    let started = Instant::now();
    run();
    let seconds = started.elapsed().as_secs_f64();
    (seconds, (resident_kib("VmHWM:") - before).max(0.0) / 1024.0)
}

fn mode(pass: &VaePass) -> String {
    match pass {
        VaePass::Whole => "whole".into(),
        VaePass::Tiled(t) if t.colour_fix => "clarity tiles, colour fix".into(),
        VaePass::Tiled(t) => format!("{:?} tiles", t.grid).to_lowercase(),
    }
}

/// Writes a random SD 1.5 VAE into `dir` (335 MB) unless one is there, then measures the
/// passes at every side of `sides`, `report`ing each line as it goes.
pub fn run(
    engine: Arc<Engine>,
    dir: &Path,
    sides: &[usize],
    bounded: VaeTiling,
    report: &mut dyn FnMut(&PassReport),
) -> anyhow::Result<Vec<PassReport>> {
    let file = dir.join("vae-random.safetensors");
    if !file.is_file() {
        crate::nets::bench::write_random_as(
            &file,
            &crate::pipeline::clarity::bench::vae_tensors(&crate::nets::bench::ModelSize::FULL),
            2,
            true,
        )?;
    }
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache)?;
    let net = sd::vae(&file)?;
    let options = SdOptions {
        precision: crate::nets::sd::Precision::F32,
        config: None,
        patch: None,
    };
    let compiled = CompiledVae::compile(&net, &cache, &options)?;
    drop(net);
    let mut vae = SdVae::new(engine, compiled)?;
    let no_progress = &mut |_: usize, _: usize| -> Result<(), Cancelled> { Ok(()) };
    let clarity = VaePolicy {
        rule: VaeRule::Clarity,
        accelerator: true,
        budget: 0,
        bounded,
    };
    let bounded = VaePolicy::bounded(bounded);
    let mut out = Vec::new();
    for &side in sides {
        let side = side / 8 * 8;
        let image = Array4::from_shape_fn((1, 3, side, side), |(_, c, y, x)| {
            (((x * 7 + y * 3 + c * 50) % 255) as f32 / 127.5 - 1.0) * 0.8
        });
        let latent_side = side / 8;
        let latent = Array4::from_shape_fn((1, 4, latent_side, latent_side), |(_, c, y, x)| {
            ((x + 2 * y + 3 * c) % 17) as f32 / 8.0 - 1.0
        });
        for policy in [&clarity, &bounded] {
            let pass = policy.encoder(side, side);
            if out.iter().any(|r: &PassReport| {
                r.side == side && r.direction == "encode" && r.mode == mode(&pass)
            }) {
                continue;
            }
            let mut result = Ok(());
            let (seconds, peak_mib) = measure(|| {
                result = super::encode(&mut vae, image.view(), &pass, no_progress).map(|_| ());
            });
            result?;
            vae.warm()?;
            let r = PassReport {
                side,
                direction: "encode",
                mode: mode(&pass),
                seconds,
                peak_mib,
                estimate_mib: (pass == VaePass::Whole)
                    .then(|| super::plan::estimate::whole_encode(side, side) as f64 / 1048576.0),
            };
            report(&r);
            out.push(r);
        }
        for policy in [&clarity, &bounded] {
            let pass = policy.decoder(latent_side, latent_side);
            if out.iter().any(|r: &PassReport| {
                r.side == side && r.direction == "decode" && r.mode == mode(&pass)
            }) {
                continue;
            }
            let mut result = Ok(());
            let (seconds, peak_mib) = measure(|| {
                result = super::decode(&mut vae, latent.view(), &pass, no_progress).map(|_| ());
            });
            result?;
            vae.warm()?;
            let r = PassReport {
                side,
                direction: "decode",
                mode: mode(&pass),
                seconds,
                peak_mib,
                estimate_mib: (pass == VaePass::Whole).then(|| {
                    super::plan::estimate::whole_decode(latent_side, latent_side) as f64 / 1048576.0
                }),
            };
            report(&r);
            out.push(r);
        }
        // The statistics passes of Clarity's tiles, on a proxy of this side: the head of the
        // cut encoder (colour fix) and the whole decoder, with exported statistics.
        let mut result = Ok(());
        let (seconds, peak_mib) = measure(|| {
            result = vae.encoder_head_stats(image.view()).map(|_| ());
        });
        result?;
        let r = PassReport {
            side,
            direction: "encode",
            mode: "statistics: encoder head".into(),
            seconds,
            peak_mib,
            estimate_mib: Some(
                super::plan::estimate::head_statistics(side, side) as f64 / 1048576.0,
            ),
        };
        report(&r);
        out.push(r);
        let input = vae.post_quant(latent.view())?;
        let mut result = Ok(());
        let (seconds, peak_mib) = measure(|| {
            result = vae.decoder_stats(input.view()).map(|_| ());
        });
        result?;
        vae.end_tiles();
        let r = PassReport {
            side,
            direction: "decode",
            mode: "statistics: whole decoder".into(),
            seconds,
            peak_mib,
            estimate_mib: Some(
                super::plan::estimate::decoder_statistics(latent_side, latent_side) as f64
                    / 1048576.0,
            ),
        };
        report(&r);
        out.push(r);
    }
    Ok(out)
}
