//! The Clarity pipeline over the real socket, on the tiny pipeline models: ×2 and ×4 jobs with
//! Clarity's default prompts (LoRA tags and the negative embedding included), alpha and 16-bit
//! images, progress with an ETA, cancel within one network call, warm models for the next
//! job, identical bytes whatever the tile batch size and thread count, and a missing model
//! explained.

use std::time::{Duration, Instant};
use tessera::cli::client::ClientError;
use tessera_e2e::{Daemon, test_image};
use tessera_protocol::{
    Channels, Done, ErrorKind, Image, JobParams, Progress, Region, SampleFormat, Transfer,
};

/// Clarity's defaults with small tiles, so that stage 2 of a ×4 job has several.
fn params(scale: f32) -> JobParams {
    JobParams {
        scale,
        tile_width: 16,
        tile_height: 16,
        ..JobParams::default()
    }
}

/// Seconds a finished job spent in `phase`.
fn seconds(done: &Done, phase: &str) -> f64 {
    done.timings
        .iter()
        .find(|t| t.name == phase)
        .unwrap()
        .seconds
}

fn rgba16(width: u32, height: u32) -> Image {
    let mut data = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let px = [
                (x * 65535 / width) as u16,
                (y * 65535 / height) as u16,
                (((x / 3 + y / 5) % 2) * 50000) as u16,
                // Alpha ramps left to right.
                (x * 65535 / (width - 1)) as u16,
            ];
            data.extend(px.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    Image {
        width,
        height,
        channels: Channels::Rgba,
        sample: SampleFormat::U16,
        transfer: Transfer::Srgb,
        data,
    }
}

#[test]
fn a_2x_job_runs_every_phase_with_monotonic_progress_and_an_eta() {
    let daemon = Daemon::prepare_diffusion("").start();
    let mut client = daemon.client();
    let mut events: Vec<Progress> = Vec::new();
    let done = client
        .upscale(test_image(48, 40), params(2.0), |p| events.push(p.clone()))
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (96, 80));
    assert_eq!(done.image.channels, Channels::Rgb);
    const ORDER: [&str; 7] = [
        "load",
        "upscale",
        "encode",
        "condition",
        "denoise",
        "decode",
        "finish",
    ];
    // A client that falls behind gets its unsent progress replaced by newer progress of the
    // same phase, so on a busy machine a short phase may show only its last event: every
    // phase is seen, in order, and the job's timings show that every phase ran.
    let mut phases: Vec<&str> = events.iter().map(|e| e.phase.as_str()).collect();
    phases.dedup();
    let positions: Vec<usize> = phases
        .iter()
        .map(|p| ORDER.iter().position(|o| o == p).expect("a known phase"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{phases:?}");
    assert!(phases.contains(&"denoise"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"finish"));
    let fractions: Vec<f32> = events.iter().map(|e| e.fraction).collect();
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert_eq!(*fractions.last().unwrap(), 1.0);
    // 7 evaluations at creativity 0.35, two network calls each (ControlNet, UNet).
    let denoise: Vec<&Progress> = events.iter().filter(|e| e.phase == "denoise").collect();
    assert!(
        denoise
            .iter()
            .all(|e| e.steps == 7 && (1..=7).contains(&e.step))
    );
    assert!(
        events.iter().any(|e| e.eta_seconds.is_some()),
        "an ETA is given"
    );
    let names: Vec<&str> = done.timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "load",
            "text",
            "upscale",
            "encode",
            "condition",
            "denoise",
            "decode",
            "finish"
        ]
    );
}

/// No start-up warm-up: the tests that compare a first job's loading with the next one's.
const NO_WARM_UP: &str = "[serve]\nwarm_up = false\n";

