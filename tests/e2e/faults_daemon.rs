//! Faults on the daemon's side, over the real socket: the daemon killed in the middle of a
//! job and started again, its data directory read-only, its cache on a file system that is
//! full or read-only while a model is converted, model files changed on disk between jobs,
//! and a stderr that nobody reads.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use tessera::cli::client::{Client, ClientError};
use tessera_e2e::{Daemon, fixture, test_image, wrap};
use tessera_protocol::{ErrorKind, Image, JobParams, Message};

fn params(model: &str) -> JobParams {
    JobParams::upscaler_only(4.0, Some(model.into()))
}

fn upscale(client: &mut Client, model: &str) -> Result<Image, ClientError> {
    client
        .upscale(test_image(24, 16), params(model), |_| {})
        .map(|done| done.image)
}

fn upscalers(daemon: &Daemon) -> PathBuf {
    daemon.dir.path().join("models/upscalers")
}

#[test]
fn a_daemon_killed_mid_job_gives_a_clear_error_and_starts_again_cleanly() {
    let mut daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let job = client
        .submit(test_image(640, 640), params("tiny-x4"))
        .unwrap()
        .job;
    loop {
        if let Message::Progress(_) = client.read().unwrap() {
            break;
        }
    }
    daemon.child().kill().unwrap(); // SIGKILL: no clean-up of any kind
    daemon.child().wait().unwrap();
    match client.wait(job, |_| {}) {
        Err(e @ ClientError::JobLost { job: lost }) => {
            assert_eq!(lost, job);
            let text = e.to_string();
            assert!(
                text.contains("went away") && text.contains("submit it again"),
                "{text}"
            );
        }
        other => panic!("expected JobLost, got {:?}", other.map(|d| d.job)),
    }
    let lock = PathBuf::from(format!("{}.lock", daemon.socket.display()));
    assert!(
        daemon.socket.exists() && lock.exists(),
        "the killed daemon left its socket and lock files"
    );
    // The next start takes over the stale socket and lock, and the job can be sent again.
    daemon.restart();
    let done = daemon
        .client()
        .upscale(test_image(64, 64), params("tiny-x4"), |_| {})
        .unwrap();
    assert_eq!(done.image.width, 256);
    let pid: u32 = std::fs::read_to_string(&lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, daemon.pid(), "the lock names the new daemon");
}

#[test]
fn a_daemon_whose_stderr_nobody_reads_keeps_serving() {
    // The harness pipes the daemon's stderr and stops reading it once the daemon listens, as
    // a plug-in that started the daemon and forgot it would. Every connection logs its agent:
    // 200 of 60 KB each are far more than a pipe holds.
    let daemon = Daemon::with_small_tiles();
    let agent = "a".repeat(60_000);
    for _ in 0..200 {
        Client::connect(&daemon.address(), &agent).unwrap();
    }
    assert_eq!(
        upscale(&mut daemon.client(), "tiny-x4").unwrap().width,
        96,
        "still serving"
    );
}

/// Multiplies every f32 of a safetensors file's data by 0.5: a different model with the same
/// size and header, as a retrained model of the same architecture would be.
fn retrained(safetensors: &[u8]) -> Vec<u8> {
    let header = 8 + u64::from_le_bytes(safetensors[..8].try_into().unwrap()) as usize;
    let mut out = safetensors[..header].to_vec();
    for value in safetensors[header..].chunks_exact(4) {
        let v = f32::from_le_bytes(value.try_into().unwrap()) * 0.5;
        out.extend(v.to_le_bytes());
    }
    out
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn a_model_rewritten_in_place_with_its_old_size_and_time_is_reloaded() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let path = upscalers(&daemon).join("tiny-x4.safetensors");
    let before = upscale(&mut client, "tiny-x4").unwrap();
    // Rewritten in place (same inode), with the size and the modification time it had, as a
    // copy that preserves times (`cp -p`, `rsync -t`) of a same-shaped model does.
    let original = std::fs::read(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let changed = retrained(&original);
    std::fs::write(&path, &changed).unwrap();
    set_mtime(&path, mtime);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        original.len() as u64
    );
    let after = upscale(&mut client, "tiny-x4").unwrap();
    std::fs::write(upscalers(&daemon).join("reference.safetensors"), &changed).unwrap();
    let reference = upscale(&mut client, "reference").unwrap();
    assert!(before != reference, "the changed model gives other pixels");
    assert!(
        after == reference,
        "the changed model was used, not the stale one"
    );
}

