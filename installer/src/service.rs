//! The service step: the `tessera` program is copied into the user's program folder and
//! `tessera serve` is registered to start at login: a systemd user unit on Linux (enabled and
//! started with `systemctl --user` when a user manager runs, else a clear message), a launchd
//! agent on macOS, a Startup-folder script on Windows.
//!
//! `TESSERA_INSTALL_SYSTEMCTL` names another `systemctl` (tests use a recorder; an empty value
//! means there is none).

use crate::files;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_store::setup::places::{Home, LAUNCHD_LABEL, Platform, SYSTEMD_UNIT};
use tessera_store::setup::record::{InstallRecord, Item, ServiceEntry};

/// What the login service runs.
pub struct Launch {
    /// The installed program.
    pub program: PathBuf,
    /// Set when the data directory is not the default one.
    pub data_dir: Option<PathBuf>,
    /// The program has the tray (`serve --tray`).
    pub tray: bool,
}

/// Copies the program into `home.bin_dir()`; returns its installed path.
pub fn install_program(
    record: &mut InstallRecord,
    home: &Home,
    source: &Path,
) -> anyhow::Result<PathBuf> {
    let name = format!("tessera{}", std::env::consts::EXE_SUFFIX);
    let target = home.bin_dir().join(&name);
    if same_file(source, &target) {
        // Installing from the installed copy: nothing to copy, but it is ours.
        let bytes = std::fs::read(&target)?;
        record.note_file(&target, Item::Program, files::sha256(&bytes));
        return Ok(target);
    }
    let bytes = std::fs::read(source)
        .with_context(|| format!("cannot read the tessera program {}", source.display()))?;
    files::install(record, &target, &bytes, true, Item::Program)?;
    Ok(target)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether a `tessera` program was built with the tray (its `serve --help` lists `--tray`).
pub fn has_tray(program: &Path) -> bool {
    Command::new(program)
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--tray"))
}

/// Writes and activates the login service; returns one line for the report.
pub fn install_service(
    record: &mut InstallRecord,
    home: &Home,
    launch: &Launch,
) -> anyhow::Result<String> {
    let path = home.service_file();
    let (kind, text) = match home.platform {
        Platform::Linux => ("systemd", systemd_unit(launch)),
        Platform::MacOs => ("launchd", launchd_plist(launch)),
        Platform::Windows => ("startup", startup_script(launch)),
    };
    files::install(record, &path, text.as_bytes(), false, Item::Service)?;
    let (activated, note) = activate(home.platform, &path);
    record.service = Some(ServiceEntry {
        kind: kind.into(),
        path: path.clone(),
        activated,
    });
    Ok(format!("{} ({note})", path.display()))
}

/// The systemd user unit. Exit code 2 means another daemon already serves the socket: not a
/// failure to restart on.
pub fn systemd_unit(launch: &Launch) -> String {
    let mut exec = systemd_quote(&launch.program.to_string_lossy());
    exec.push_str(" serve");
    if launch.tray {
        exec.push_str(" --tray");
    }
    let mut unit = String::from(
        "[Unit]\nDescription=Tessera upscaling daemon for Krita and GIMP\nAfter=graphical-session.target\n\n[Service]\nType=simple\n",
    );
    unit.push_str(&format!("ExecStart={exec}\n"));
    if let Some(dir) = &launch.data_dir {
        let assignment = format!("TESSERA_DATA_DIR={}", dir.display());
        unit.push_str(&format!("Environment={}\n", systemd_quote(&assignment)));
    }
    unit.push_str(
        "Restart=on-failure\nRestartSec=5\nRestartPreventExitStatus=2\n\n[Install]\nWantedBy=default.target\n",
    );
    unit
}

/// A double-quoted systemd word: `\` and `"` escaped, `%` doubled (specifier syntax).
fn systemd_quote(word: &str) -> String {
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

pub fn launchd_plist(launch: &Launch) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut args = format!(
        "    <string>{}</string>\n    <string>serve</string>\n",
        esc(&launch.program.to_string_lossy())
    );
    if launch.tray {
        args.push_str("    <string>--tray</string>\n");
    }
    let env = launch
        .data_dir
        .as_ref()
        .map(|d| {
            format!(
                "  <key>EnvironmentVariables</key>\n  <dict>\n    <key>TESSERA_DATA_DIR</key>\n    <string>{}</string>\n  </dict>\n",
                esc(&d.to_string_lossy())
            )
        })
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n  <key>Label</key>\n  <string>{LAUNCHD_LABEL}</string>\n  <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n{env}  <key>RunAtLoad</key>\n  <true/>\n  <key>ProcessType</key>\n  <string>Interactive</string>\n</dict>\n</plist>\n"
    )
}

