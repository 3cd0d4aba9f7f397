//! Logging: the daemon logs to stderr and to daily files in the data
//! directory's `logs/` (a week kept), never blocking on either; client commands
//! log warnings to stderr.
//! `TESSERA_LOG` takes a tracing filter such as `debug` or `tessera=trace`.

use std::io::IsTerminal;
use std::path::Path;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub const LOG_ENV: &str = "TESSERA_LOG";
pub const LOG_FILE_PREFIX: &str = "tessera";

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logging for the daemon; keep the guards alive until exit so the file gets
/// everything.
pub fn init_daemon(logs: &Path) -> anyhow::Result<LogGuards> {
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix("log")
        .max_log_files(7)
        .build(logs)?;
    let (file, guard) = tracing_appender::non_blocking(appender);
    // stderr may be a pipe that nobody reads (a plug-in that started the daemon and forgot
    // it): writing to it must never block a thread, so lines beyond a small backlog are
    // dropped there (the log file still gets them).
    let (stderr, stderr_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(STDERR_BACKLOG_LINES)
        .lossy(true)
        .thread_name("log-stderr")
        .finish(std::io::stderr());
    tracing_subscriber::registry()
        .with(filter("info"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(stderr)
                .with_target(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(file)
                .with_ansi(false),
        )
        .try_init()?;
    Ok(LogGuards {
        _file: guard,
        _stderr: stderr_guard,
    })
}

/// Log lines that may wait for a slow stderr before further ones are dropped there.
const STDERR_BACKLOG_LINES: usize = 1024;

/// Flushes the daemon's logs when dropped: keep it alive until exit.
pub struct LogGuards {
    _file: tracing_appender::non_blocking::WorkerGuard,
    _stderr: tracing_appender::non_blocking::WorkerGuard,
}

/// Logging for the client commands: warnings and errors only.
pub fn init_client() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