#[test]
fn a_model_truncated_and_rewritten_during_a_job_does_not_bring_the_daemon_down() {
    let daemon = Daemon::with_small_tiles();
    let mut client = daemon.client();
    let path = upscalers(&daemon).join("tiny-x4.safetensors");
    let original = std::fs::read(&path).unwrap();
    let job = client
        .submit(test_image(640, 640), params("tiny-x4"))
        .unwrap()
        .job;
    loop {
        if let Message::Progress(_) = client.read().unwrap() {
            break;
        }
    }
    // Truncated under the running session (as `cp` does before it writes), then rewritten
    // with another model.
    std::fs::File::create(&path).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&path, retrained(&original)).unwrap();
    // The running job ends one way or the other; the daemon lives on.
    let outcome = client.wait(job, |_| {});
    assert!(
        !matches!(outcome, Err(ClientError::JobLost { .. })),
        "the daemon died: {:?}",
        outcome.err()
    );
    let after = upscale(&mut client, "tiny-x4").unwrap();
    std::fs::write(
        upscalers(&daemon).join("reference.safetensors"),
        retrained(&original),
    )
    .unwrap();
    assert!(after == upscale(&mut client, "reference").unwrap());
}

#[test]
fn models_replaced_by_rename_or_copy_are_reloaded_and_reconverted() {
    let daemon = Daemon::with_small_tiles();
    let folder = upscalers(&daemon);
    let mut client = daemon.client();
    // A safetensors model replaced by a rename, as downloaders do.
    let before = upscale(&mut client, "tiny-x4").unwrap();
    let incoming = folder.join(".incoming");
    std::fs::copy(fixture("esrgan/tiny-x4-new.safetensors"), &incoming).unwrap();
    std::fs::rename(&incoming, folder.join("tiny-x4.safetensors")).unwrap();
    let after = upscale(&mut client, "tiny-x4").unwrap();
    std::fs::copy(
        fixture("esrgan/tiny-x4-new.safetensors"),
        folder.join("new.safetensors"),
    )
    .unwrap();
    assert!(after != before);
    assert!(after == upscale(&mut client, "new").unwrap());

    // A .pth (converted through the cache) overwritten by a copy of another one.
    std::fs::copy(fixture("esrgan/tiny-x4-old.pth"), folder.join("m.pth")).unwrap();
    let old = upscale(&mut client, "m").unwrap();
    std::fs::copy(
        fixture("esrgan/tiny-x4-realesrgan.pth"),
        folder.join("m.pth"),
    )
    .unwrap();
    let new = upscale(&mut client, "m").unwrap();
    std::fs::copy(
        fixture("esrgan/tiny-x4-realesrgan.pth"),
        folder.join("ref.pth"),
    )
    .unwrap();
    assert!(old != new);
    assert!(new == upscale(&mut client, "ref").unwrap());

    // A model deleted between jobs is simply not there any more.
    std::fs::remove_file(folder.join("m.pth")).unwrap();
    match upscale(&mut client, "m") {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::ModelNotFound),
        other => panic!("expected ModelNotFound, got {:?}", other.map(|i| i.width)),
    }
}

#[test]
fn stale_conversion_files_are_removed_at_start() {
    let daemon = Daemon::prepare("");
    let cache = daemon.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let stale = cache.join(".converting-Ab12Cd.tmp");
    let fresh = cache.join(".converting-Ef34Gh.tmp");
    let kept = cache.join("esrgan-0123456789abcdef01234567.safetensors");
    for path in [&stale, &fresh, &kept] {
        std::fs::write(path, b"partial").unwrap();
    }
    let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
    set_mtime(&stale, day_ago);
    set_mtime(&kept, day_ago);
    let _daemon = daemon.start();
    assert!(
        !stale.exists(),
        "a conversion left by a killed daemon is removed"
    );
    assert!(fresh.exists(), "one that may still be written is kept");
    assert!(kept.exists(), "finished conversions are kept");
}

/// Whether this process may make mount namespaces and mount a tmpfs in them (root, or
/// unprivileged user namespaces are not enough here: the daemon must stay this user).
fn can_mount() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", "mount -t tmpfs -o size=4k none /mnt"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `mount ARGS` inside the daemon's mount namespace.
fn mount_in(daemon: &Daemon, args: &[&str]) {
    let status = Command::new("nsenter")
        .args(["-t", &daemon.pid().to_string(), "-m", "--", "mount"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "mount {args:?}");
}

/// The cache folder as the daemon sees it (its own mount namespace).
fn cache_entries(daemon: &Daemon) -> Vec<String> {
    let cache = daemon.dir.path().join("cache");
    let seen = format!("/proc/{}/root{}", daemon.pid(), cache.display());
    let mut names: Vec<String> = std::fs::read_dir(seen)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "hashes.json")
        .collect();
    names.sort();
    names
}

