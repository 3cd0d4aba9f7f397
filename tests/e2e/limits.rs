//! Every limit of `[limits]` in config.toml, over the real socket: each is enforced with its
//! own typed error, the message names the setting, just under the limit is accepted, and the
//! daemon goes on serving.

use std::io::Read;
use tessera::cli::client::{Client, ClientError};
use tessera::server::socket;
use tessera_e2e::{Daemon, test_image};
use tessera_protocol::{
    Accepted, ErrorInfo, ErrorKind, Handshake, Image, JobParams, Message, PROTOCOL_VERSION, Submit,
    read_frame, write_frame,
};

fn params(scale: f32) -> JobParams {
    JobParams::upscaler_only(scale, Some("tiny-x4".into()))
}

fn start(limits: &str) -> Daemon {
    Daemon::prepare(&format!(
        "[limits]\n{limits}\n[upscale]\ntile = 32\noverlap = 4\n"
    ))
    .start()
}

/// Submits and returns the daemon's answer, passing over progress of the client's other jobs.
fn submit(client: &mut Client, image: Image, scale: f32) -> Result<Accepted, ErrorInfo> {
    client
        .send(&Message::Submit(Submit {
            request: 99,
            image,
            params: params(scale),
        }))
        .unwrap();
    loop {
        match client.read() {
            Ok(Message::Accepted(a)) => return Ok(a),
            Ok(Message::Rejected(r)) => return Err(r.error),
            Ok(Message::Progress(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn rejection(client: &mut Client, image: Image, scale: f32) -> (ErrorKind, String) {
    match submit(client, image, scale) {
        Err(e) => (e.kind, e.message),
        Ok(accepted) => panic!("expected a rejection, got job {}", accepted.job),
    }
}

fn still_serves(daemon: &Daemon) {
    let done = daemon
        .client()
        .upscale(test_image(8, 8), params(4.0), |_| {})
        .expect("the daemon still serves");
    assert_eq!(done.image.width, 32);
}

/// Sends `message` on a fresh connection (after the handshake when `handshake`), and returns
/// the daemon's error, after which the daemon must have closed the connection.
fn connection_error(daemon: &Daemon, handshake: bool, message: &Message) -> (ErrorKind, String) {
    let mut stream = socket::SharedStream::new(socket::connect(&daemon.address()).unwrap());
    if handshake {
        write_frame(
            &mut stream,
            &Message::Handshake(Handshake {
                protocol_version: PROTOCOL_VERSION,
                agent: "e2e-limits".into(),
            }),
        )
        .unwrap();
        assert!(matches!(
            read_frame(&mut stream, 1 << 20).unwrap(),
            Message::Handshake(_)
        ));
    }
    // The daemon may answer and close before reading the whole frame.
    let _ = write_frame(&mut stream, message);
    let error = match read_frame(&mut stream, 1 << 20).unwrap() {
        Message::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    };
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection is closed after the error");
    error
}

#[test]
fn frames_over_max_frame_bytes_are_refused_before_they_are_read() {
    let daemon = start("max_frame_bytes = 65536");
    // A real submission one byte over the limit.
    let mut image = test_image(100, 50);
    let overhead = tessera_protocol::encode(&Message::Submit(Submit {
        request: 1,
        image: image.clone(),
        params: params(4.0),
    }))
    .len()
        - image.data.len();
    image.data = vec![0; 65536 + 1 - overhead];
    let over = Message::Submit(Submit {
        request: 1,
        image,
        params: params(4.0),
    });
    let (kind, message) = connection_error(&daemon, true, &over);
    assert_eq!(kind, ErrorKind::FrameTooLarge);
    assert!(
        message.contains("65537") && message.contains("max_frame_bytes"),
        "{message}"
    );
    // Exactly at the limit, the frame is read (and this image then fails validation).
    let Message::Submit(mut at) = over else {
        unreachable!()
    };
    at.image.data.pop();
    let mut client = daemon.client();
    let (kind, _) = rejection(&mut client, at.image, 4.0);
    assert_eq!(kind, ErrorKind::InvalidImage);
    still_serves(&daemon);
}

#[test]
fn a_handshake_is_held_to_64_kib_whatever_the_frame_limit() {
    let daemon = start("");
    let hello = Message::Handshake(Handshake {
        protocol_version: PROTOCOL_VERSION,
        agent: "x".repeat(70_000),
    });
    let (kind, message) = connection_error(&daemon, false, &hello);
    assert_eq!(kind, ErrorKind::FrameTooLarge, "{message}");
    still_serves(&daemon);
}

#[test]
fn images_over_max_input_pixels_are_refused() {
    let daemon = start("max_input_pixels = 1000");
    let mut client = daemon.client();
    let (kind, message) = rejection(&mut client, test_image(40, 26), 4.0);
    assert_eq!(kind, ErrorKind::ImageTooLarge);
    assert!(
        message.contains("1000") && message.contains("max_input_pixels"),
        "{message}"
    );
    client
        .upscale(test_image(40, 24), params(1.0), |_| {})
        .expect("960 pixels are within the limit");
    still_serves(&daemon);
}

#[test]
fn results_over_max_output_pixels_are_refused_before_the_job_runs() {
    let daemon = start("max_output_pixels = 10000");
    let mut client = daemon.client();
    // 30×30 at ×4 is 120×120 = 14 400 pixels; at ×3, 90×90 = 8 100.
    let (kind, message) = rejection(&mut client, test_image(30, 30), 4.0);
    assert_eq!(kind, ErrorKind::ImageTooLarge);
    assert!(
        message.contains("120×120") && message.contains("max_output_pixels"),
        "{message}"
    );
    let done = client
        .upscale(test_image(30, 30), params(3.0), |_| {})
        .unwrap();
    assert_eq!(done.image.width, 90);
    still_serves(&daemon);
}

/// Submits a long job and waits until it runs, so that later jobs queue behind it.
fn occupy_engine(client: &mut Client) -> u64 {
    let job = client
        .submit(test_image(640, 640), params(4.0))
        .unwrap()
        .job;
    loop {
        if let Message::Progress(p) = client.read().unwrap() {
            assert_eq!(p.job, job);
            return job;
        }
    }
}

#[test]
fn the_queue_holds_max_queue_jobs_of_all_clients_together() {
    let daemon = start("max_queue = 2");
    let mut busy = daemon.client();
    let running = occupy_engine(&mut busy);
    let mut a = daemon.client();
    let mut b = daemon.client();
    let first = submit(&mut a, test_image(8, 8), 4.0).unwrap();
    let second = b.submit(test_image(8, 8), params(4.0)).unwrap();
    assert_eq!((first.position, second.position), (1, 2));
    let (kind, message) = rejection(&mut a, test_image(8, 8), 4.0);
    assert_eq!(kind, ErrorKind::QueueFull);
    assert!(message.contains("max_queue"), "{message}");
    // Room again once the running job is gone.
    busy.canceller().cancel(running).unwrap();
    assert!(a.wait(first.job, |_| {}).is_ok());
    assert!(b.wait(second.job, |_| {}).is_ok());
    assert!(a.upscale(test_image(8, 8), params(4.0), |_| {}).is_ok());
}

#[test]
fn each_client_holds_at_most_max_jobs_per_client() {
    let daemon = start("max_jobs_per_client = 2");
    let mut a = daemon.client();
    let running = occupy_engine(&mut a);
    let queued = submit(&mut a, test_image(8, 8), 4.0).unwrap();
    let (kind, message) = rejection(&mut a, test_image(8, 8), 4.0);
    assert_eq!(kind, ErrorKind::TooManyJobs);
    assert!(message.contains("max_jobs_per_client"), "{message}");
    // Another client is not held to this one's count.
    let mut b = daemon.client();
    let other = b.submit(test_image(8, 8), params(4.0)).unwrap();
    a.canceller().cancel(running).unwrap();
    assert!(a.wait(queued.job, |_| {}).is_ok());
    assert!(b.wait(other.job, |_| {}).is_ok());
    // With its jobs done and their results read, the client may submit again.
    assert!(a.upscale(test_image(8, 8), params(4.0), |_| {}).is_ok());
}

#[test]
fn a_bad_limit_in_config_toml_stops_the_daemon_with_the_key_named() {
    let daemon = Daemon::prepare("[limits]\nmax_queue = 0\n");
    let output = daemon.command(["serve"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits"), "{stderr}");
}

/// A client of `daemon`, once it has room for one: connections that just closed (the start's
/// probes, a client dropped a moment ago) still count until the daemon has seen them go.
fn connect_when_free(daemon: &Daemon, agent: &str) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Client::connect(&daemon.address(), agent) {
            Ok(client) => return client,
            Err(ClientError::Daemon(e))
                if e.kind == ErrorKind::TooManyConnections
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
}

#[test]
fn connections_over_max_connections_are_refused_until_one_closes() {
    let daemon = start("max_connections = 2");
    let first = connect_when_free(&daemon, "e2e-first");
    let mut second = connect_when_free(&daemon, "e2e-second");
    match Client::connect(&daemon.address(), "e2e-third") {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::TooManyConnections, "{}", e.message);
            assert!(
                e.message.contains("2 connections") && e.message.contains("max_connections"),
                "{}",
                e.message
            );
        }
        Ok(_) => panic!("a third connection was served with max_connections = 2"),
        Err(e) => panic!("expected TooManyConnections, got {e}"),
    }
    // The connected clients are served as before.
    let done = second
        .upscale(test_image(8, 8), params(4.0), |_| {})
        .expect("a connected client is still served");
    assert_eq!(done.image.width, 32);
    drop(first);
    let mut third = connect_when_free(&daemon, "e2e-third");
    third.status().expect("the freed place is served");
}
