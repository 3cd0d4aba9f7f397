//! Where things go on each platform: the `tessera` program, the login service, and the editors'
//! plug-in folders (native and Flatpak), computed from an explicit [`Home`] so that tests can
//! point everything at a temporary folder and check the macOS and Windows tables on Linux.
//!
//! The editor folders are the ones Krita's and GIMP's manuals give (docs.krita.org, "Resource
//! Management" and "How to make a Krita Python plugin"; developer.gimp.org, the GIMP 3 plug-in
//! tutorial): Krita keeps resources in `~/.local/share/krita/` (Flatpak
//! `~/.var/app/org.kde.krita/data/krita/`) with `pykrita/` and `actions/` inside and its
//! settings in `kritarc`; GIMP 3 keeps per-user plug-ins in `~/.config/GIMP/3.N/plug-ins/`
//! (Flatpak `~/.var/app/org.gimp.GIMP/config/GIMP/3.N/`).

use std::path::{Path, PathBuf};

/// `base` joined with a `/`-separated relative path one component at a time, so that the
/// result has the platform's own separators throughout (`C:\Users\ana\AppData\Roaming\krita`,
/// never `…\Roaming/krita` on Windows).
pub fn join_relative(base: &Path, relative: &str) -> PathBuf {
    relative
        .split('/')
        .filter(|part| !part.is_empty())
        .fold(base.to_path_buf(), |path, part| path.join(part))
}

pub use crate::Platform;