fn failed_kind(result: Result<Image, ClientError>) -> (ErrorKind, String) {
    match result {
        Err(ClientError::Daemon(e)) => (e.kind, e.message),
        other => panic!("expected a failed job, got {:?}", other.map(|i| i.width)),
    }
}

/// `unshare` and `sh` arguments that mount `script`'s mount in a private mount namespace and
/// then run the command appended to them; `$0` in `script` is `path`.
fn in_mount_namespace(script: &str, path: &Path) -> Vec<std::ffi::OsString> {
    let mut wrapper: Vec<std::ffi::OsString> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    wrapper.push(format!("{script} && exec \"$@\"").into());
    wrapper.push(path.into());
    wrapper
}

#[test]
fn a_read_only_data_dir_stops_the_daemon_with_a_message_that_says_where() {
    if !can_mount() {
        eprintln!("SKIPPED: this user cannot mount in a mount namespace (needs root)");
        return;
    }
    let daemon = Daemon::prepare("");
    let root = daemon.dir.path();
    for sub in ["cache", "logs", "runtime", "models/checkpoints"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // Read-only from the first start (nothing creatable), then with the layout in place.
    for first in [true, false] {
        if !first {
            for kind in ["vae", "controlnet", "loras", "embeddings"] {
                std::fs::create_dir_all(root.join("models").join(kind)).unwrap();
            }
        }
        let wrapper = in_mount_namespace("mount --bind -o ro \"$0\" \"$0\"", root);
        let output = wrap(daemon.command(["serve"]), &wrapper).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("Read-only file system") && stderr.contains(&*root.to_string_lossy()),
            "{stderr}"
        );
    }
}

#[test]
fn a_full_or_read_only_cache_fails_the_conversion_clearly_and_leaves_nothing_half_written() {
    if !can_mount() {
        eprintln!("SKIPPED: this user cannot mount a tmpfs in a mount namespace (needs root)");
        return;
    }
    let daemon = Daemon::prepare("[upscale]\ntile = 32\noverlap = 4\n");
    let cache = daemon.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let folder = upscalers(&daemon);
    std::fs::copy(fixture("esrgan/tiny-x4-old.pth"), folder.join("a.pth")).unwrap();
    std::fs::copy(
        fixture("esrgan/tiny-x4-realesrgan.pth"),
        folder.join("b.pth"),
    )
    .unwrap();
    // The daemon's cache is a 16 KiB tmpfs in a mount namespace of its own; a .pth converts
    // to about 30 KiB of f32 safetensors.
    let wrapper = in_mount_namespace(
        "mount -t tmpfs -o size=16k,mode=0700 tessera-cache \"$0\"",
        &cache,
    );
    let daemon = daemon.wrapped(wrapper).start();
    let mut client = daemon.client();

    let (kind, message) = failed_kind(upscale(&mut client, "a"));
    assert_eq!(kind, ErrorKind::Io, "{message}");
    assert!(
        message.contains("No space left") && message.contains("cache"),
        "{message}"
    );
    assert_eq!(
        cache_entries(&daemon),
        Vec::<String>::new(),
        "no partial file"
    );
    // A model used in place needs no cache, and works.
    upscale(&mut client, "tiny-x4").unwrap();

    // Room again: the same model converts, once.
    mount_in(&daemon, &["-o", "remount,size=1m", cache.to_str().unwrap()]);
    let converted = upscale(&mut client, "a").unwrap();
    let entries = cache_entries(&daemon);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with("esrgan-"), "{entries:?}");

    // Read-only: a new conversion fails clearly; the finished one is still used.
    mount_in(&daemon, &["-o", "remount,ro", cache.to_str().unwrap()]);
    let (kind, message) = failed_kind(upscale(&mut client, "b"));
    assert_eq!(kind, ErrorKind::Io, "{message}");
    assert!(message.contains("Read-only file system"), "{message}");
    assert_eq!(cache_entries(&daemon), entries);
    assert!(upscale(&mut client, "a").unwrap() == converted);
}