/// A VBScript in the Startup folder: starts the daemon without a console window. A data
/// directory of its own goes on the command line (`--data-dir`), the simplest thing every
/// script host runs (Wine's, for one, cannot set the environment through `WScript.Shell`).
pub fn startup_script(launch: &Launch) -> String {
    // Inside a VBScript string, a double quote is written twice; the command line quotes the
    // program and the folder, so both may hold spaces.
    let quoted = |s: &str| format!("\"\"{}\"\"", s.replace('"', "\"\""));
    let mut command = format!("{} serve", quoted(&launch.program.to_string_lossy()));
    if let Some(dir) = &launch.data_dir {
        command.push_str(&format!(" --data-dir {}", quoted(&dir.to_string_lossy())));
    }
    if launch.tray {
        command.push_str(" --tray");
    }
    format!(
        "' Starts the Tessera daemon at login (written by tessera-install).\r\nSet shell = CreateObject(\"WScript.Shell\")\r\nshell.Run \"{command}\", 0, False\r\n"
    )
}

/// Tells the service manager; returns whether it was told and what happened, in words.
fn activate(platform: Platform, path: &Path) -> (bool, String) {
    match platform {
        Platform::Linux => match systemctl() {
            None => (
                false,
                "systemctl not found: it starts at login on a systemd desktop; until then Krita, GIMP and `tessera upscale` start the daemon when they need it".into(),
            ),
            Some(program) => {
                if let Err(reason) = run(&program, &["--user", "show-environment"]) {
                    return (
                        false,
                        format!("no systemd user manager here ({reason}): it starts at your next graphical login; until then Krita, GIMP and `tessera upscale` start the daemon when they need it"),
                    );
                }
                let steps = [
                    vec!["--user", "daemon-reload"],
                    vec!["--user", "enable", "--now", SYSTEMD_UNIT],
                ];
                for step in steps {
                    if let Err(reason) = run(&program, &step) {
                        return (false, format!("`systemctl {}` failed: {reason}", step.join(" ")));
                    }
                }
                (true, "enabled and started with systemctl --user".into())
            }
        },
        Platform::MacOs => match run(Path::new("launchctl"), &["load", "-w", &path.to_string_lossy()]) {
            Ok(()) => (true, "loaded with launchctl".into()),
            Err(reason) => (false, format!("launchctl load failed ({reason}): it starts at your next login")),
        },
        Platform::Windows => (false, "starts at your next login".into()),
    }
}

/// Undoes [`activate`] before the service file is removed.
pub fn deactivate(entry: &ServiceEntry) -> Option<String> {
    if !entry.activated {
        return None;
    }
    let result = match entry.kind.as_str() {
        "systemd" => systemctl()
            .context("systemctl is gone")
            .and_then(|p| run(&p, &["--user", "disable", "--now", SYSTEMD_UNIT])),
        "launchd" => run(
            Path::new("launchctl"),
            &["unload", "-w", &entry.path.to_string_lossy()],
        ),
        _ => Ok(()),
    };
    result
        .err()
        .map(|e| format!("could not stop the service: {e}"))
}

/// Reloads systemd after the unit file is gone (best effort).
pub fn reload(entry: &ServiceEntry) {
    if entry.kind == "systemd"
        && entry.activated
        && let Some(program) = systemctl()
    {
        let _ = run(&program, &["--user", "daemon-reload"]);
    }
}

fn systemctl() -> Option<PathBuf> {
    match std::env::var_os("TESSERA_INSTALL_SYSTEMCTL") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => which("systemctl"),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn run(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    bail!("{} ({})", last.trim(), output.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(program: &str, data: Option<&str>, tray: bool) -> Launch {
        Launch {
            program: program.into(),
            data_dir: data.map(PathBuf::from),
            tray,
        }
    }

    #[test]
    fn the_unit_quotes_paths_and_passes_the_data_dir() {
        let unit = systemd_unit(&launch(
            "/home/a b/.local/bin/tessera",
            Some("/d/100%"),
            true,
        ));
        assert!(
            unit.contains("ExecStart=\"/home/a b/.local/bin/tessera\" serve --tray\n"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"TESSERA_DATA_DIR=/d/100%%\"\n"),
            "{unit}"
        );
        assert!(unit.contains("RestartPreventExitStatus=2"));
        let plain = systemd_unit(&launch("/bin/tessera", None, false));
        assert!(
            plain.contains("ExecStart=\"/bin/tessera\" serve\n") && !plain.contains("Environment")
        );
    }

    #[test]
    fn the_agent_and_the_startup_script() {
        let plist = launchd_plist(&launch("/Users/a/.local/bin/tessera", Some("/d&x"), true));
        assert!(plist.contains("<string>org.tessera.daemon</string>"));
        assert!(plist.contains("<string>--tray</string>"));
        assert!(plist.contains("<string>/d&amp;x</string>"));
        let vbs = startup_script(&launch(r"C:\Users\a\tessera.exe", None, true));
        assert!(
            vbs.contains(r#"shell.Run """C:\Users\a\tessera.exe"" serve --tray", 0, False"#),
            "{vbs}"
        );
        let vbs = startup_script(&launch(
            r"C:\Users\a b\tessera.exe",
            Some(r"D:\Tessera data"),
            false,
        ));
        assert!(
            vbs.contains(
                r#"shell.Run """C:\Users\a b\tessera.exe"" serve --data-dir ""D:\Tessera data""", 0, False"#
            ),
            "{vbs}"
        );
        assert_eq!(vbs.lines().count(), 3, "{vbs}");
    }
}
