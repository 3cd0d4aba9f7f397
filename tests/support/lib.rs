//! Helpers for the end-to-end tests: a real `tessera serve` in a temporary
//! data directory with the tiny test models, and ways to talk to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera::cli::client::Client;
use tessera_protocol::paths::SocketAddress;
use tessera_protocol::{Channels, Image, SampleFormat, Transfer};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `tessera` binary of this build (`target/<profile>/tessera`).
pub fn tessera_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("tessera{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --workspace`, as scripts/test does)",
        bin.display()
    );
    bin
}

/// The ONNX Runtime library the tests use: `TESSERA_ORT_LIB`, else what
/// `scripts/test` installed under `.cache/`.
pub fn ort_lib() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_ORT_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    for folder in [".cache/ort-data/runtime", ".cache/onnxruntime"] {
        let folder = repo_root().join(folder);
        if let Ok(entries) = std::fs::read_dir(&folder) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("libonnxruntime.") || name == "onnxruntime.dll" {
                    return entry.path();
                }
            }
        }
    }
    panic!(
        "no ONNX Runtime library: set TESSERA_ORT_LIB or run scripts/test, which installs one into .cache/"
    );
}

/// A test fixture file.
pub fn fixture(relative: &str) -> PathBuf {
    let path = repo_root().join("tests/fixtures").join(relative);
    assert!(path.is_file(), "missing fixture {}", path.display());
    path
}

