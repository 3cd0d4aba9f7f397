//! Faults on the client side, over the real socket: a client process killed (SIGKILL) in the
//! middle of uploading an image, of its running job and of downloading its result, and a
//! client that sends but never reads. Each must cost the daemon nothing lasting: the other
//! clients are served, the dead client's work is dropped, and memory stays bounded.
//!
//! The killed clients are this test binary run again as a child in a "role" (the ignored
//! `role_*` tests, which do nothing unless `TESSERA_E2E_ROLE_SOCKET` is set): the child gets
//! to the point of interest, says so on stdout and waits to be killed.
//!
//! Everything here runs on Windows too (named pipes, the child killed with
//! `TerminateProcess`), but for the never-reading client, whose writer thread a Unix socket's
//! `shutdown` unblocks.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera::cli::client::Client;
use tessera::server::socket::{self, SharedStream};
use tessera_e2e::{Daemon, address_of, mib, test_image};
use tessera_protocol::{
    Handshake, Image, JobParams, Message, PROTOCOL_VERSION, Submit, read_frame, write_frame,
};

const ROLE_SOCKET: &str = "TESSERA_E2E_ROLE_SOCKET";

fn params() -> JobParams {
    JobParams::upscaler_only(4.0, Some("tiny-x4".into()))
}

fn frame(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_frame(&mut bytes, message).unwrap();
    bytes
}

fn submit(request: u64, image: Image) -> Vec<u8> {
    frame(&Message::Submit(Submit {
        request,
        image,
        params: params(),
    }))
}

/// A raw connection to the daemon that `socket` (a `TESSERA_SOCKET` value) names.
fn connect(socket: &str) -> SharedStream {
    let address = address_of(std::path::Path::new(socket));
    SharedStream::new(socket::connect(&address).unwrap())
}

/// A raw connection that has sent its handshake (and, if `read_reply`, read the daemon's).
fn raw(socket: &str, read_reply: bool) -> SharedStream {
    let mut stream = connect(socket);
    stream
        .write_all(&frame(&Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION,
            agent: "e2e-fault".into(),
        })))
        .unwrap();
    if read_reply {
        assert!(matches!(
            read_frame(&mut stream, 1 << 20).unwrap(),
            Message::Handshake(_)
        ));
    }
    stream
}

/// Reads one frame header; returns the payload length and the message tag.
fn frame_head(stream: &mut SharedStream) -> (usize, u32) {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    (len, u32::from_le_bytes(head[4..].try_into().unwrap()))
}

/// What a role child prints when it is where it should be killed.
const READY: &str = "ROLE-READY";

