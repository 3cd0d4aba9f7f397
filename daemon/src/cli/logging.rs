//! Logging: the daemon logs to stderr and to daily files in the data
//! directory's `logs/` (a week kept); client commands log warnings to stderr.
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

/// Logging for the daemon; keep the guard alive until exit so the file gets
/// everything.
pub fn init_daemon(logs: &Path) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix("log")
        .max_log_files(7)
        .build(logs)?;
    let (file, guard) = tracing_appender::non_blocking(appender);
    tracing_subscriber::registry()
        .with(filter("info"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(file)
                .with_ansi(false),
        )
        .try_init()?;
    Ok(guard)
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
