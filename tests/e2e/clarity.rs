//! The Clarity pipeline over the real socket, on the tiny pipeline models: ×2 and ×4 jobs with
//! Clarity's default prompts (LoRA tags and the negative embedding included), alpha and 16-bit
//! images, progress with an ETA, cancel within one network call, warm models for the next
//! job, identical bytes whatever the tile batch size and thread count, and a missing model
//! explained.

use std::time::{Duration, Instant};
use tessera::cli::client::ClientError;
use tessera_e2e::{Daemon, test_image};
use tessera_protocol::{
    Channels, Done, ErrorKind, Image, JobParams, Progress, SampleFormat, Transfer,
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

#[test]
fn a_4x_job_keeps_alpha_and_16_bits_and_the_next_job_finds_the_models_warm() {
    let daemon = Daemon::prepare_diffusion("").start();
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
    // Canvases above 64 + 2·32 pixels are encoded in tiles: this job is "large".
    let daemon = Daemon::prepare_diffusion("[diffusion]\nvae_encoder_tile = 64\n").start();
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
    // Creativity 0 is the upscaler alone, which needs no SD model.
    let done = client
        .upscale(
            test_image(8, 8),
            JobParams {
                creativity: 0.0,
                upscaler: Some("tiny-x4".into()),
                ..JobParams::default()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (16, 16));
}
