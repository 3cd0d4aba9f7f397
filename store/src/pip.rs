//! Fetching wheels with the user's own pip (`python -m pip download`, binary wheels only), so
//! that the user's pip configuration (index, proxy, certificates) applies. An index URL given
//! here (`--pip-index-url`, for tests and mirrors) replaces the configured one.

use std::path::Path;
use std::process::{Command, Stdio};

/// Python launchers tried in order.
const PYTHONS: &[&[&str]] = &[&["python3"], &["python"], &["py", "-3"]];

/// One `pip download`.
#[derive(Debug, Clone, Default)]
pub struct Download<'a> {
    /// Requirements as pip takes them, e.g. `onnxruntime-gpu==1.31.1`, `nvidia-cublas~=13.0`.
    pub requirements: &'a [String],
    /// `--index-url` for pip (else the user's configuration).
    pub index_url: Option<&'a str>,
    /// Platform tags (`--platform`) the wheels must fit; empty: this machine's.
    pub platforms: &'a [String],
    /// Fetch what the requirements depend on too.
    pub with_dependencies: bool,
    /// Keep the wheels out of pip's own cache (they are unpacked once and deleted).
    pub no_cache: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PipError {
    #[error("no Python 3 with pip was found (tried {tried})")]
    NoPython { tried: String },
    #[error("{detail}")]
    Failed { detail: String },
    #[error("the disk is full ({detail})")]
    NoSpace { detail: String },
    #[error("cannot run pip: {0}")]
    Io(#[from] std::io::Error),
}

impl Download<'_> {
    /// Runs pip, saving the wheels into `dest`. pip's progress goes to our stderr (our stdout
    /// may be a script's capture); its messages are kept for the error.
    pub fn run(&self, dest: &Path) -> Result<(), PipError> {
        let python = find_python().ok_or_else(|| PipError::NoPython { tried: tried() })?;
        let mut command = Command::new(python[0]);
        command.args(&python[1..]).args([
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ]);
        if !self.with_dependencies {
            command.arg("--no-deps");
        }
        if self.no_cache {
            command.arg("--no-cache-dir");
        }
        if let Some(url) = self.index_url {
            command.args(["--index-url", url]);
        }
        for platform in self.platforms {
            command.args(["--platform", platform]);
        }
        command.arg("-d").arg(dest).args(self.requirements);
        let output = command.stdout(progress_sink()).output()?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No space left on device") {
            return Err(PipError::NoSpace {
                detail: last_line(&stderr),
            });
        }
        Err(PipError::Failed {
            detail: last_line(&stderr),
        })
    }
}

/// The launchers tried, for messages.
pub fn tried() -> String {
    PYTHONS
        .iter()
        .map(|p| p.join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_python() -> Option<&'static [&'static str]> {
    PYTHONS.iter().copied().find(|candidate| {
        Command::new(candidate[0])
            .args(&candidate[1..])
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("pip failed without a message")
        .trim()
        .to_owned()
}

/// Our stderr, as the child's stdout.
fn progress_sink() -> Stdio {
    #[cfg(unix)]
    let handle = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned();
    #[cfg(windows)]
    let handle = std::os::windows::io::AsHandle::as_handle(&std::io::stderr()).try_clone_to_owned();
    #[cfg(any(unix, windows))]
    return handle.map_or_else(|_| Stdio::null(), Stdio::from);
    #[cfg(not(any(unix, windows)))]
    Stdio::null()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_message_line_is_the_detail() {
        assert_eq!(
            last_line("Looking in links: x\nERROR: No matching distribution found for y\n\n"),
            "ERROR: No matching distribution found for y"
        );
        assert_eq!(last_line(""), "pip failed without a message");
    }
}