/// Tells the parent that the child is ready, and waits to be killed.
fn ready_and_wait() -> ! {
    // On a line of its own: the test harness has printed the test's name without a newline.
    println!("\n{READY}");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
#[ignore = "a role for a child process of the fault tests"]
fn role_uploader() {
    let Ok(socket) = std::env::var(ROLE_SOCKET) else {
        return;
    };
    let mut stream = raw(&socket, true);
    let bytes = submit(1, test_image(512, 512));
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();
    ready_and_wait();
}

#[test]
#[ignore = "a role for a child process of the fault tests"]
fn role_job_owner() {
    let Ok(socket) = std::env::var(ROLE_SOCKET) else {
        return;
    };
    let mut stream = raw(&socket, true);
    stream.write_all(&submit(1, test_image(640, 640))).unwrap();
    loop {
        if let Message::Progress(_) = read_frame(&mut stream, 1 << 20).unwrap() {
            ready_and_wait();
        }
    }
}

#[test]
#[ignore = "a role for a child process of the fault tests"]
fn role_downloader() {
    let Ok(socket) = std::env::var(ROLE_SOCKET) else {
        return;
    };
    let mut stream = raw(&socket, true);
    stream.write_all(&submit(1, test_image(200, 200))).unwrap();
    loop {
        let (len, tag) = frame_head(&mut stream);
        let mut rest = vec![0u8; len - 4];
        if tag == 5 {
            // Done: take a first slice of the result, then stop reading.
            stream.read_exact(&mut rest[..64 * 1024]).unwrap();
            ready_and_wait();
        }
        stream.read_exact(&mut rest).unwrap();
    }
}

/// Runs this test binary as a child in `role`, waits for its `ready`, then kills it.
fn kill_child_when_ready(daemon: &Daemon, role: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            role,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_SOCKET, &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == READY);
    assert!(ready, "the {role} child got ready");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until the probe is the only client and the engine is idle.
fn wait_until_alone_and_idle(probe: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = probe.status().unwrap();
        if (status.clients, status.running, status.queued) == (1, None, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon kept the dead client's work: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn still_serves(probe: &mut Client) {
    let done = probe.upscale(test_image(16, 8), params(), |_| {}).unwrap();
    assert_eq!((done.image.width, done.image.height), (64, 32));
}

#[test]
fn a_client_killed_mid_upload_costs_nothing() {
    let daemon = Daemon::with_small_tiles();
    let mut probe = daemon.client();
    kill_child_when_ready(&daemon, "role_uploader");
    wait_until_alone_and_idle(&mut probe);
    still_serves(&mut probe);
}

#[test]
fn a_client_killed_mid_job_gets_its_job_stopped() {
    let daemon = Daemon::with_small_tiles();
    let mut probe = daemon.client();
    kill_child_when_ready(&daemon, "role_job_owner");
    // The 640×640 job would take many seconds; it stops at its next tile instead.
    wait_until_alone_and_idle(&mut probe);
    still_serves(&mut probe);
}

#[test]
fn a_client_killed_mid_download_frees_its_result() {
    let daemon = Daemon::with_small_tiles();
    let mut probe = daemon.client();
    // The same job once, so that the idle level includes its warm-up.
    probe
        .upscale(test_image(200, 200), params(), |_| {})
        .unwrap();
    let idle = daemon.rss_bytes();
    kill_child_when_ready(&daemon, "role_downloader");
    wait_until_alone_and_idle(&mut probe);
    still_serves(&mut probe);
    let after = daemon.rss_bytes();
    eprintln!(
        "killed mid-download: memory idle {}, after {}",
        mib(idle),
        mib(after)
    );
    assert!(
        after < idle + (8 << 20),
        "the unsent result stayed in memory"
    );
}

/// Waits until no job is running or queued.
#[cfg(unix)]
fn wait_until_idle(probe: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = probe.status().unwrap();
        if (status.running, status.queued) == (None, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the engine stayed busy: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_that_never_shake_hands_are_closed() {
    let daemon = Daemon::with_small_tiles();
    let mut probe = daemon.client();
    let socket = daemon.socket.to_str().unwrap();
    let silent = connect(socket);
    let mut stalled = connect(socket);
    stalled.write_all(&[10, 0]).unwrap(); // half a length prefix, then nothing
    // The daemon closes both after its handshake timeout (10 s).
    for mut stream in [silent, stalled] {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).unwrap(), 0, "closed without a word");
    }
    wait_until_alone_and_idle(&mut probe);
    still_serves(&mut probe);
}

/// Waits until `counter` stops moving for a while: the daemon no longer reads the writer.
#[cfg(unix)]
fn wait_until_stuck(counter: &std::sync::atomic::AtomicU64) -> u64 {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (counter.load(Ordering::SeqCst), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = counter.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never stopped reading"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_client_that_never_reads_blocks_nobody_and_is_held_to_its_limits() {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tessera_e2e::RssSampler;
    let daemon =
        Daemon::prepare("[limits]\nmax_jobs_per_client = 3\n[upscale]\ntile = 64\noverlap = 4\n")
            .start();
    let mut other = daemon.client();
    // Warm up with the never-reader's job size, so that idle includes it.
    other
        .upscale(test_image(256, 256), params(), |_| {})
        .unwrap();
    let idle = daemon.rss_bytes();
    let sampler = RssSampler::start(daemon.pid());

    // Twelve jobs whose results (3 MiB each) it never reads, each submitted once the engine is
    // idle again, so that without a limit every one would be accepted and its result kept.
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(&frame(&Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION,
            agent: "e2e-fault".into(),
        })))
        .unwrap();
    for request in 0..12 {
        stream
            .write_all(&submit(request, test_image(256, 256)))
            .unwrap();
        wait_until_idle(&mut other);
    }
    // Then 100 000 status requests, still without reading a byte.
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (mut stream, sent) = (stream.try_clone().unwrap(), sent.clone());
        std::thread::spawn(move || {
            let request = frame(&Message::GetStatus);
            for _ in 0..100_000 {
                if stream.write_all(&request).is_err() {
                    return;
                }
                sent.fetch_add(request.len() as u64, Ordering::SeqCst);
            }
        })
    };
    let pushed = wait_until_stuck(&sent);
    assert!(
        !writer.is_finished(),
        "the daemon read the whole flood while its replies piled up"
    );

    // Another client is served as usual meanwhile.
    for _ in 0..3 {
        let done = other.upscale(test_image(32, 16), params(), |_| {}).unwrap();
        assert_eq!(done.image.width, 128);
    }
    let status = other.status().unwrap();
    assert_eq!(
        (status.clients, status.running, status.queued),
        (2, None, 0)
    );
    // What the daemon holds for it now, with the engine idle: three unsent results (the job
    // limit) and a few dozen small replies. Without the limits it would be twelve results
    // and a hundred thousand replies.
    let held = daemon.rss_bytes();
    let peak = sampler.peak();
    eprintln!(
        "never-reading client: 12 jobs with 3 MiB results, then {} KiB of status requests \
         before its own writes blocked; daemon memory idle {}, while held {}, peak {} \
         (peak includes the running jobs' working memory)",
        pushed / 1024,
        mib(idle),
        mib(held),
        mib(peak)
    );
    assert!(
        held < idle + (20 << 20),
        "the daemon holds {} for it (idle {})",
        mib(held),
        mib(idle)
    );

    // When it finally goes away, everything it held is released.
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    writer.join().unwrap();
    wait_until_alone_and_idle(&mut other);
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.rss_bytes() > idle + (8 << 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.rss_bytes() <= idle + (8 << 20),
        "memory stayed at {} after the client left (idle {})",
        mib(daemon.rss_bytes()),
        mib(idle)
    );
    still_serves(&mut other);
}