#[test]
fn a_4x_job_keeps_alpha_and_16_bits_and_the_next_job_finds_the_models_warm() {
    let daemon = Daemon::prepare_diffusion(NO_WARM_UP).start();
    let mut client = daemon.client();
    let mut stages = 0;
    let done = client
        .upscale(rgba16(40, 24), params(4.0), |p| {
            stages = stages.max(p.stages)
        })
        .unwrap();
    assert_eq!(stages, 2, "×4 is two ×2 stages");
    assert_eq!((done.image.width, done.image.height), (160, 96));
    assert_eq!(
        (done.image.channels, done.image.sample),
        (Channels::Rgba, SampleFormat::U16)
    );
    let alpha = |x: usize, y: usize| {
        let at = (y * 160 + x) * 8 + 6;
        u16::from_le_bytes([done.image.data[at], done.image.data[at + 1]])
    };
    assert!(
        alpha(2, 50) < 3000 && alpha(157, 50) > 62000,
        "the alpha ramp survives"
    );
    let first_load = seconds(&done, "load");

    let status = client.status().unwrap();
    for part in [
        "UNet+ControlNet",
        "controlnet_body",
        "controlnet_cond_encoder",
        "VAE decoder",
        "CLIP",
    ] {
        assert!(
            status.sessions.iter().any(|s| s.contains(part)),
            "{part} in {:?}",
            status.sessions
        );
    }
    assert!(status.resident_bytes > 0);
    let again = client.upscale(rgba16(40, 24), params(4.0), |_| {}).unwrap();
    let load = seconds(&again, "load");
    assert!(
        load < 0.25 * first_load,
        "the second job loads nothing: {load:.3} s vs {first_load:.3} s"
    );
    assert_eq!(
        again.image, done.image,
        "the same request gives the same bytes"
    );
    let text = seconds(&again, "text");
    assert!(text < 0.05, "the prompts come from the cache ({text:.3} s)");
}

#[test]
fn a_large_job_lends_what_it_is_done_with_and_the_next_job_is_warm() {
    // With no memory for Clarity's whole passes, canvases above 64 + 2·32 pixels are encoded in
    // the bounded tiles: this job is "large".
    let daemon = Daemon::prepare_diffusion(&format!(
        "{NO_WARM_UP}[diffusion]\nvae_encoder_tile = 64\nvae_memory_budget = 0\n"
    ))
    .start();
    let mut client = daemon.client();
    let mut watcher = daemon.client();
    let mut during = None::<Vec<String>>;
    let done = client
        .upscale(test_image(72, 72), params(2.0), |p| {
            let tiled_encode = p.phase == "encode" && p.tiles > 1;
            if during.is_none() && (tiled_encode || p.phase == "condition" || p.phase == "denoise")
            {
                during = Some(watcher.status().unwrap().sessions);
            }
        })
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (144, 144));
    let during = during.expect("a status was taken during the job");
    let held = |sessions: &[String], part: &str| sessions.iter().any(|s| s.starts_with(part));
    assert!(
        !held(&during, "CLIP"),
        "the text encoder is set aside: {during:?}"
    );
    assert!(
        !during
            .iter()
            .any(|s| s.starts_with("VAE encoder") && !s.contains("statistics")),
        "the plain encoder is set aside: {during:?}"
    );
    assert!(held(&during, "UNet+ControlNet"), "{during:?}");

    let after = client.status().unwrap().sessions;
    for part in ["CLIP", "VAE encoder", "VAE decoder", "UNet+ControlNet"] {
        assert!(held(&after, part), "{part} is warm again: {after:?}");
    }
    assert!(!after.iter().any(|s| s.contains("statistics")), "{after:?}");
    let first_load = seconds(&done, "load");
    let again = client
        .upscale(test_image(72, 72), params(2.0), |_| {})
        .unwrap();
    let load = seconds(&again, "load");
    assert!(
        load < 0.25 * first_load,
        "the second job loads nothing: {load:.3} s vs {first_load:.3} s"
    );
    assert_eq!(again.image, done.image);
}

#[test]
fn a_job_during_the_warm_up_completes_and_status_shows_the_warm_up() {
    let daemon = Daemon::prepare_diffusion("").start();
    let mut client = daemon.client();
    // The daemon has just started listening: its warm-up is loading the default models.
    let early = client.status().unwrap().warm_up.expect("serve warms up");
    let done = client
        .upscale(test_image(48, 40), params(2.0), |_| {})
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (96, 80));
    assert!(
        !early.loading.is_empty() && early.done < early.parts,
        "the warm-up was under way when the job came: {early:?}"
    );
    let after = client.status().unwrap();
    let warm_up = after.warm_up.expect("the warm-up stays reported");
    assert_eq!(
        (
            warm_up.loading.as_str(),
            warm_up.error.as_str(),
            warm_up.done
        ),
        ("", "", warm_up.parts),
        "{warm_up:?}"
    );
    for part in ["UNet+ControlNet", "VAE decoder", "CLIP", "ESRGAN"] {
        assert!(
            after.sessions.iter().any(|s| s.contains(part)),
            "{part} in {:?}",
            after.sessions
        );
    }
    // The job took the warm-up's models: the next job with them loads nothing, and both
    // give the bytes of a daemon that ran no warm-up.
    let again = client
        .upscale(test_image(48, 40), params(2.0), |_| {})
        .unwrap();
    assert_eq!(again.image, done.image);
    assert!(seconds(&again, "load") < 0.5, "{:?}", again.timings);
    let cold = Daemon::prepare_diffusion(NO_WARM_UP).start();
    let reference = cold
        .client()
        .upscale(test_image(48, 40), params(2.0), |_| {})
        .unwrap();
    assert_eq!(reference.image, done.image);
    let printed = daemon.command(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains("warm-up: the default models were warm after"),
        "{text}"
    );
}

