//! The tray icon of `tessera serve --tray` (cargo feature `tray`, Linux: GTK with the
//! Ayatana/AppIndicator library, through the `tray-icon` crate).
//!
//! GTK runs on the main thread and the server on another. Every 200 ms the tray reads the
//! engine's activity and updates the icon (idle, busy, error), its label (the running job's
//! percentage) and the menu: the current job and its progress, Pause/Resume queue, Open models
//! folder, Open log, Quit. Quit shuts the server down as `tessera stop` would; when the server
//! stops for any reason (Quit, `tessera stop`, a signal), the tray goes away with it. Without a
//! display the daemon serves on without a tray and says so.

pub mod icon;

use crate::server::Control;
use crate::server::hub::Activity;
use gtk::glib;
use icon::Look;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

/// Starts the server through `serve` (which hands over a [`Control`] once it listens) and runs
/// the tray on this thread until the server stops.
pub fn serve_with_tray<F>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(Box<dyn FnOnce(Control) + Send>) -> std::io::Result<()> + Send + 'static,
{
    if let Err(e) = gtk::init() {
        tracing::warn!("no tray: {e}; serving without it");
        eprintln!("tessera: no tray ({e}); serving without it");
        return Ok(serve(Box::new(|_| {}))?);
    }
    let (control_tx, control_rx) = crossbeam_channel::bounded(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let result = serve(Box::new(move |control| {
                let _ = control_tx.send(control);
            }));
            let _ = done_tx.send(());
            result
        })?;
    let control = crossbeam_channel::select! {
        recv(control_rx) -> control => control.ok(),
        recv(done_rx) -> _ => None,
    };
    if let Some(control) = control {
        let tray = Tray::new(control)?;
        glib::timeout_add_local(Duration::from_millis(200), move || {
            if done_rx.try_recv().is_ok() {
                gtk::main_quit();
                return glib::ControlFlow::Break;
            }
            tray.tick();
            glib::ControlFlow::Continue
        });
        tracing::info!("tray icon shown");
        gtk::main();
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Ok(())
}

/// The menu's entries, by id.
const JOB: &str = "job";
const PAUSE: &str = "pause";
const OPEN_MODELS: &str = "open-models";
const OPEN_LOG: &str = "open-log";
const QUIT: &str = "quit";

struct Tray {
    control: Control,
    icon: TrayIcon,
    job: MenuItem,
    pause: MenuItem,
    shown: RefCell<Option<(Look, String, String, String)>>,
}

impl Tray {
    fn new(control: Control) -> anyhow::Result<Tray> {
        let job = MenuItem::with_id(JOB, "Idle", false, None);
        let pause = MenuItem::with_id(PAUSE, "Pause queue", true, None);
        let menu = Menu::new();
        menu.append_items(&[
            &job,
            &PredefinedMenuItem::separator(),
            &pause,
            &MenuItem::with_id(OPEN_MODELS, "Open models folder", true, None),
            &MenuItem::with_id(OPEN_LOG, "Open log", true, None),
            &PredefinedMenuItem::separator(),
            &MenuItem::with_id(QUIT, "Quit Tessera", true, None),
        ])?;
        let icon = TrayIconBuilder::new()
            .with_id("tessera")
            .with_menu(Box::new(menu))
            .with_icon(picture(Look::Idle)?)
            .with_tooltip("Tessera")
            .with_title("")
            .with_temp_dir_path(control.data_dir().cache().join("tray"))
            .build()?;
        Ok(Tray {
            control,
            icon,
            job,
            pause,
            shown: RefCell::new(None),
        })
    }

