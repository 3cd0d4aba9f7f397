//! The daemon over its real socket: jobs, progress, cancel, clients that
//! leave, single instance, shutdown.

use std::time::Duration;
use tessera::cli::client::ClientError;
use tessera_e2e::{Daemon, test_image};
use tessera_protocol::{ErrorKind, JobParams, Message};

fn params() -> JobParams {
    JobParams::upscaler_only(4.0, Some("tiny-x4".into()))
}

#[test]
fn a_job_returns_a_4x_image_with_ordered_progress() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let mut events = Vec::new();
    let done = client
        .upscale(test_image(70, 40), params(), |p| events.push(p.clone()))
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (280, 160));
    assert_eq!(done.image.data.len(), 280 * 160 * 3);
    // 70×40 in 32-pixel tiles with 4 overlap: a 3×2 grid. Progress a client has
    // not read yet is coalesced, so count tiles from the totals.
    let last_tile = events
        .iter()
        .rfind(|e| e.phase == "upscale")
        .expect("upscale progress");
    assert!(
        last_tile.tiles >= 6 && last_tile.tile == last_tile.tiles,
        "{last_tile:?}"
    );
    assert!(
        events.windows(2).all(|w| w[0].fraction <= w[1].fraction),
        "fractions never go back"
    );
    assert!(events.iter().all(|e| e.tile >= 1 && e.tile <= e.tiles));
    assert_eq!(events.last().unwrap().fraction, 1.0);
    let names: Vec<_> = done.timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["load", "upscale", "resize"]);
}

#[test]
fn non_integer_scales_and_alpha_come_back_in_the_input_format() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let mut image = test_image(20, 10);
    // RGBA, 16-bit: every input sample widened, alpha a ramp.
    let rgb = image.data.clone();
    image.channels = tessera_protocol::Channels::Rgba;
    image.sample = tessera_protocol::SampleFormat::U16;
    image.data = rgb
        .chunks(3)
        .enumerate()
        .flat_map(|(i, px)| {
            let alpha = (i * 65535 / 199) as u16;
            [
                px[0] as u16 * 257,
                px[1] as u16 * 257,
                px[2] as u16 * 257,
                alpha,
            ]
            .into_iter()
            .flat_map(u16::to_le_bytes)
        })
        .collect();
    let done = client
        .upscale(
            image,
            JobParams {
                scale: 2.5,
                ..params()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!((done.image.width, done.image.height), (50, 25));
    assert_eq!(done.image.channels, tessera_protocol::Channels::Rgba);
    assert_eq!(done.image.sample, tessera_protocol::SampleFormat::U16);
    let alpha = |x: usize, y: usize| {
        let at = (y * 50 + x) * 8 + 6;
        u16::from_le_bytes([done.image.data[at], done.image.data[at + 1]])
    };
    assert!(alpha(1, 1) < alpha(48, 23), "the alpha ramp survives");
}

#[test]
fn cancel_drops_a_queued_job_and_stops_a_running_one() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let canceller = client.canceller();
    let running = client.submit(test_image(640, 640), params()).unwrap();
    let queued = client.submit(test_image(16, 16), params()).unwrap();
    assert_eq!(queued.position, 1);
    canceller.cancel(queued.job).unwrap();
    // Wait until the first job is really running, then stop it.
    let mut saw_progress = false;
    let mut outcome = Vec::new();
    while outcome.len() < 2 {
        match client.read().unwrap() {
            Message::Progress(p) if p.job == running.job && !saw_progress => {
                saw_progress = true;
                canceller.cancel(running.job).unwrap();
            }
            Message::Progress(_) => {}
            Message::Failed(f) => outcome.push((f.job, f.error.kind)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_progress);
    outcome.sort_by_key(|(job, _)| *job);
    assert_eq!(
        outcome,
        [
            (running.job, ErrorKind::Cancelled),
            (queued.job, ErrorKind::Cancelled)
        ]
    );
    // The engine is free again at once.
    let done = client.upscale(test_image(8, 8), params(), |_| {}).unwrap();
    assert_eq!(done.image.width, 32);
    let status = client.status().unwrap();
    assert_eq!((status.running, status.queued), (None, 0));
}

#[test]
fn a_client_that_disconnects_mid_job_disturbs_nobody() {
    let daemon = Daemon::with_small_tiles();
    let mut leaver = daemon.client();
    let gone = leaver.submit(test_image(640, 640), params()).unwrap();
    // Make sure it is on the engine before vanishing.
    loop {
        if let Message::Progress(p) = leaver.read().unwrap() {
            assert_eq!(p.job, gone.job);
            break;
        }
    }
    drop(leaver);
    let mut stayer = daemon.client();
    let done = stayer
        .upscale(test_image(24, 24), params(), |_| {})
        .unwrap();
    assert_eq!(done.image.width, 96);
    let status = stayer.status().unwrap();
    assert_eq!(
        (status.running, status.queued, status.clients),
        (None, 0, 1)
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = Daemon::with_small_tiles();
    let output = daemon.command(["serve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        daemon.client().status().is_ok(),
        "the first daemon still serves"
    );
}

#[cfg(unix)]
#[test]
fn the_socket_belongs_to_its_user_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let daemon = Daemon::with_small_tiles();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_shutdown_message_stops_the_daemon_cleanly() {
    let mut daemon = Daemon::with_small_tiles();
    let mut watcher = daemon.client();
    daemon.client().shutdown().unwrap();
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(matches!(
        watcher.read(),
        Ok(Message::ShuttingDown) | Err(ClientError::Closed)
    ));
    assert!(!daemon.socket_present(), "the socket is gone");
    // And a new daemon starts on the same socket straight away.
    daemon.restart();
    assert!(daemon.client().status().is_ok());
}

#[cfg(unix)]
#[test]
fn sigterm_mid_job_fails_the_job_and_exits_cleanly() {
    let mut daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let job = client.submit(test_image(640, 640), params()).unwrap().job;
    loop {
        if let Message::Progress(_) = client.read().unwrap() {
            break;
        }
    }
    let pid = daemon.child().id() as i32;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut failed = None;
    loop {
        match client.read() {
            Ok(Message::Failed(f)) => failed = Some(f),
            Ok(Message::ShuttingDown) | Err(ClientError::Closed) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let failed = failed.expect("the running job gets a terminal message");
    assert_eq!(
        (failed.job, failed.error.kind),
        (job, ErrorKind::ShuttingDown)
    );
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn the_daemon_logs_to_the_data_dir() {
    let daemon = Daemon::with_small_tiles();
    daemon
        .client()
        .upscale(test_image(8, 8), params(), |_| {})
        .unwrap();
    let logs = daemon.dir.path().join("logs");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text: String = std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("tessera."))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        if text.contains("listening on") && text.contains("job 1 done") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log so far:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn replies_and_results_are_found_behind_other_jobs_events() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let first = client.submit(test_image(6, 6), params()).unwrap();
    // Once the first job has finished, its events are on the wire ahead of the
    // replies that follow; the status replies below already come after some of them.
    loop {
        let status = client.status().unwrap();
        if status.running.is_none() && status.queued == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = client.submit(test_image(5, 5), params()).unwrap();
    // Waiting for the second job first must not lose the first one's result.
    assert_eq!(client.wait(second.job, |_| {}).unwrap().image.width, 20);
    assert_eq!(client.wait(first.job, |_| {}).unwrap().image.width, 24);
}
