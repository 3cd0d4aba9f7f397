//! Finding the daemon, and starting one in the background when a command
//! needs it and none runs (the way `ollama run` does).

use super::client::{Client, ClientError};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_protocol::paths::{DataDir, SocketAddress};

/// How long a freshly started daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon is, and the flags that led there (passed on to a daemon
/// this command starts, so that it serves the same place).
pub struct Target {
    pub data_dir: DataDir,
    pub address: SocketAddress,
    pub data_dir_flag: Option<PathBuf>,
    pub socket_flag: Option<String>,
    pub ort_lib_flag: Option<PathBuf>,
}

pub const AGENT: &str = concat!("tessera-cli ", env!("CARGO_PKG_VERSION"));

pub fn connect(target: &Target) -> Result<Client, ClientError> {
    Client::connect(&target.address, AGENT)
}

/// Connects, starting a daemon first if none answers.
pub fn connect_or_start(target: &Target) -> anyhow::Result<Client> {
    match connect(target) {
        Ok(client) => return Ok(client),
        Err(ClientError::NotRunning { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let store = crate::store::DataDir::open(&target.data_dir.path).with_context(|| {
        format!(
            "cannot use the data directory {}",
            target.data_dir.path.display()
        )
    })?;
    let start_log = store.logs().join("daemon-start.log");
    let stderr = std::fs::File::create(&start_log)
        .with_context(|| format!("cannot write {}", start_log.display()))?;
    let exe = std::env::current_exe().context("cannot find the tessera executable")?;
    let mut command = Command::new(exe);
    command.arg("serve");
    if let Some(dir) = &target.data_dir_flag {
        command.arg("--data-dir").arg(dir);
    }
    if let Some(socket) = &target.socket_flag {
        command.arg("--socket").arg(socket);
    }
    if let Some(lib) = &target.ort_lib_flag {
        command.arg("--ort-lib").arg(lib);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    detach(&mut command);
    let mut child = command.spawn().context("cannot start the daemon")?;
    eprintln!("tessera: started a daemon (process {})", child.id());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match connect(target) {
            Ok(client) => return Ok(client),
            Err(ClientError::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&start_log).unwrap_or_default();
            let reason = log
                .lines()
                .rev()
                .find(|l| l.contains("tessera:") || l.contains("ERROR"))
                .map(|l| l.trim().trim_start_matches("tessera:").trim().to_owned())
                .unwrap_or_else(|| format!("it exited with {status}"));
            bail!(
                "the daemon could not start: {reason} (full output in {})",
                start_log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon started but did not listen on {} within {} s (see {})",
                target.address,
                START_TIMEOUT.as_secs(),
                start_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps the daemon alive when the terminal that started it goes away or
/// gets Ctrl-C.
fn detach(command: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
        keep_own_handles_from_children();
    }
}

/// Stops this process's standard handles from being inherited. Windows hands a new process
/// every inheritable handle of its parent, whatever its own standard handles are; ours are
/// often the pipes of whoever runs `tessera upscale` (a script, an editor's plug-in) and were
/// inheritable for us, so the daemon would hold them open for its whole life and the caller,
/// waiting for their end, would wait for the daemon to exit.
#[cfg(windows)]
fn keep_own_handles_from_children() {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    for handle in [
        std::io::stdin().as_raw_handle(),
        std::io::stdout().as_raw_handle(),
        std::io::stderr().as_raw_handle(),
    ] {
        if !handle.is_null() {
            // SAFETY: a standard handle of this process (or an invalid one, which the call
            // refuses); only its inherit flag changes.
            unsafe { SetHandleInformation(handle, HANDLE_FLAG_INHERIT, 0) };
        }
    }
}
