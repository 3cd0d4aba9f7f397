//! The tray of `tessera serve --tray`, for real: Xvfb for the display, a private D-Bus session
//! bus, and a StatusNotifierWatcher played by this test (what a desktop panel is), so that the
//! AppIndicator registers with it and exports its menu over D-Bus (com.canonical.dbusmenu).
//! The test reads the menu and the icon, clicks Pause, submits a job that waits, clicks Resume,
//! clicks Open models folder (a recording `xdg-open`), makes a job fail (red icon), and clicks
//! Quit, which must stop the daemon cleanly. Needs `Xvfb` and `dbus-daemon` (scripts/setup-tray).

#![cfg(all(feature = "tray", target_os = "linux"))]

use gtk::gio;
use gtk::glib::{self, prelude::*};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::cli::client::Client;
use tessera::tray::icon::Look;
use tessera_protocol::{Channels, Image, JobParams, SampleFormat, Transfer, paths};

const WATCHER_XML: &str = r#"<node><interface name="org.kde.StatusNotifierWatcher">
  <method name="RegisterStatusNotifierItem"><arg name="service" type="s" direction="in"/></method>
  <method name="RegisterStatusNotifierHost"><arg name="service" type="s" direction="in"/></method>
  <property name="RegisteredStatusNotifierItems" type="as" access="read"/>
  <property name="IsStatusNotifierHostRegistered" type="b" access="read"/>
  <property name="ProtocolVersion" type="i" access="read"/>
  <signal name="StatusNotifierItemRegistered"><arg type="s"/></signal>
  <signal name="StatusNotifierHostRegistered"/>
</interface></node>"#;

/// Kills a helper process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program that prints one line (an address, a display number) and returns it.
fn start_printing(command: &mut Command) -> (Reaped, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {command:?} ({e}): scripts/setup-tray installs Xvfb and dbus-daemon"
            )
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Reaped(child), line.trim().to_owned())
}