    fn tick(&self) {
        while let Ok(event) = MenuEvent::receiver().try_recv() {
            self.handle(event.id.0.as_str());
        }
        let activity = self.control.activity();
        let look = look(&activity);
        let (job, label) = describe(&activity);
        let pause = if activity.paused {
            "Resume queue"
        } else {
            "Pause queue"
        }
        .to_owned();
        let now = (look, job, pause, label);
        if self.shown.borrow().as_ref() == Some(&now) {
            return;
        }
        let (look, job, pause, label) = &now;
        let previous = self.shown.borrow().as_ref().map(|s| s.0);
        if previous != Some(*look) {
            match picture(*look) {
                Ok(picture) => {
                    if let Err(e) = self.icon.set_icon(Some(picture)) {
                        tracing::warn!("cannot change the tray icon: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot draw the tray icon: {e}"),
            }
        }
        self.job.set_text(job);
        self.pause.set_text(pause);
        self.icon.set_title(Some(label));
        let _ = self.icon.set_tooltip(Some(format!("Tessera: {job}")));
        *self.shown.borrow_mut() = Some(now);
    }

    fn handle(&self, id: &str) {
        match id {
            PAUSE => {
                let paused = self.control.activity().paused;
                self.control.set_paused(!paused);
            }
            OPEN_MODELS => open(&self.control.data_dir().models_root()),
            OPEN_LOG => open(&newest_log(&self.control.data_dir().logs())),
            QUIT => {
                tracing::info!("Quit chosen in the tray");
                self.control.shutdown();
            }
            _ => {}
        }
    }
}

fn picture(look: Look) -> anyhow::Result<Icon> {
    Ok(Icon::from_rgba(icon::pixels(look), icon::SIZE, icon::SIZE)?)
}

fn look(activity: &Activity) -> Look {
    if activity.running.is_some() {
        Look::Busy
    } else if activity.last_failure.is_some() {
        Look::Error
    } else if activity.queued > 0 && !activity.paused {
        Look::Busy
    } else {
        Look::Idle
    }
}

/// The job line of the menu and the label beside the icon.
fn describe(activity: &Activity) -> (String, String) {
    let waiting = match activity.queued {
        0 => String::new(),
        n => format!(", {n} waiting"),
    };
    match activity.running {
        Some(job) => {
            let percent = format!("{:.0}%", activity.fraction * 100.0);
            (format!("Job {job}: {percent}{waiting}"), percent)
        }
        None if activity.paused => (format!("Paused{waiting}"), "paused".into()),
        None => match &activity.last_failure {
            Some(failure) => (format!("Failed: {failure}"), String::new()),
            None if activity.queued > 0 => (format!("Starting{waiting}"), String::new()),
            None => ("Idle".into(), String::new()),
        },
    }
}

/// The most recent daily log file, else the folder.
fn newest_log(folder: &Path) -> PathBuf {
    std::fs::read_dir(folder)
        .ok()
        .and_then(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tessera."))
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path())
        })
        .unwrap_or_else(|| folder.to_path_buf())
}

/// Opens a file or folder with the desktop's default application.
fn open(path: &Path) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match Command::new(opener)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reap it without blocking the tray.
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::warn!("cannot open {} with {opener}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(running: Option<u64>, queued: u32, paused: bool, failure: bool) -> Activity {
        Activity {
            running,
            fraction: 0.425,
            queued,
            paused,
            last_failure: failure.then(|| "job 2: it broke".into()),
        }
    }

    #[test]
    fn the_menu_line_and_the_icon_follow_the_engine() {
        let busy = activity(Some(3), 2, false, false);
        assert_eq!(look(&busy), Look::Busy);
        assert_eq!(
            describe(&busy),
            ("Job 3: 42%, 2 waiting".into(), "42%".into())
        );
        let idle = activity(None, 0, false, false);
        assert_eq!(
            (look(&idle), describe(&idle).0.as_str()),
            (Look::Idle, "Idle")
        );
        let failed = activity(None, 0, false, true);
        assert_eq!(look(&failed), Look::Error);
        assert_eq!(describe(&failed).0, "Failed: job 2: it broke");
        let paused = activity(None, 1, true, false);
        assert_eq!(
            (look(&paused), describe(&paused).0.as_str()),
            (Look::Idle, "Paused, 1 waiting")
        );
    }
}
