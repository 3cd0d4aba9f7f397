//! Downloading one model file: resumable (HTTP `Range` on a `.part` file kept in the data
//! directory's `cache/downloads/`), with a progress bar showing speed and ETA, retried with
//! back-off on transient failures, and verified (exact size, then SHA-256) before it is moved
//! into place. A file that fails the check is deleted, and the error says which file and why.

use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_store::manifest::{Mismatch, ModelSpec};

/// Slowest transfer rate still considered alive when sizing a download's time limit.
const SLOWEST_BYTES_PER_SECOND: u64 = 32 * 1024;

pub struct Fetcher {
    agent: ureq::Agent,
    /// Attempts per source (the first one included).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff: Duration,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// Why one source did not deliver the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The server answered with an error status that retrying will not change.
    Status(u16),
    /// The host could not be reached, or the transfer broke off, on every attempt.
    Unreachable(String),
    /// The complete download is not the manifest's file; the partial file was deleted.
    Damaged(Mismatch),
    /// Writing the partial file failed.
    Disk(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Status(code) => write!(f, "the server answered HTTP {code}"),
            SourceError::Unreachable(reason) => f.write_str(reason),
            SourceError::Damaged(m) => {
                write!(f, "the download is damaged ({m}) and was deleted")
            }
            SourceError::Disk(reason) => write!(f, "cannot write the download: {reason}"),
        }
    }
}

/// The outcome of one attempt.
enum Attempt {
    Complete,
    /// Try the same source again after a pause (the partial file is kept).
    Transient(String),
    /// Give up on this source.
    Fatal(SourceError),
}

impl Fetcher {
    pub fn new(progress: bool) -> Fetcher {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("tessera-install/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        // The first pause between attempts; tests shorten it.
        let backoff_ms = std::env::var("TESSERA_INSTALL_RETRY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Fetcher {
            agent,
            attempts: 4,
            backoff: Duration::from_millis(backoff_ms),
            progress,
        }
    }

    /// Downloads `spec` from `url` into `target`, resuming `partial` if it holds a prefix.
    pub fn fetch(
        &self,
        spec: &ModelSpec,
        url: &str,
        partial: &Path,
        target: &Path,
    ) -> Result<(), SourceError> {
        let bar = self.bar(spec);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                bar.suspend(|| {
                    eprintln!(
                        "  {}: {last}; retrying in {} s (attempt {attempt} of {})",
                        spec.file,
                        wait.as_secs_f32(),
                        self.attempts
                    )
                });
                std::thread::sleep(wait);
                wait *= 2;
            }
            match self.attempt(spec, url, partial, &bar) {
                Attempt::Complete => {
                    bar.finish_and_clear();
                    return finish(spec, partial, target);
                }
                Attempt::Transient(reason) => last = reason,
                Attempt::Fatal(error) => {
                    bar.finish_and_clear();
                    return Err(error);
                }
            }
        }
        bar.finish_and_clear();
        Err(SourceError::Unreachable(last))
    }

    fn bar(&self, spec: &ModelSpec) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(spec.size);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} ETA {eta:>4}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(spec.file.clone());
        bar
    }

    fn attempt(&self, spec: &ModelSpec, url: &str, partial: &Path, bar: &ProgressBar) -> Attempt {
        let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > spec.size {
            let _ = std::fs::remove_file(partial);
            have = 0;
        }
        if have == spec.size {
            return Attempt::Complete;
        }
        let limit = Duration::from_secs(60 + spec.size / SLOWEST_BYTES_PER_SECOND);
        let mut request = self
            .agent
            .get(url)
            .config()
            .timeout_recv_body(Some(limit))
            .build();
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            // No name resolution means no network (or a blocked one): waiting will not help.
            Err(e) if is_lookup_failure(&e) => {
                return Attempt::Fatal(SourceError::Unreachable(describe(url, &e)));
            }
            Err(e) => return Attempt::Transient(describe(url, &e)),
        };
        let status = response.status().as_u16();
        let append = match status {
            206 if have > 0 && range_start(&response) == Some(have) => true,
            200 => false,
            206 => {
                // A range we did not ask for: start over.
                let _ = std::fs::remove_file(partial);
                return Attempt::Transient("the server sent an unexpected range".into());
            }
            416 => {
                let _ = std::fs::remove_file(partial);
                return Attempt::Transient("the server refused to resume; starting over".into());
            }
            408 | 429 | 500..=599 => {
                return Attempt::Transient(format!("the server answered HTTP {status}"));
            }
            _ => return Attempt::Fatal(SourceError::Status(status)),
        };
        let file = if append {
            OpenOptions::new().append(true).open(partial)
        } else {
            have = 0;
            File::create(partial)
        };
        let mut file = match file {
            Ok(file) => file,
            Err(e) => {
                return Attempt::Fatal(SourceError::Disk(format!("{}: {e}", partial.display())));
            }
        };
        bar.set_position(have);
        bar.reset_eta();
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = file.flush();
                    return Attempt::Transient(format!(
                        "the transfer broke off after {have} of {} bytes ({e})",
                        spec.size
                    ));
                }
            };
            if let Err(e) = file.write_all(&buffer[..n]) {
                return Attempt::Fatal(SourceError::Disk(format!("{}: {e}", partial.display())));
            }
            have += n as u64;
            bar.set_position(have.min(spec.size));
            if have > spec.size {
                break;
            }
        }
        if let Err(e) = file.sync_all() {
            return Attempt::Fatal(SourceError::Disk(format!("{}: {e}", partial.display())));
        }
        if have < spec.size {
            return Attempt::Transient(format!(
                "the connection closed after {have} of {} bytes",
                spec.size
            ));
        }
        Attempt::Complete
    }
}

/// Verifies the complete `.part` file and moves it into place; a bad file is deleted.
fn finish(spec: &ModelSpec, partial: &Path, target: &Path) -> Result<(), SourceError> {
    if let Err(mismatch) = spec.verify(partial) {
        let _ = std::fs::remove_file(partial);
        return Err(SourceError::Damaged(mismatch));
    }
    std::fs::rename(partial, target)
        .map_err(|e| SourceError::Disk(format!("{}: {e}", target.display())))
}

/// The first byte of a `206` answer's `Content-Range: bytes START-END/TOTAL`.
fn range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split(['-', '/']).next()?.trim().parse().ok()
}

fn is_lookup_failure(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::HostNotFound => true,
        ureq::Error::Io(e) => e.to_string().contains("lookup address"),
        _ => false,
    }
}

/// The host part of a URL.
pub fn host(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(url)
}

/// A transport error in words, naming the host.
fn describe(url: &str, error: &ureq::Error) -> String {
    let host = host(url);
    if is_lookup_failure(error) {
        return format!("{host} cannot be found (no network, or name lookups are blocked)");
    }
    match error {
        ureq::Error::ConnectionFailed => format!("{host} cannot be reached"),
        ureq::Error::Timeout(_) => format!("{host} did not answer in time"),
        ureq::Error::Io(e) => format!("{host} cannot be reached ({e})"),
        other => format!("{host}: {other}"),
    }
}

/// Where the partial download of `spec` is kept.
pub fn partial_path(staging: &Path, spec: &ModelSpec) -> PathBuf {
    staging.join(format!("{}.part", spec.file))
}
