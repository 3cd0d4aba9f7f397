//! Embeds the editor plug-ins into `tessera-install`, so that the installer needs nothing from
//! the source tree at run time:
//!
//! - Krita: the release zip made by `plugin-krita/build.py` (the same file users give to
//!   *Import Python Plugin from File…*), built here with a fixed timestamp.
//! - GIMP: `plugin-gimp/tessera-upscale/` and the protocol codec `shared/python/tessera_client/`.
//!
//! A plug-in missing from the tree (or a Krita build that cannot run because Python 3 is
//! missing) is embedded as absent, and the installer says so when it runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let repo = here.parent().expect("installer/ is inside the repository");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    for watched in [
        "plugin-gimp",
        "plugin-krita",
        "shared/python/tessera_client",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    let mut code = String::new();
    code.push_str("/// GIMP plug-in files: (path below plug-ins/, content, executable).\n");
    code.push_str("pub static GIMP: &[(&str, &[u8], bool)] = &[\n");
    let gimp = repo.join("plugin-gimp/tessera-upscale");
    if gimp.join("tessera-upscale.py").is_file() {
        for (rel, abs) in files(&gimp, &|_| true) {
            let exec = rel == "tessera-upscale.py";
            entry(&mut code, &format!("tessera-upscale/{rel}"), &abs, exec);
        }
        let client = repo.join("shared/python/tessera_client");
        for (rel, abs) in files(&client, &|_| true) {
            entry(
                &mut code,
                &format!("tessera-upscale/tessera_client/{rel}"),
                &abs,
                false,
            );
        }
    }
    code.push_str("];\n");
    code.push_str("/// The Krita plug-in's release zip.\n");
    match krita_zip(repo, &out) {
        Ok(Some(zip)) => writeln!(
            code,
            "pub static KRITA_ZIP: Option<&[u8]> = Some(include_bytes!({:?}));",
            zip.display().to_string()
        )
        .unwrap(),
        Ok(None) => code.push_str("pub static KRITA_ZIP: Option<&[u8]> = None;\n"),
        Err(reason) => {
            println!("cargo:warning=the Krita plug-in is not embedded: {reason}");
            code.push_str("pub static KRITA_ZIP: Option<&[u8]> = None;\n");
        }
    }
    writeln!(
        code,
        "pub static KRITA_MISSING_REASON: &str = {:?};",
        krita_reason(repo)
    )
    .unwrap();
    std::fs::write(out.join("plugins.rs"), code).expect("OUT_DIR is writable");
}

fn entry(code: &mut String, rel: &str, abs: &Path, exec: bool) {
    writeln!(
        code,
        "    ({rel:?}, include_bytes!({:?}), {exec}),",
        abs.display().to_string()
    )
    .unwrap();
}

/// Files below `root` (relative path with `/`, absolute path), sorted, without caches.
fn files(root: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "__pycache__" || name.starts_with('.') || name.ends_with(".pyc") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                let rel = path.strip_prefix(root).expect("below root");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((rel, path));
            }
        }
    }
    found.sort();
    found
}

fn krita_reason(repo: &Path) -> &'static str {
    if repo.join("plugin-krita/build.py").is_file() {
        "Python 3 was missing when tessera-install was built"
    } else {
        "the source tree it was built from has no Krita plug-in"
    }
}

/// Runs `plugin-krita/build.py --out OUT_DIR/krita` and returns the zip it wrote.
fn krita_zip(repo: &Path, out: &Path) -> Result<Option<PathBuf>, String> {
    let script = repo.join("plugin-krita/build.py");
    if !script.is_file() {
        return Ok(None);
    }
    let folder = out.join("krita");
    let _ = std::fs::remove_dir_all(&folder);
    let mut last = String::from("no Python 3 found (python3, python)");
    for python in ["python3", "python"] {
        let result = Command::new(python)
            .arg(&script)
            .arg("--out")
            .arg(&folder)
            .env("SOURCE_DATE_EPOCH", "315532800")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output();
        match result {
            Ok(output) if output.status.success() => {
                let printed = String::from_utf8_lossy(&output.stdout);
                let zip = PathBuf::from(printed.trim());
                return if zip.is_file() {
                    Ok(Some(zip))
                } else {
                    Err(format!("build.py printed {printed:?}, which is not a file"))
                };
            }
            Ok(output) => {
                last = format!(
                    "{python} {} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                break;
            }
            Err(e) => last = format!("{python}: {e}"),
        }
    }
    Err(last)
}