#[test]
fn an_upscaler_job_does_not_wait_for_the_diffusion_models() {
    let daemon = Daemon::prepare_diffusion("").start();
    let mut client = daemon.client();
    let done = client
        .upscale(
            test_image(16, 16),
            JobParams::upscaler_only(2.0, None),
            |_| {},
        )
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (32, 32));
    let warm_up = client.status().unwrap().warm_up.unwrap();
    assert!(
        warm_up.done < warm_up.parts,
        "the upscaler job finished before the warm-up: {warm_up:?}"
    );
}

#[test]
fn a_rerun_with_other_settings_skips_upscale_and_encode_and_matches_a_cold_run() {
    let image = test_image(48, 40);
    let rerun = |preset: JobParams| JobParams {
        seed: 7,
        creativity: 0.5,
        resemblance: 0.8,
        prompt: "a castle, (oil painting:1.2)".into(),
        ..preset
    };
    let clarity = params(2.0);
    let refiners = JobParams {
        tile_width: 16,
        tile_height: 16,
        ..JobParams::refiners()
    };
    let daemon = Daemon::prepare_diffusion(NO_WARM_UP).start();
    let mut client = daemon.client();
    let mut warm = Vec::new();
    for first in [&clarity, &refiners] {
        client
            .upscale(image.clone(), first.clone(), |_| {})
            .unwrap();
        let mut phases = Vec::new();
        let done = client
            .upscale(image.clone(), rerun(first.clone()), |p| {
                phases.push(p.phase.clone())
            })
            .unwrap();
        let names: Vec<&str> = done.timings.iter().map(|t| t.name.as_str()).collect();
        for skipped in ["upscale", "encode"] {
            assert!(
                !names.contains(&skipped) && !phases.iter().any(|p| p == skipped),
                "{skipped} ran again: {names:?} {phases:?}"
            );
        }
        assert!(names.contains(&"reuse"), "{names:?}");
        warm.push(done.image);
    }
    // No cache at all: every job computes everything.
    let cold = Daemon::prepare_diffusion(&format!("{NO_WARM_UP}[cache]\nmax_bytes = 0\n")).start();
    let mut cold = cold.client();
    for (first, kept) in [&clarity, &refiners].into_iter().zip(warm) {
        let reference = cold
            .upscale(image.clone(), rerun(first.clone()), |_| {})
            .unwrap();
        let names: Vec<&str> = reference.timings.iter().map(|t| t.name.as_str()).collect();
        assert!(
            names.contains(&"upscale") && !names.contains(&"reuse"),
            "{names:?}"
        );
        assert_eq!(
            reference.image, kept,
            "a re-run gives the bytes of a cold run"
        );
    }
}

/// Mean absolute difference, in 8-bit levels, between `region` of an RGB 8-bit `whole` and
/// `part` (an image of the region's size).
fn region_difference(whole: &Image, region: Region, part: &Image) -> f64 {
    let mut sum = 0.0;
    for y in 0..region.height {
        for x in 0..region.width {
            for c in 0..3 {
                let at = |image: &Image, x: u32, y: u32| {
                    f64::from(image.data[((y * image.width + x) * 3 + c) as usize])
                };
                sum += (at(whole, region.x + x, region.y + y) - at(part, x, y)).abs();
            }
        }
    }
    sum / f64::from(region.width * region.height * 3)
}

fn crop(image: &Image, region: Region) -> Image {
    let mut data = Vec::new();
    for y in region.y..region.y + region.height {
        let start = ((y * image.width + region.x) * 3) as usize;
        data.extend_from_slice(&image.data[start..start + region.width as usize * 3]);
    }
    Image {
        width: region.width,
        height: region.height,
        data,
        ..image.clone()
    }
}