/// The watcher: records (sender, service) of each registration, on its own GLib thread.
fn watcher(address: &str) -> Arc<Mutex<Vec<(String, String)>>> {
    let items = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let address = address.to_owned();
    let seen = items.clone();
    std::thread::spawn(move || {
        let context = glib::MainContext::new();
        context
            .with_thread_default(|| {
                let connection = bus(&address);
                let info = gio::DBusNodeInfo::for_xml(WATCHER_XML).unwrap();
                let interface = info
                    .lookup_interface("org.kde.StatusNotifierWatcher")
                    .unwrap();
                let calls = seen.clone();
                let listed = seen.clone();
                connection
                    .register_object(
                        "/StatusNotifierWatcher",
                        &interface,
                        move |_, sender, _, _, method, params, invocation| {
                            if method == "RegisterStatusNotifierItem" {
                                let service = params.child_value(0).get::<String>().unwrap();
                                calls.lock().unwrap().push((sender.to_owned(), service));
                            }
                            invocation.return_value(None);
                        },
                        move |_, _, _, _, property| match property {
                            "IsStatusNotifierHostRegistered" => true.to_variant(),
                            "ProtocolVersion" => 0i32.to_variant(),
                            _ => listed
                                .lock()
                                .unwrap()
                                .iter()
                                .map(|(s, p)| format!("{s}{p}"))
                                .collect::<Vec<_>>()
                                .to_variant(),
                        },
                        |_, _, _, _, _, _| false,
                    )
                    .unwrap();
                // RequestName by hand: gio's name-owning helper aborts the process when the
                // bus goes away at the end of the test (its name-lost callback gets no name).
                let reply = connection
                    .call_sync(
                        Some("org.freedesktop.DBus"),
                        "/org/freedesktop/DBus",
                        "org.freedesktop.DBus",
                        "RequestName",
                        Some(&("org.kde.StatusNotifierWatcher", 4u32).to_variant()),
                        None,
                        gio::DBusCallFlags::NONE,
                        5000,
                        None::<&gio::Cancellable>,
                    )
                    .unwrap();
                assert_eq!(reply.child_value(0).get::<u32>(), Some(1), "primary owner");
                ready_tx.send(()).unwrap();
                glib::MainLoop::new(Some(&context), false).run();
            })
            .unwrap();
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the watcher got its name");
    items
}

fn bus(address: &str) -> gio::DBusConnection {
    gio::DBusConnection::for_address_sync(
        address,
        gio::DBusConnectionFlags::AUTHENTICATION_CLIENT
            | gio::DBusConnectionFlags::MESSAGE_BUS_CONNECTION,
        None,
        None::<&gio::Cancellable>,
    )
    .unwrap()
}

/// A menu entry as dbusmenu exports it.
#[derive(Debug, Clone)]
struct Entry {
    id: i32,
    label: String,
    enabled: bool,
}

struct Item {
    bus: gio::DBusConnection,
    sender: String,
    path: String,
}

impl Item {
    fn call(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        args: glib::Variant,
    ) -> glib::Variant {
        self.bus
            .call_sync(
                Some(&self.sender),
                path,
                interface,
                method,
                Some(&args),
                None,
                gio::DBusCallFlags::NONE,
                5000,
                None::<&gio::Cancellable>,
            )
            .unwrap_or_else(|e| panic!("{interface}.{method}: {e}"))
    }

    fn property(&self, name: &str) -> glib::Variant {
        let reply = self.call(
            &self.path,
            "org.freedesktop.DBus.Properties",
            "Get",
            ("org.kde.StatusNotifierItem", name).to_variant(),
        );
        reply.child_value(0).as_variant().unwrap()
    }

    fn menu_path(&self) -> String {
        self.property("Menu").str().unwrap().to_owned()
    }

    /// The top-level entries, separators left out.
    fn menu(&self) -> Vec<Entry> {
        let layout = self.call(
            &self.menu_path(),
            "com.canonical.dbusmenu",
            "GetLayout",
            (0i32, -1i32, Vec::<String>::new()).to_variant(),
        );
        let root = layout.child_value(1);
        let children = root.child_value(2);
        let mut entries = Vec::new();
        for i in 0..children.n_children() {
            let child = children.child_value(i).as_variant().unwrap();
            let id = child.child_value(0).get::<i32>().unwrap();
            let props = glib::VariantDict::new(Some(&child.child_value(1)));
            if props.lookup::<String>("type").ok().flatten().as_deref() == Some("separator") {
                continue;
            }
            entries.push(Entry {
                id,
                label: props
                    .lookup::<String>("label")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                enabled: props
                    .lookup::<bool>("enabled")
                    .ok()
                    .flatten()
                    .unwrap_or(true),
            });
        }
        entries
    }

    fn click(&self, label: &str) {
        let entry = self
            .menu()
            .into_iter()
            .find(|e| e.label == label)
            .unwrap_or_else(|| panic!("no menu entry {label:?} in {:?}", self.menu()));
        self.call(
            &self.menu_path(),
            "com.canonical.dbusmenu",
            "Event",
            (entry.id, "clicked", 0i32.to_variant(), 0u32).to_variant(),
        );
    }

    /// The colour at the centre of the icon's first tile.
    fn icon_colour(&self) -> [u8; 3] {
        let name = self.property("IconName").str().unwrap().to_owned();
        let theme = self
            .property("IconThemePath")
            .str()
            .unwrap_or("")
            .to_owned();
        let mut path = PathBuf::from(&name);
        if !path.is_file() {
            path = Path::new(&theme).join(format!("{name}.png"));
        }
        let image = image::open(&path)
            .unwrap_or_else(|e| panic!("icon {}: {e}", path.display()))
            .to_rgba8();
        let p = image.get_pixel(8, 8).0;
        [p[0], p[1], p[2]]
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn labels(item: &Item) -> Vec<String> {
    item.menu().into_iter().map(|e| e.label).collect()
}

fn image() -> Image {
    Image {
        width: 8,
        height: 6,
        channels: Channels::Rgb,
        sample: SampleFormat::U8,
        transfer: Transfer::Srgb,
        data: (0..8 * 6 * 3).map(|i| (i * 5) as u8).collect(),
    }
}

#[test]
fn the_tray_shows_its_menu_pauses_opens_and_quits_the_daemon() {
    let ort_lib = std::env::var_os("TESSERA_ORT_LIB")
        .expect("TESSERA_ORT_LIB names the ONNX Runtime library (scripts/test sets it)");
    let temp = tempfile::tempdir().unwrap();
    let (_bus_daemon, address) = start_printing(Command::new("dbus-daemon").args([
        "--session",
        "--nofork",
        "--print-address=1",
    ]));
    let (_xvfb, display) = start_printing(Command::new("Xvfb").args([
        "-displayfd",
        "1",
        "-nolisten",
        "tcp",
        "-screen",
        "0",
        "640x480x24",
    ]));
    let items = watcher(&address);

    let data = temp.path().join("data");
    let upscalers = data.join("models/upscalers");
    std::fs::create_dir_all(&upscalers).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/esrgan/tiny-x4.safetensors");
    std::fs::copy(fixture, upscalers.join("tiny-x4.safetensors")).unwrap();
    std::fs::write(upscalers.join("broken.safetensors"), b"not a model").unwrap();
    let tools = temp.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let opened = temp.path().join("opened.txt");
    let opener = tools.join("xdg-open");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let daemon = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--tray", "--data-dir"])
        .arg(&data)
        .env("DISPLAY", format!(":{display}"))
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .env("XDG_RUNTIME_DIR", temp.path())
        .env("TESSERA_ORT_LIB", &ort_lib)
        .env("PATH", path)
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut daemon = Reaped(daemon);

    let (sender, service) = wait_for("the tray to register with the watcher", || {
        items.lock().unwrap().first().cloned()
    });
    let item = Item {
        bus: bus(&address),
        path: if service.starts_with('/') {
            service
        } else {
            "/StatusNotifierItem".into()
        },
        sender,
    };
    wait_for("the menu", || (labels(&item).len() == 5).then_some(()));
    let menu = item.menu();
    assert_eq!(
        labels(&item),
        [
            "Idle",
            "Pause queue",
            "Open models folder",
            "Open log",
            "Quit Tessera"
        ]
    );
    assert!(
        !menu[0].enabled,
        "the job line is information, not a button"
    );
    assert_eq!(item.icon_colour(), Look::Idle.colour());

    // Pause: a job waits in the queue until Resume.
    item.click("Pause queue");
    wait_for("Resume in the menu", || {
        labels(&item)
            .contains(&"Resume queue".to_owned())
            .then_some(())
    });
    let location = paths::data_dir(Some(&data)).unwrap();
    let socket = paths::socket_address(None, &location);
    let mut client = Client::connect(&socket, "tray-test").unwrap();
    let params = JobParams::upscaler_only(2.0, Some("tiny-x4".into()));
    let accepted = client.submit(image(), params.clone()).unwrap();
    wait_for("the job line to show the waiting job", || {
        labels(&item)
            .contains(&"Paused, 1 waiting".to_owned())
            .then_some(())
    });
    let mut observer = Client::connect(&socket, "tray-test-status").unwrap();
    let status = observer.status().unwrap();
    assert_eq!(
        (status.running, status.queued),
        (None, 1),
        "held while paused"
    );
    item.click("Resume queue");
    let done = client.wait(accepted.job, |_| {}).unwrap();
    assert_eq!((done.image.width, done.image.height), (16, 12));
    wait_for("Pause back in the menu", || {
        labels(&item)
            .first()
            .is_some_and(|l| l == "Idle")
            .then_some(())
    });

    // A failing job turns the icon red and says why.
    let mut broken = params;
    broken.upscaler = Some("broken".into());
    let failing = client.submit(image(), broken).unwrap();
    assert!(client.wait(failing.job, |_| {}).is_err());
    wait_for("the failure in the menu", || {
        labels(&item)
            .first()
            .is_some_and(|l| l.starts_with("Failed: job"))
            .then_some(())
    });
    wait_for("the red icon", || {
        (item.icon_colour() == Look::Error.colour()).then_some(())
    });

    // Open models folder runs the desktop's opener on the folder.
    item.click("Open models folder");
    wait_for("xdg-open to be called", || {
        std::fs::read_to_string(&opened)
            .ok()
            .filter(|t| t.trim() == data.join("models").display().to_string())
    });

    // Quit stops the daemon cleanly: exit 0, socket gone, a new daemon can take its place.
    drop(client);
    drop(observer);
    item.click("Quit Tessera");
    let status = wait_for("the daemon to exit", || daemon.0.try_wait().unwrap());
    assert!(status.success(), "{status}");
    if let paths::SocketAddress::Path(file) = &socket {
        assert!(!file.exists(), "the socket is removed");
    }
    assert!(Client::connect(&socket, "after").is_err());
}
