//! Bad input over the real socket: each gets a typed error, and the daemon
//! goes on serving the next client.

use std::io::{Read, Write};
use tessera::cli::client::{Client, ClientError};
use tessera::server::socket;
use tessera_e2e::{Daemon, fixture, test_image};
use tessera_protocol::{
    ErrorKind, Handshake, JobParams, Message, PROTOCOL_VERSION, encode, read_frame, write_frame,
};

fn params(model: &str) -> JobParams {
    JobParams::upscaler_only(4.0, Some(model.into()))
}

/// A raw connection that has done the handshake.
fn raw(daemon: &Daemon) -> socket::SharedStream {
    let mut stream = socket::SharedStream::new(socket::connect(&daemon.address()).unwrap());
    write_frame(
        &mut stream,
        &Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION,
            agent: "e2e-raw".into(),
        }),
    )
    .unwrap();
    assert!(matches!(
        read_frame(&mut stream, 1 << 20).unwrap(),
        Message::Handshake(_)
    ));
    stream
}

fn still_serves(daemon: &Daemon) {
    let done = daemon
        .client()
        .upscale(test_image(8, 8), params("tiny-x4"), |_| {})
        .expect("the daemon still serves");
    assert_eq!(done.image.width, 32);
}

fn rejected(daemon: &Daemon, image: tessera_protocol::Image, model: &str) -> ErrorKind {
    match daemon.client().submit(image, params(model)) {
        Err(ClientError::Daemon(e)) => e.kind,
        other => panic!("expected a rejection, got {:?}", other.map(|a| a.job)),
    }
}

#[test]
fn a_truncated_frame_only_ends_that_connection() {
    let daemon = Daemon::with_small_tiles();
    let mut stream = raw(&daemon);
    stream.write_all(&100u32.to_le_bytes()).unwrap();
    stream.write_all(&[0u8; 10]).unwrap();
    drop(stream);
    still_serves(&daemon);
}

#[test]
fn an_oversized_length_prefix_is_refused_before_reading() {
    let daemon =
        Daemon::prepare("[limits]\nmax_frame_bytes = 65536\n[upscale]\ntile = 32\noverlap = 4\n")
            .start();
    let mut stream = raw(&daemon);
    stream.write_all(&(1u32 << 31).to_le_bytes()).unwrap();
    match read_frame(&mut stream, 1 << 20).unwrap() {
        Message::Error(e) => {
            assert_eq!(e.kind, ErrorKind::FrameTooLarge);
            assert!(e.message.contains("65536"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Then the daemon closes this connection.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
    still_serves(&daemon);
}

#[test]
fn a_malformed_message_gets_a_protocol_error() {
    let daemon = Daemon::with_small_tiles();
    let mut stream = raw(&daemon);
    let mut payload = encode(&Message::GetStatus);
    payload[0] = 200; // no such message
    stream
        .write_all(&(payload.len() as u32).to_le_bytes())
        .unwrap();
    stream.write_all(&payload).unwrap();
    assert!(
        matches!(read_frame(&mut stream, 1 << 20).unwrap(), Message::Error(e) if e.kind == ErrorKind::Protocol)
    );
    still_serves(&daemon);
}

#[test]
fn a_wrong_protocol_version_gets_a_typed_error_not_a_hang() {
    let daemon = Daemon::with_small_tiles();
    let mut stream = socket::SharedStream::new(socket::connect(&daemon.address()).unwrap());
    write_frame(
        &mut stream,
        &Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION + 41,
            agent: "from-the-future 9.0".into(),
        }),
    )
    .unwrap();
    match read_frame(&mut stream, 1 << 20).unwrap() {
        Message::Error(e) => {
            assert_eq!(e.kind, ErrorKind::VersionMismatch);
            assert!(e.message.contains("from-the-future"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    still_serves(&daemon);
}

#[test]
fn images_whose_bytes_do_not_match_their_size_are_rejected() {
    let daemon = Daemon::with_small_tiles();
    let mut short = test_image(8, 8);
    short.data.pop();
    assert_eq!(rejected(&daemon, short, "tiny-x4"), ErrorKind::InvalidImage);
    let mut empty = test_image(8, 8);
    empty.width = 0;
    empty.data.clear();
    assert_eq!(rejected(&daemon, empty, "tiny-x4"), ErrorKind::InvalidImage);
    assert_eq!(
        rejected(&daemon, test_image(8, 8), "no-such-model"),
        ErrorKind::ModelNotFound
    );
    still_serves(&daemon);
}

#[test]
fn corrupt_and_hostile_model_files_fail_their_job_only() {
    let daemon = Daemon::with_small_tiles();
    let upscalers = daemon.dir.path().join("models/upscalers");
    std::fs::copy(
        fixture("esrgan/truncated.safetensors"),
        upscalers.join("corrupt.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("esrgan/foreign-global.pth"),
        upscalers.join("hostile.pth"),
    )
    .unwrap();
    let mut client = daemon.client();
    for (model, needle) in [("corrupt", "corrupt"), ("hostile", "system")] {
        match client.upscale(test_image(8, 8), params(model), |_| {}) {
            Err(ClientError::Daemon(e)) => {
                assert_eq!(e.kind, ErrorKind::ModelInvalid, "{model}: {e}");
                assert!(e.message.contains(needle), "{model}: {}", e.message);
            }
            other => panic!(
                "{model}: expected a failure, got {:?}",
                other.map(|d| d.job)
            ),
        }
    }
    still_serves(&daemon);
}

#[test]
fn a_client_that_speaks_first_out_of_turn_is_told_so() {
    let daemon = Daemon::with_small_tiles();
    let mut stream = socket::SharedStream::new(socket::connect(&daemon.address()).unwrap());
    write_frame(&mut stream, &Message::GetStatus).unwrap();
    assert!(
        matches!(read_frame(&mut stream, 1 << 20).unwrap(), Message::Error(e) if e.kind == ErrorKind::Protocol)
    );
    // A well-behaved client is unaffected.
    assert!(
        Client::connect(&daemon.address(), "after")
            .unwrap()
            .status()
            .is_ok()
    );
}