#[test]
fn a_preview_looks_like_the_same_region_of_the_whole_job() {
    let image = test_image(160, 120);
    let region = Region {
        x: 132,
        y: 100,
        width: 64,
        height: 48,
    };
    let preview_of = |client: &mut tessera::cli::client::Client| {
        let mut tiles = 0;
        let done = client
            .upscale(
                image.clone(),
                JobParams {
                    preview: Some(region),
                    ..params(2.0)
                },
                |p| {
                    if p.phase == "denoise" {
                        tiles = tiles.max(p.tiles)
                    }
                },
            )
            .unwrap();
        (done.image, tiles)
    };
    // With the context of the whole picture, the crop is the whole input: the same latents,
    // the same noise at the same places, the same bytes.
    let whole_context =
        Daemon::prepare_diffusion(&format!("{NO_WARM_UP}[preview]\ncontext = 400\n")).start();
    let mut client = whole_context.client();
    let mut whole_tiles = 0;
    let whole = client
        .upscale(image.clone(), params(2.0), |p| {
            if p.phase == "denoise" {
                whole_tiles = whole_tiles.max(p.tiles)
            }
        })
        .unwrap();
    let (exact, _) = preview_of(&mut client);
    assert_eq!(exact, crop(&whole.image, region));
    // 32 pixels of context: a crop of 72 × 64 input pixels whose diffusion runs fewer tiles;
    // the region is close to the whole job's (7.4 levels of 255 on average with these tiny
    // random networks), far closer than the same job with another seed (51).
    let daemon =
        Daemon::prepare_diffusion(&format!("{NO_WARM_UP}[preview]\ncontext = 32\n")).start();
    let mut client = daemon.client();
    let (preview, tiles) = preview_of(&mut client);
    assert_eq!((preview.width, preview.height), (64, 48));
    assert!(tiles < whole_tiles, "{tiles} tiles vs {whole_tiles}");
    let other_seed = client
        .upscale(
            image.clone(),
            JobParams {
                seed: 1338,
                ..params(2.0)
            },
            |_| {},
        )
        .unwrap();
    let off = region_difference(&whole.image, region, &preview);
    let seed = region_difference(&whole.image, region, &crop(&other_seed.image, region));
    eprintln!("preview vs whole job: {off:.3} levels; another seed: {seed:.3}");
    assert!(
        off < 0.2 * seed && off < 10.0,
        "the preview differs from the whole job by {off:.3} levels on average (another seed: {seed:.3})"
    );
    let outside = Region { x: 300, ..region };
    match client.submit(
        image,
        JobParams {
            preview: Some(outside),
            ..params(2.0)
        },
    ) {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::InvalidParams);
            assert!(
                e.message.contains("inside the 320×240 result"),
                "{}",
                e.message
            );
        }
        other => panic!("expected InvalidParams, got {other:?}"),
    }
}

#[test]
fn the_time_left_is_given_from_the_start_and_goes_down() {
    let daemon = Daemon::prepare_diffusion(NO_WARM_UP).start();
    let mut client = daemon.client();
    let mut watcher = daemon.client();
    let mut run = |image: Image| {
        let mut events: Vec<(String, Option<f32>)> = Vec::new();
        let mut status_eta = None;
        client
            .upscale(image, params(4.0), |p| {
                events.push((p.phase.clone(), p.eta_seconds));
                if p.phase == "denoise" && status_eta.is_none() {
                    status_eta = Some(watcher.status().unwrap().running_eta_seconds);
                }
            })
            .unwrap();
        (events, status_eta.flatten())
    };
    // The machine's first job: an estimate once its first calls are timed.
    let (first, _) = run(test_image(64, 48));
    let rates = daemon.dir.path().join("cache/rates.json");
    assert!(rates.is_file(), "the job's rates are kept");
    assert!(
        first
            .iter()
            .filter(|(p, _)| p == "denoise")
            .all(|(_, eta)| eta.is_some())
    );
    // The next job (another picture, so nothing comes from the re-run cache) has one from its
    // first call on, from the past job's rates, and it goes down.
    let (events, status_eta) = run(test_image(56, 40));
    let work: Vec<f32> = events
        .iter()
        .filter(|(phase, _)| phase != "load" && phase != "finish")
        .map(|(phase, eta)| eta.unwrap_or_else(|| panic!("no estimate during {phase}")))
        .collect();
    assert!(work.len() > 10, "{events:?}");
    let falling = work.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(
        falling * 4 >= (work.len() - 1) * 3,
        "the estimate mostly goes down: {work:?}"
    );
    assert!(
        work.last().unwrap() < &(0.2 * work[0]),
        "it ends near zero: {work:?}"
    );
    assert!(status_eta.is_some(), "tessera status shows it too");
}

