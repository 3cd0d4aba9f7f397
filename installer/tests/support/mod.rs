//! Helpers for the installer's tests: a local HTTP server on 127.0.0.1 that serves generated
//! files (honouring `Range`, or dropping the connection mid-file once, or sending wrong bytes)
//! and the HTML pages of a package index, a manifest pointing at it, a temporary HOME with fake
//! editor folders, a recorder standing in for `systemctl`, and a snapshot of a folder tree to
//! compare before and after.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves the file, with `206 Partial Content` for a `Range` request.
    Good,
    /// The first request gets the full `Content-Length` header but only this many bytes before
    /// the connection closes; later requests are served as `Good`.
    DropOnceAfter(usize),
    /// Serves the right length with one byte changed.
    WrongBytes,
}

pub struct Server {
    pub port: u16,
    /// The `Range` header of each request (`None` when absent), in order.
    pub requests: Arc<Mutex<Vec<Option<String>>>>,
    /// The path of each request, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `files` (URL path → content) until the test ends.
    pub fn start(files: BTreeMap<String, Vec<u8>>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let path_log = paths.clone();
        std::thread::spawn(move || {
            let mut dropped = false;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mode = match behaviour {
                    Behaviour::DropOnceAfter(n) if !dropped => {
                        dropped = true;
                        Some(n)
                    }
                    _ => None,
                };
                let _ = answer(stream, &files, behaviour, mode, &log, &path_log);
            }
        });
        Server {
            port,
            requests,
            paths,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ranges(&self) -> Vec<Option<String>> {
        self.requests.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

fn answer(
    mut stream: TcpStream,
    files: &BTreeMap<String, Vec<u8>>,
    behaviour: Behaviour,
    drop_after: Option<usize>,
    log: &Mutex<Vec<Option<String>>>,
    path_log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    log.lock().unwrap().push(range.clone());
    path_log.lock().unwrap().push(path.clone());
    // Pages of a package index (`/simple/NAME/`) are HTML, as pip expects.
    let content_type = if path.ends_with('/') {
        "Content-Type: text/html\r\n"
    } else {
        ""
    };
    let Some(content) = files.get(&path) else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let mut body = content.clone();
    if behaviour == Behaviour::WrongBytes {
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|s| *s < body.len());
    let (head, slice) = match start {
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - s,
                body.len() - 1,
                body.len()
            ),
            &body[s..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{content_type}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            &body[..],
        ),
    };
    stream.write_all(head.as_bytes())?;
    match drop_after {
        Some(n) => {
            stream.write_all(&slice[..n.min(slice.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        None => stream.write_all(slice),
    }
}

/// Deterministic pseudo-random bytes.
pub fn generated(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One manifest entry: (name, file, kind, set, content, URLs).
pub struct Entry<'a> {
    pub name: &'a str,
    pub file: &'a str,
    /// The manifest's kind word: `upscaler`, `checkpoint`, `vae`, `controlnet`, `lora`, `embedding`.
    pub kind: &'a str,
    pub set: &'a str,
    pub content: &'a [u8],
    pub urls: Vec<String>,
}

/// Writes a manifest for `entries` and returns its path.
pub fn manifest(folder: &Path, entries: &[Entry]) -> PathBuf {
    let mut text = String::new();
    for e in entries {
        text.push_str(&format!(
            "[[model]]\nname = {:?}\nfile = {:?}\nkind = {:?}\nset = {:?}\nrole = \"test model\"\nsize = {}\nsha256 = {:?}\nlicence = \"MIT\"\n",
            e.name,
            e.file,
            e.kind,
            e.set,
            e.content.len(),
            sha256_hex(e.content)
        ));
        for url in &e.urls {
            text.push_str(&format!(
                "[[model.source]]\nurl = {url:?}\nrevision = \"r1\"\n"
            ));
        }
    }
    let path = folder.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A temporary HOME, with the variables that would point outside it removed.
pub struct Home {
    pub temp: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            temp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.temp.path().join(rel)
    }

    pub fn data(&self) -> PathBuf {
        self.join(".local/share/tessera")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.join(rel)).unwrap();
    }

    /// `tessera-install` with this HOME; `systemctl` is whatever `systemctl` says (a path, or
    /// `""` for none).
    pub fn installer(&self, systemctl: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-install"));
        command
            .env("HOME", self.path())
            .env("TESSERA_INSTALL_SYSTEMCTL", systemctl)
            .env("TESSERA_INSTALL_RETRY_MS", "20")
            .env("XDG_RUNTIME_DIR", self.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_SOCKET")
            .env_remove("TESSERA_ORT_LIB")
            .env_remove("ORT_DYLIB_PATH");
        command
    }

    /// A `systemctl` stand-in that appends its arguments to `systemctl.log` and succeeds.
    pub fn systemctl_recorder(&self, tools: &Path) -> PathBuf {
        let script = tools.join("systemctl");
        let log = tools.join("systemctl.log");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\nexit 0\n", log.display()),
        )
        .unwrap();
        make_executable(&script);
        script
    }
}

pub fn make_executable(path: &Path) {
    #[cfg(not(unix))]
    let _ = path;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs and returns the output, printing it when the test fails later.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    eprintln!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every entry below `root`: relative path → kind, mode and content (hash) or link target.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            #[cfg(unix)]
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            #[cfg(not(unix))]
            let mode = 0;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let mut bytes = Vec::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
                format!("file {mode:o} {}", sha256_hex(&bytes))
            };
            found.insert(rel, what);
        }
    }
    found
}

/// The machine's pip, told nothing but the index: no configuration file, cache or links.
pub fn isolated_pip(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PIP_") {
            command.env_remove(key);
        }
    }
    command
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_CACHE_DIR", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("TESSERA_PIP_INDEX_URL")
}