/// A running daemon with its own data directory and socket; killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    /// What `TESSERA_SOCKET` names for it: `tessera.sock` in `dir` on Unix, a named pipe of
    /// its own (`\\.\pipe\tessera-e2e…`) on Windows.
    pub socket: PathBuf,
    child: Option<Child>,
    /// A command that runs `tessera serve` (appended as its last arguments), e.g. to set
    /// up a mount namespace first; empty: run it directly.
    wrapper: Vec<std::ffi::OsString>,
    /// Environment variables the daemon and the commands get besides the usual ones.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Daemon {
    /// A data directory with the tiny ×4 upscaler installed as "tiny-x4",
    /// and `config` (TOML) as its config.toml.
    pub fn prepare(config: &str) -> Daemon {
        Daemon::prepare_in(&std::env::temp_dir(), config)
    }

    /// [`Daemon::prepare`] with the data directory made inside `parent`.
    pub fn prepare_in(parent: &Path, config: &str) -> Daemon {
        std::fs::create_dir_all(parent).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("tessera-e2e")
            .tempdir_in(parent)
            .expect("temp dir");
        let upscalers = dir.path().join("models/upscalers");
        std::fs::create_dir_all(&upscalers).unwrap();
        std::fs::copy(
            fixture("esrgan/tiny-x4.safetensors"),
            upscalers.join("tiny-x4.safetensors"),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let socket = socket_for(dir.path());
        Daemon {
            dir,
            socket,
            child: None,
            wrapper: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the daemon (and the commands aimed at it), e.g.
    /// `TESSERA_FAULTS` for the fault-injection tests.
    pub fn with_env(mut self, key: &str, value: &str) -> Daemon {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the daemon through `wrapper` (a program and its arguments, which must `exec` the
    /// command appended to them, so that the daemon keeps the child's process id).
    pub fn wrapped<S: Into<std::ffi::OsString>>(
        mut self,
        wrapper: impl IntoIterator<Item = S>,
    ) -> Daemon {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// Starts `tessera serve` on a prepared directory and waits until it listens.
    pub fn start(mut self) -> Daemon {
        self.restart();
        self
    }

    /// Starts (again) a daemon on this directory and waits until it listens.
    pub fn restart(&mut self) {
        self.restart_with(&["serve"]);
    }

    /// Starts a daemon with these arguments (`serve` and its flags) and waits until it listens.
    pub fn restart_with(&mut self, args: &[&str]) {
        let child = wrap(self.command(args), &self.wrapper)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect(&self.address(), "e2e-probe").is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("tessera serve exited with {status}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "tessera serve did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A data directory with the tiny Clarity pipeline installed under Clarity's model names
    /// where the job's defaults name them (LoRAs, negative embedding), the rest as the only
    /// model of its folder (so the defaults fall back to it), and `config` as config.toml.
    pub fn prepare_diffusion(config: &str) -> Daemon {
        Daemon::prepare_diffusion_in(&std::env::temp_dir(), config)
    }

    /// [`Daemon::prepare_diffusion`] with the data directory made inside `parent`.
    pub fn prepare_diffusion_in(parent: &Path, config: &str) -> Daemon {
        let daemon = Daemon::prepare_in(
            parent,
            &format!("[upscale]\ndefault_upscaler = \"tiny-x4\"\n{config}"),
        );
        let models = daemon.dir.path().join("models");
        let pipeline = repo_root().join("tests/fixtures/pipeline");
        copy_dir(
            &pipeline.join("tiny-clarity"),
            &models.join("checkpoints/tiny-clarity"),
        );
        copy_dir(
            &pipeline.join("tiny-clarity"),
            &models.join("vae/tiny-clarity"),
        );
        copy_dir(
            &pipeline.join("tiny-tile"),
            &models.join("controlnet/tiny-tile"),
        );
        for lora in ["more_details", "SDXLrender_v2.0"] {
            std::fs::create_dir_all(models.join("loras")).unwrap();
            std::fs::copy(
                pipeline.join("tiny-lora.safetensors"),
                models.join(format!("loras/{lora}.safetensors")),
            )
            .unwrap();
        }
        std::fs::create_dir_all(models.join("embeddings")).unwrap();
        std::fs::copy(
            pipeline.join("tiny-embedding.pt"),
            models.join("embeddings/JuggernautNegative-neg.pt"),
        )
        .unwrap();
        daemon
    }

    /// The tiny model with a small tile, so that a modest image makes many network calls.
    pub fn with_small_tiles() -> Daemon {
        Daemon::prepare("[upscale]\ntile = 32\noverlap = 4\n").start()
    }

    pub fn address(&self) -> SocketAddress {
        address_of(&self.socket)
    }

    /// Whether the daemon's socket is there: its file on Unix; on Windows, whether a
    /// connection to its pipe is answered (a named pipe lives only while a daemon listens).
    pub fn socket_present(&self) -> bool {
        if cfg!(windows) {
            tessera::server::socket::connect(&self.address()).is_ok()
        } else {
            self.socket.exists()
        }
    }

    /// A `tessera` command aimed at this daemon's data directory and socket.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(tessera_bin());
        command
            .args(args)
            .env("TESSERA_DATA_DIR", self.dir.path())
            .env("TESSERA_SOCKET", &self.socket)
            .env("TESSERA_ORT_LIB", ort_lib())
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("TESSERA_FAULTS")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.address(), "e2e-test").expect("connect to the test daemon")
    }

    /// The daemon process, for tests that signal or wait on it.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the daemon was started")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon was started").id()
    }

    /// The daemon's resident memory in bytes, from `/proc/<pid>/status` (Linux).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Waits for the daemon to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The socket of a test daemon whose data directory is `dir`.
fn socket_for(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        let name = dir.file_name().expect("a temporary folder has a name");
        PathBuf::from(format!(r"\\.\pipe\{}", name.to_string_lossy()))
    } else {
        dir.join("tessera.sock")
    }
}

/// The address a `TESSERA_SOCKET` value names, by the daemon's own rules.
pub fn address_of(socket: &Path) -> SocketAddress {
    let data = tessera_protocol::paths::DataDir {
        path: PathBuf::new(),
        explicit: true,
    };
    tessera_protocol::paths::socket_address(Some(&socket.to_string_lossy()), &data)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A deterministic RGB test image with some structure.
pub fn test_image(width: u32, height: u32) -> Image {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            data.extend([
                ((x * 255) / width.max(2).saturating_sub(1).max(1)) as u8,
                ((y * 255) / height.max(2).saturating_sub(1).max(1)) as u8,
                (((x / 4 + y / 4) % 2) * 200) as u8,
            ]);
        }
    }
    Image {
        width,
        height,
        channels: Channels::Rgb,
        sample: SampleFormat::U8,
        transfer: Transfer::Srgb,
        data,
    }
}

/// `command` run through `wrapper` (a program and its arguments, to which the command's
/// program and arguments are appended), with the same environment. No wrapper: `command`.
pub fn wrap(command: Command, wrapper: &[std::ffi::OsString]) -> Command {
    let Some((program, args)) = wrapper.split_first() else {
        return command;
    };
    let mut wrapped = Command::new(program);
    wrapped
        .args(args)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Resident memory of a process in bytes (`VmRSS` in `/proc/<pid>/status` on Linux, the
/// working set on Windows).
pub fn rss_bytes(pid: u32) -> u64 {
    try_rss_bytes(pid).unwrap_or_else(|| panic!("cannot read the memory of process {pid}"))
}

#[cfg(windows)]
fn try_rss_bytes(pid: u32) -> Option<u64> {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_VM_READ,
    };
    // SAFETY: OpenProcess has no preconditions; the handle is closed below.
    let process =
        unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ, 0, pid) };
    if process.is_null() {
        return None;
    }
    let mut counters = PROCESS_MEMORY_COUNTERS {
        cb: std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32,
        ..Default::default()
    };
    // SAFETY: `counters` is a PROCESS_MEMORY_COUNTERS of the size given.
    let ok = unsafe { K32GetProcessMemoryInfo(process, &mut counters, counters.cb) };
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(process) };
    (ok != 0).then_some(counters.WorkingSetSize as u64)
}

#[cfg(not(windows))]
fn try_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

/// Samples a process's resident memory every 20 ms until stopped; the peak is returned.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            // A process that has exited has no more memory to sample.
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(try_rss_bytes(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(try_rss_bytes(pid).unwrap_or(0))
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peak in bytes.
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Asserts that `text` (a program's output on Windows) shows Windows paths only: no path with
/// a `/` among its backslashes, none that starts with `/` or `~/`, and no Unix commands in its
/// advice.
pub fn assert_windows_paths(text: &str) {
    for line in text.lines() {
        for word in line.split_whitespace() {
            let word = word.trim_matches(|c: char| "()`'\",:;".contains(c));
            let mixed = word.contains('\\') && word.contains('/');
            assert!(
                !mixed && !word.starts_with('/'),
                "a / path on Windows: {word:?} in {line:?}"
            );
        }
        for unix in ["~/", "chmod", "systemctl", "XDG_"] {
            assert!(!line.contains(unix), "{unix:?} on Windows: {line:?}");
        }
    }
}