#[test]
fn a_cancel_takes_effect_within_one_network_call() {
    let daemon = Daemon::prepare_diffusion("").start();
    let mut client = daemon.client();
    let accepted = client.submit(test_image(64, 48), params(4.0)).unwrap();
    let canceller = client.canceller();
    let mut after_cancel = None::<usize>;
    let mut cancelled_at = None::<Instant>;
    let outcome = client.wait(accepted.job, |p| match after_cancel.as_mut() {
        Some(n) => *n += 1,
        None if p.phase == "denoise" => {
            canceller.cancel(accepted.job).unwrap();
            cancelled_at = Some(Instant::now());
            after_cancel = Some(0);
        }
        None => {}
    });
    match outcome {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::Cancelled),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    // The call running when the cancel arrived may still report; nothing after it.
    assert!(
        after_cancel.unwrap() <= 1,
        "{after_cancel:?} reports after the cancel"
    );
    assert!(cancelled_at.unwrap().elapsed() < Duration::from_secs(10));
}

#[test]
fn batch_size_and_threads_do_not_change_a_byte() {
    let image = test_image(40, 24);
    let mut results = Vec::new();
    for (config, threads) in [
        ("[diffusion]\ntile_batch = 8\n", "2"),
        ("[diffusion]\ntile_batch = 1\n", "1"),
    ] {
        let mut daemon = Daemon::prepare_diffusion(config);
        daemon.restart_with(&["serve", "--threads", threads]);
        let done = daemon
            .client()
            .upscale(image.clone(), params(4.0), |_| {})
            .unwrap();
        results.push(done.image);
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn a_missing_checkpoint_is_named_with_how_to_get_it() {
    let daemon = Daemon::prepare("").start();
    let mut client = daemon.client();
    match client.submit(test_image(8, 8), JobParams::default()) {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::ModelNotFound);
            assert!(
                e.message.contains("juggernaut_reborn.safetensors")
                    && e.message.contains("tessera-install"),
                "{}",
                e.message
            );
        }
        other => panic!("expected ModelNotFound, got {other:?}"),
    }
    // Clarity at creativity 0 still diffuses (A1111 evaluates once), so it needs the models
    // too; the Refiners preset at creativity 0 is the upscaler alone, which needs none.
    let clarity_at_0 = JobParams {
        creativity: 0.0,
        upscaler: Some("tiny-x4".into()),
        ..JobParams::default()
    };
    match client.submit(test_image(8, 8), clarity_at_0.clone()) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::ModelNotFound),
        other => panic!("expected ModelNotFound, got {other:?}"),
    }
    let done = client
        .upscale(
            test_image(8, 8),
            JobParams {
                preset: tessera_protocol::Preset::Refiners,
                ..clarity_at_0
            },
            |_| {},
        )
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (16, 16));
}

#[test]
fn clarity_at_creativity_0_runs_the_vae_round_trip_and_one_evaluation() {
    let daemon = Daemon::prepare_diffusion("").start();
    let mut client = daemon.client();
    let mut events: Vec<Progress> = Vec::new();
    let done = client
        .upscale(
            test_image(48, 40),
            JobParams {
                creativity: 0.0,
                ..params(2.0)
            },
            |p| events.push(p.clone()),
        )
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (96, 80));
    for phase in ["encode", "denoise", "decode"] {
        assert!(done.timings.iter().any(|t| t.name == phase), "{phase}");
    }
    assert!(
        events
            .iter()
            .filter(|e| e.phase == "denoise")
            .all(|e| e.steps == 1),
        "one evaluation"
    );
}

#[test]
fn the_checkpoint_vae_stands_in_for_a_missing_vae() {
    let mut daemon = Daemon::prepare_diffusion(NO_WARM_UP).start();
    let mut client = daemon.client();
    let image = test_image(24, 16);
    // The fixture's VAE in models/vae/ is the checkpoint's own, so both give the same bytes.
    let with_file = client.upscale(image.clone(), params(2.0), |_| {}).unwrap();
    if cfg!(windows) {
        // ONNX Runtime maps a loaded model's weights file, and Windows refuses to delete a
        // mapped file: the daemon has to let go of it first (docs/windows.md).
        client.shutdown().unwrap();
        assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    }
    std::fs::remove_dir_all(daemon.dir.path().join("models/vae/tiny-clarity")).unwrap();
    if cfg!(windows) {
        daemon.restart();
        client = daemon.client();
    }
    match client.submit(image.clone(), params(2.0)) {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::ModelNotFound);
            assert!(e.message.contains("--vae checkpoint"), "{}", e.message);
        }
        other => panic!("expected ModelNotFound, got {other:?}"),
    }
    let own = client
        .upscale(
            image,
            JobParams {
                vae: Some("checkpoint".into()),
                ..params(2.0)
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(own.image.data, with_file.image.data);
}