/// The user's folders, as the environment gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub platform: Platform,
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME` (absolute), else `~/.config`.
    pub config: PathBuf,
    /// `$XDG_DATA_HOME` (absolute), else `~/.local/share`.
    pub data: PathBuf,
    /// `%APPDATA%` on Windows.
    pub appdata: PathBuf,
    /// `%LOCALAPPDATA%` on Windows.
    pub local_appdata: PathBuf,
}

impl Home {
    /// From the environment of this process; `None` without a home folder.
    pub fn from_env() -> Option<Home> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        // Windows programs find the profile in USERPROFILE; a HOME there comes from a Unix
        // shell (MSYS2, Cygwin, Wine) and names something else.
        let (first, second) = if cfg!(windows) {
            ("USERPROFILE", "HOME")
        } else {
            ("HOME", "USERPROFILE")
        };
        let home = var(first).or_else(|| var(second)).map(PathBuf::from)?;
        let xdg = |name: &str, default: &str| {
            var(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| join_relative(&home, default))
        };
        Some(Home {
            platform: Platform::current(),
            config: xdg("XDG_CONFIG_HOME", ".config"),
            data: xdg("XDG_DATA_HOME", ".local/share"),
            appdata: var("APPDATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| join_relative(&home, "AppData/Roaming")),
            local_appdata: var("LOCALAPPDATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| join_relative(&home, "AppData/Local")),
            home,
        })
    }

    /// A home for `platform` rooted at `home`, with default sub-folders.
    pub fn at(platform: Platform, home: &Path) -> Home {
        Home {
            platform,
            home: home.to_path_buf(),
            config: home.join(".config"),
            data: join_relative(home, ".local/share"),
            appdata: join_relative(home, "AppData/Roaming"),
            local_appdata: join_relative(home, "AppData/Local"),
        }
    }

    /// Where the `tessera` program is installed.
    pub fn bin_dir(&self) -> PathBuf {
        match self.platform {
            Platform::Windows => join_relative(&self.local_appdata, "Programs/Tessera"),
            _ => join_relative(&self.home, ".local/bin"),
        }
    }

    /// The file that starts `tessera serve` at login.
    pub fn service_file(&self) -> PathBuf {
        match self.platform {
            Platform::Linux => join_relative(&self.config, "systemd/user").join(SYSTEMD_UNIT),
            Platform::MacOs => join_relative(&self.home, "Library/LaunchAgents")
                .join(format!("{LAUNCHD_LABEL}.plist")),
            Platform::Windows => join_relative(
                &self.appdata,
                "Microsoft/Windows/Start Menu/Programs/Startup/Tessera.vbs",
            ),
        }
    }

    /// Every Krita install this user has, found or not (see [`EditorPlace::found`]).
    pub fn krita_places(&self) -> Vec<EditorPlace> {
        let flatpak = join_relative(&self.home, ".var/app").join(KRITA_FLATPAK);
        let mut places = match self.platform {
            Platform::Linux => vec![EditorPlace {
                editor: Editor::Krita,
                flavour: "native",
                folder: self.data.join("krita"),
                settings: Some(self.config.join("kritarc")),
                markers: vec![self.data.join("krita"), self.config.join("kritarc")],
            }],
            Platform::MacOs => vec![EditorPlace {
                editor: Editor::Krita,
                flavour: "native",
                folder: join_relative(&self.home, "Library/Application Support/krita"),
                settings: Some(join_relative(&self.home, "Library/Preferences/kritarc")),
                markers: vec![
                    join_relative(&self.home, "Library/Application Support/krita"),
                    join_relative(&self.home, "Library/Preferences/kritarc"),
                ],
            }],
            Platform::Windows => vec![EditorPlace {
                editor: Editor::Krita,
                flavour: "native",
                folder: self.appdata.join("krita"),
                settings: Some(self.local_appdata.join("kritarc")),
                markers: vec![
                    self.appdata.join("krita"),
                    self.local_appdata.join("kritarc"),
                ],
            }],
        };
        if self.platform == Platform::Linux {
            places.push(EditorPlace {
                editor: Editor::Krita,
                flavour: "Flatpak",
                folder: join_relative(&flatpak, "data/krita"),
                settings: Some(join_relative(&flatpak, "config/kritarc")),
                markers: vec![flatpak.clone()],
            });
        }
        places
    }

    /// The GIMP 3.x plug-ins folders of every GIMP 3 series this user has run (each series
    /// has its own configuration folder, `GIMP/3.0`, `GIMP/3.2`, …), native and Flatpak.
    pub fn gimp_places(&self) -> Vec<EditorPlace> {
        let mut roots = vec![(
            "native",
            match self.platform {
                Platform::Linux => self.config.join("GIMP"),
                Platform::MacOs => join_relative(&self.home, "Library/Application Support/GIMP"),
                Platform::Windows => self.appdata.join("GIMP"),
            },
        )];
        if self.platform == Platform::Linux {
            roots.push((
                "Flatpak",
                join_relative(
                    &join_relative(&self.home, ".var/app").join(GIMP_FLATPAK),
                    "config/GIMP",
                ),
            ));
        }
        let mut places = Vec::new();
        for (flavour, root) in roots {
            for series in gimp3_series(&root) {
                let config = root.join(&series);
                places.push(EditorPlace {
                    editor: Editor::Gimp,
                    flavour,
                    folder: config.join("plug-ins"),
                    settings: None,
                    markers: vec![config],
                });
            }
        }
        places
    }
}

pub const SYSTEMD_UNIT: &str = "tessera.service";
pub const LAUNCHD_LABEL: &str = "org.tessera.daemon";
pub const KRITA_FLATPAK: &str = "org.kde.krita";
pub const GIMP_FLATPAK: &str = "org.gimp.GIMP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Editor {
    Krita,
    Gimp,
}

impl Editor {
    pub fn name(self) -> &'static str {
        match self {
            Editor::Krita => "Krita",
            Editor::Gimp => "GIMP",
        }
    }
}

/// One editor install's plug-in location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditorPlace {
    pub editor: Editor,
    /// `native` or `Flatpak`.
    pub flavour: &'static str,
    /// Krita: the resource folder (with `pykrita/`, `actions/`); GIMP: the `plug-ins` folder.
    pub folder: PathBuf,
    /// Krita's `kritarc`.
    pub settings: Option<PathBuf>,
    /// Paths whose existence shows the editor has run for this user.
    markers: Vec<PathBuf>,
}

impl EditorPlace {
    /// Whether this editor install exists for the user (it has run once).
    pub fn found(&self) -> bool {
        self.markers.iter().any(|m| m.exists())
    }

    /// e.g. `Krita (Flatpak)` or `GIMP 3.0 (native)`.
    pub fn label(&self) -> String {
        match self.editor {
            Editor::Krita => format!("Krita ({})", self.flavour),
            Editor::Gimp => {
                let series = self
                    .folder
                    .parent()
                    .and_then(Path::file_name)
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("GIMP {series} ({})", self.flavour)
            }
        }
    }
}

/// `3.0`, `3.2`, … folders in a GIMP configuration root, sorted.
fn gimp3_series(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut series: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix("3.")
                .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    series.sort();
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_editor_folders_native_and_flatpak() {
        let temp = tempfile::tempdir().unwrap();
        let h = Home::at(Platform::Linux, temp.path());
        let krita = h.krita_places();
        assert_eq!(krita.len(), 2);
        assert_eq!(krita[0].folder, temp.path().join(".local/share/krita"));
        assert_eq!(krita[0].settings, Some(temp.path().join(".config/kritarc")));
        assert_eq!(
            krita[1].folder,
            temp.path().join(".var/app/org.kde.krita/data/krita")
        );
        assert_eq!(
            krita[1].settings,
            Some(temp.path().join(".var/app/org.kde.krita/config/kritarc"))
        );
        assert!(krita.iter().all(|p| !p.found()));
        std::fs::create_dir_all(temp.path().join(".config")).unwrap();
        std::fs::write(temp.path().join(".config/kritarc"), "").unwrap();
        assert!(krita[0].found() && !krita[1].found());
        assert_eq!(krita[1].label(), "Krita (Flatpak)");

        assert!(h.gimp_places().is_empty());
        for series in ["2.10", "3.0", "3.2", "3.x", "30"] {
            std::fs::create_dir_all(temp.path().join(".config/GIMP").join(series)).unwrap();
        }
        std::fs::create_dir_all(temp.path().join(".var/app/org.gimp.GIMP/config/GIMP/3.0"))
            .unwrap();
        let gimp: Vec<_> = h
            .gimp_places()
            .iter()
            .map(|p| (p.label(), p.folder.clone()))
            .collect();
        assert_eq!(
            gimp,
            [
                (
                    "GIMP 3.0 (native)".into(),
                    temp.path().join(".config/GIMP/3.0/plug-ins")
                ),
                (
                    "GIMP 3.2 (native)".into(),
                    temp.path().join(".config/GIMP/3.2/plug-ins")
                ),
                (
                    "GIMP 3.0 (Flatpak)".into(),
                    temp.path()
                        .join(".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins")
                ),
            ]
        );
        assert_eq!(
            h.service_file(),
            temp.path().join(".config/systemd/user/tessera.service")
        );
        assert_eq!(h.bin_dir(), temp.path().join(".local/bin"));
    }

    #[test]
    fn relative_paths_take_the_platforms_separator() {
        let joined = join_relative(Path::new("base"), "a/b//c");
        assert_eq!(joined, Path::new("base").join("a").join("b").join("c"));
        assert_eq!(
            joined.display().to_string(),
            ["base", "a", "b", "c"].join(std::path::MAIN_SEPARATOR_STR)
        );
    }

    #[test]
    fn macos_and_windows_tables() {
        let root = Path::new("/h");
        let mac = Home::at(Platform::MacOs, root);
        assert_eq!(mac.krita_places().len(), 1, "no Flatpak on macOS");
        assert_eq!(
            mac.krita_places()[0].folder,
            root.join("Library/Application Support/krita")
        );
        assert_eq!(
            mac.service_file(),
            root.join("Library/LaunchAgents/org.tessera.daemon.plist")
        );
        let win = Home::at(Platform::Windows, root);
        assert_eq!(
            win.krita_places()[0].folder,
            root.join("AppData/Roaming/krita")
        );
        assert_eq!(
            win.krita_places()[0].settings,
            Some(root.join("AppData/Local/kritarc"))
        );
        assert_eq!(win.bin_dir(), root.join("AppData/Local/Programs/Tessera"));
        assert!(
            win.service_file()
                .ends_with("Microsoft/Windows/Start Menu/Programs/Startup/Tessera.vbs")
        );
    }
}
