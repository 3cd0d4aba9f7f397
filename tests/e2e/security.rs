//! Security over the real socket: only the daemon's user gets in (file mode, and the peer's
//! uid where the socket is reachable anyway); no model name reaches a file outside the
//! models folder; symlinks the user put in the models folder are followed (the documented
//! policy); and model files built to crash the unpickler fail their job only.
#![cfg(unix)]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tessera::cli::client::{Client, ClientError};
use tessera_e2e::{Daemon, fixture, repo_root, test_image};
use tessera_protocol::{ErrorKind, Handshake, JobParams, Message, PROTOCOL_VERSION, write_frame};

/// The uid of `nobody` on Debian and most Linux systems.
const NOBODY: u32 = 65534;

/// What a connection attempt from another user came to.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// `connect` itself failed (the file mode or folder kept the user out).
    Refused,
    /// Connected, but the daemon closed without answering the handshake.
    Dropped,
    /// The daemon answered.
    Answered,
    /// The child could not become the other user, or got no answer in 10 s.
    Error(i32),
}

/// Forks a child that becomes `uid`, connects to `socket` and sends a handshake.
fn connect_as(uid: u32, socket: &Path) -> Reach {
    let mut hello = Vec::new();
    write_frame(
        &mut hello,
        &Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION,
            agent: "another user".into(),
        }),
    )
    .unwrap();
    // SAFETY: an all-zero sockaddr_un is valid; the path fits (checked below).
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < address.sun_path.len());
    for (slot, byte) in address.sun_path.iter_mut().zip(path) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: between fork and _exit the child makes only async-signal-safe system calls on
    // memory prepared before the fork; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(20);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let timeout = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let connected = libc::connect(
                fd,
                (&address as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if connected != 0 {
                libc::_exit(10);
            }
            libc::send(fd, hello.as_ptr().cast(), hello.len(), libc::MSG_NOSIGNAL);
            let mut reply = [0u8; 4];
            let n = libc::read(fd, reply.as_mut_ptr().cast(), reply.len());
            libc::_exit(match n {
                0 => 11,
                n if n > 0 => 12,
                _ if *libc::__errno_location() == libc::ECONNRESET => 11,
                _ => 21,
            });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        match libc::WEXITSTATUS(status) {
            10 => Reach::Refused,
            11 => Reach::Dropped,
            12 => Reach::Answered,
            code => Reach::Error(code),
        }
    }
}

#[test]
fn only_the_daemons_user_gets_in() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: becoming another user needs root");
        return;
    }
    let daemon = Daemon::with_small_tiles();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.socket), 0o600);
    // As installed: the socket's mode (and its folder) keep another user out.
    assert_eq!(connect_as(NOBODY, &daemon.socket), Reach::Refused);
    // Even when a careless chmod opens the way, the daemon checks the peer's uid.
    let folder = daemon.socket.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(connect_as(NOBODY, &daemon.socket), Reach::Dropped);
    // Its own user is served as ever.
    assert_eq!(connect_as(0, &daemon.socket), Reach::Answered);
    assert!(daemon.client().status().is_ok());
}

fn params(model: &str) -> JobParams {
    JobParams::upscaler_only(4.0, Some(model.into()))
}

fn outcome(client: &mut Client, model: &str) -> Result<u32, ErrorKind> {
    match client.upscale(test_image(8, 8), params(model), |_| {}) {
        Ok(done) => Ok(done.image.width),
        Err(ClientError::Daemon(e)) => Err(e.kind),
        Err(e) => panic!("{model:?}: {e}"),
    }
}

#[test]
fn no_model_name_reaches_outside_the_models_folder() {
    let daemon = Daemon::with_small_tiles();
    let root = daemon.dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let model = fixture("esrgan/tiny-x4.safetensors");
    for target in [
        root.join("secret.safetensors"),
        root.join("models/secret.safetensors"),
        root.join("models/checkpoints/secret.safetensors"),
        elsewhere.path().join("outside.safetensors"),
    ] {
        std::fs::copy(&model, target).unwrap();
    }
    let outside = elsewhere.path().join("outside.safetensors");
    let long = "../".repeat(30_000);
    let names = [
        "../secret",
        "../secret.safetensors",
        "../../secret",
        "../checkpoints/secret",
        "..",
        ".",
        "",
        "./tiny-x4",
        "tiny-x4/",
        "upscalers/tiny-x4",
        "..\\secret",
        "tiny-x4\0",
        "tiny-x4.safetensors/../../secret.safetensors",
        outside.to_str().unwrap(),
        long.as_str(),
    ];
    let mut client = daemon.client();
    for name in names {
        assert_eq!(
            outcome(&mut client, name),
            Err(ErrorKind::ModelNotFound),
            "{:?}",
            name.chars().take(60).collect::<String>()
        );
    }
    // The names that mean the model do.
    for name in ["tiny-x4", "tiny-x4.safetensors", "TINY-X4"] {
        assert_eq!(outcome(&mut client, name), Ok(32), "{name}");
    }
}

#[test]
fn symlinks_in_the_models_folder_are_followed_as_the_user_placed_them() {
    use std::os::unix::fs::symlink;
    let daemon = Daemon::with_small_tiles();
    let upscalers = daemon.dir.path().join("models/upscalers");
    let shared = tempfile::tempdir().unwrap();
    let target = shared.path().join("4x-from-another-tool.safetensors");
    std::fs::copy(fixture("esrgan/tiny-x4-new.safetensors"), &target).unwrap();
    symlink(&target, upscalers.join("linked.safetensors")).unwrap();
    symlink(shared.path(), upscalers.join("folder.safetensors")).unwrap();
    symlink(
        shared.path().join("gone.pth"),
        upscalers.join("dangling.pth"),
    )
    .unwrap();
    symlink(upscalers.join("loop-b.pth"), upscalers.join("loop-a.pth")).unwrap();
    symlink(upscalers.join("loop-a.pth"), upscalers.join("loop-b.pth")).unwrap();

    let mut client = daemon.client();
    assert_eq!(outcome(&mut client, "linked"), Ok(32));
    for broken in ["folder", "dangling", "loop-a"] {
        assert_eq!(
            outcome(&mut client, broken),
            Err(ErrorKind::ModelNotFound),
            "{broken}"
        );
    }
    let listed: Vec<(String, String)> = client
        .list_models(false)
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.file))
        .collect();
    assert_eq!(
        listed,
        [
            ("linked".into(), "upscalers/linked.safetensors".into()),
            ("tiny-x4".into(), "upscalers/tiny-x4.safetensors".into()),
        ],
        "the link is listed under its own name; broken links are not listed"
    );
}

#[test]
fn model_files_built_to_crash_the_unpickler_fail_their_job_only() {
    let daemon = Daemon::with_small_tiles();
    let upscalers = daemon.dir.path().join("models/upscalers");
    let hostile = repo_root().join("fuzz/regressions/torch_zip");
    let mut client = daemon.client();
    for entry in std::fs::read_dir(&hostile).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&path, upscalers.join(format!("{name}.pth"))).unwrap();
        assert_eq!(
            outcome(&mut client, &name),
            Err(ErrorKind::ModelInvalid),
            "{name}"
        );
    }
    assert_eq!(outcome(&mut client, "tiny-x4"), Ok(32));
}
