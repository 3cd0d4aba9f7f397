//! The model step against a local HTTP server: a plain download, a connection dropped mid-file
//! (the next attempt resumes with `Range`), wrong bytes (refused, partial deleted, one line
//! naming the file), files already present, `--models-from` (every kind into its folder), and an
//! unreachable server; `tessera doctor` on the result and on the built-in default set.

mod support;

use std::collections::BTreeMap;
use support::{Behaviour, Entry, Home, Server, generated, manifest, run, stderr, stdout};

const SIZE: usize = 3 * 1024 * 1024 + 17;

struct Setup {
    home: Home,
    server: Server,
    content: Vec<u8>,
    manifest: std::path::PathBuf,
}

fn setup(behaviour: Behaviour) -> Setup {
    let home = Home::new();
    let content = generated(SIZE, 7);
    let mut files = BTreeMap::new();
    files.insert("/r1/model.pth".to_owned(), content.clone());
    let server = Server::start(files, behaviour);
    let manifest = manifest(
        home.path(),
        &[Entry {
            name: "test-model",
            file: "model.pth",
            kind: "upscaler",
            set: "default",
            content: &content,
            urls: vec![server.url("/r1/model.pth")],
        }],
    );
    Setup {
        home,
        server,
        content,
        manifest,
    }
}

fn install(s: &Setup, extra: &[&str]) -> std::process::Output {
    run(s
        .home
        .installer("")
        .args(["--no-service", "--no-plugins", "--ort-lib"])
        .arg(fake_library(&s.home))
        .arg("--manifest")
        .arg(&s.manifest)
        .args(extra))
}

fn fake_library(home: &Home) -> std::path::PathBuf {
    let lib = home.join("lib/libonnxruntime.so.1.32.0");
    if !lib.exists() {
        home.write("lib/libonnxruntime.so.1.32.0", "stand-in");
    }
    lib
}

fn installed(s: &Setup) -> std::path::PathBuf {
    s.home.data().join("models/upscalers/model.pth")
}

fn downloads(s: &Setup) -> Vec<String> {
    std::fs::read_dir(s.home.data().join("cache/downloads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_model_is_downloaded_verified_and_recorded() {
    let s = setup(Behaviour::Good);
    let output = install(&s, &[]);
    assert!(output.status.success());
    assert_eq!(std::fs::read(installed(&s)).unwrap(), s.content);
    assert!(stdout(&output).contains("model.pth"));
    assert!(
        stdout(&output).contains("1 file (3.15 MB); 1 not here yet: 3.15 MB to download"),
        "the size is said before the download"
    );
    assert!(stdout(&output).contains("downloaded and verified"));
    assert_eq!(s.server.ranges(), [None]);
    assert!(downloads(&s).is_empty(), "no partial file is left");
    let record = std::fs::read_to_string(s.home.data().join("install.toml")).unwrap();
    assert!(record.contains("models/upscalers/model.pth") && record.contains("item = \"model\""));
}

#[test]
fn a_dropped_connection_is_resumed_with_a_range_request() {
    let cut = 1_234_567;
    let s = setup(Behaviour::DropOnceAfter(cut));
    let output = install(&s, &[]);
    assert!(output.status.success());
    assert_eq!(std::fs::read(installed(&s)).unwrap(), s.content);
    assert_eq!(
        s.server.ranges(),
        [None, Some(format!("bytes={cut}-"))],
        "the second request asks only for the rest"
    );
    assert!(
        stderr(&output).contains("retrying"),
        "the retry is reported"
    );
    assert!(downloads(&s).is_empty());
}

#[test]
fn wrong_bytes_are_refused_and_the_partial_file_deleted() {
    let s = setup(Behaviour::WrongBytes);
    let output = install(&s, &[]);
    assert!(!output.status.success());
    let err = stderr(&output);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("tessera-install: could not fetch model.pth"),
        "{last}"
    );
    assert!(
        last.contains("SHA-256") && last.contains("deleted"),
        "{last}"
    );
    assert!(last.contains("--models-from"), "{last}");
    assert!(
        !installed(&s).exists(),
        "nothing unverified is moved into place"
    );
    assert!(downloads(&s).is_empty(), "the damaged download is gone");
}

#[test]
fn present_and_valid_files_are_not_fetched_again() {
    let s = setup(Behaviour::Good);
    assert!(install(&s, &[]).status.success());
    let output = install(&s, &[]);
    assert!(output.status.success());
    assert!(stdout(&output).contains("present and valid"));
    assert!(stdout(&output).contains("1 file (3.15 MB), all in place"));
    assert_eq!(s.server.ranges().len(), 1, "the second run made no request");
}

#[test]
fn a_damaged_file_in_place_is_left_alone_and_reported() {
    let s = setup(Behaviour::Good);
    let target = installed(&s);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"the user's own file").unwrap();
    let output = install(&s, &[]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("is there but is not the expected test-model") && err.contains("19 bytes"),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"the user's own file");
    assert!(s.server.ranges().is_empty());
}

#[test]
fn models_from_imports_by_name_or_by_hash_after_the_same_checks() {
    let s = setup(Behaviour::Good);
    let folder = s.home.join("mine");
    std::fs::create_dir_all(&folder).unwrap();
    // Under another name: found by size and SHA-256.
    std::fs::write(folder.join("renamed-download.bin"), &s.content).unwrap();
    std::fs::write(folder.join("other.pth"), b"unrelated").unwrap();
    let output = install(&s, &["--models-from", folder.to_str().unwrap()]);
    assert!(output.status.success());
    assert!(stdout(&output).contains(&format!(
        "3.15 MB to import from {} or download",
        folder.display()
    )));
    assert!(stdout(&output).contains("imported from"));
    assert_eq!(std::fs::read(installed(&s)).unwrap(), s.content);
    assert!(s.server.ranges().is_empty(), "nothing was downloaded");
    assert!(
        folder.join("renamed-download.bin").exists(),
        "the source is copied, not moved"
    );

    // A damaged file under the expected name is refused with the reason.
    let s = setup(Behaviour::Good);
    let folder = s.home.join("mine");
    std::fs::create_dir_all(&folder).unwrap();
    let mut damaged = s.content.clone();
    damaged[10] ^= 1;
    std::fs::write(folder.join("MODEL.pth"), &damaged).unwrap();
    let output = install(&s, &["--models-from", folder.to_str().unwrap()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("MODEL.pth is not the expected test-model") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(!installed(&s).exists());
}

#[test]
fn an_unreachable_server_stops_with_one_line_naming_the_file_and_the_import() {
    let home = Home::new();
    let content = generated(1000, 3);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let manifest = manifest(
        home.path(),
        &[Entry {
            name: "test-model",
            file: "model.pth",
            kind: "upscaler",
            set: "default",
            content: &content,
            urls: vec![format!("http://127.0.0.1:{port}/r1/model.pth")],
        }],
    );
    let output = run(home
        .installer("")
        .args(["--no-service", "--no-plugins", "--ort-lib"])
        .arg(fake_library(&home))
        .arg("--manifest")
        .arg(&manifest));
    assert!(!output.status.success());
    let err = stderr(&output);
    let errors: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("tessera-install:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("could not fetch model.pth: 127.0.0.1"),
        "{err}"
    );
    assert!(errors[0].contains("cannot be reached"), "{err}");
    assert!(
        errors[0].contains("tessera-install --models-from DIR"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("retrying")).count(),
        3,
        "four attempts"
    );
}

#[test]
fn opt_in_models_need_their_name_and_show_their_licence() {
    let s = setup(Behaviour::Good);
    let output = run(s
        .home
        .installer("")
        .args(["--no-service", "--no-plugins", "--no-models", "--ort-lib"])
        .arg(fake_library(&s.home))
        .args(["--with", "no-such-model"]));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no model named \"no-such-model\""));
    assert!(
        stderr(&output).contains("4x-UltraSharp"),
        "the known names are listed"
    );

    let output = run(s
        .home
        .installer("")
        .args(["--no-service", "--no-plugins", "--no-models", "--ort-lib"])
        .arg(fake_library(&s.home)));
    assert!(output.status.success());
    let out = stdout(&output);
    assert!(
        out.contains("4x-UltraSharp") && out.contains("CC-BY-NC-SA-4.0: non-commercial"),
        "{out}"
    );
    assert!(
        out.contains("tessera-install --with 4x-UltraSharp"),
        "{out}"
    );
}

#[test]
fn without_python_the_runtime_step_says_what_to_do() {
    let home = Home::new();
    let empty = home.join("no-tools");
    std::fs::create_dir_all(&empty).unwrap();
    let output = run(home
        .installer("")
        .args(["--no-service", "--no-plugins", "--no-models"])
        .env("PATH", &empty));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("needs Python 3 with pip"), "{err}");
    assert!(err.contains("tessera-install --ort-lib PATH"), "{err}");
}

/// `tessera doctor` for this HOME (against `manifest`, else the built-in one).
fn doctor(home: &Home, manifest: Option<&std::path::Path>) -> std::process::Output {
    let mut command = std::process::Command::new(tessera_e2e::tessera_bin());
    command.arg("doctor");
    if let Some(manifest) = manifest {
        command.arg("--manifest").arg(manifest);
    }
    run(command
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH"))
}

#[test]
fn models_from_puts_every_kind_in_its_folder_and_doctor_checks_them() {
    let home = Home::new();
    let server = Server::start(BTreeMap::new(), Behaviour::Good);
    // (manifest kind, file, folder under models/): the default set's kinds.
    let kinds = [
        ("checkpoint", "juggernaut.safetensors", "checkpoints"),
        ("vae", "vae.safetensors", "vae"),
        ("controlnet", "tile.pth", "controlnet"),
        ("upscaler", "esrgan.pth", "upscalers"),
        ("lora", "detail.safetensors", "loras"),
        ("embedding", "negative.pt", "embeddings"),
    ];
    let contents: Vec<Vec<u8>> = (0..kinds.len())
        .map(|i| generated(1000 * (i + 1), i as u64))
        .collect();
    let entries: Vec<Entry> = kinds
        .iter()
        .zip(&contents)
        .map(|((kind, file, _), content)| Entry {
            name: file.split('.').next().unwrap(),
            file,
            kind,
            set: "default",
            content,
            urls: vec![server.url(&format!("/r1/{file}"))],
        })
        .collect();
    let manifest = manifest(home.path(), &entries);
    let folder = home.join("mine");
    std::fs::create_dir_all(&folder).unwrap();
    for ((_, file, _), content) in kinds.iter().zip(&contents) {
        std::fs::write(folder.join(file), content).unwrap();
    }
    let output = run(home
        .installer("")
        .args(["--no-service", "--no-plugins", "--ort-lib"])
        .arg(fake_library(&home))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--models-from")
        .arg(&folder));
    assert!(output.status.success());
    assert!(
        stdout(&output).contains("6 files (21.0 kB); 6 not here yet: 21.0 kB to import from"),
        "{}",
        stdout(&output)
    );
    assert!(server.ranges().is_empty(), "nothing was downloaded");
    for ((_, file, sub), content) in kinds.iter().zip(&contents) {
        let placed = home.data().join("models").join(sub).join(file);
        assert_eq!(&std::fs::read(&placed).unwrap(), content, "{sub}/{file}");
    }

    let out = stdout(&doctor(&home, Some(&manifest)));
    for (_, file, sub) in kinds {
        let name = file.split('.').next().unwrap();
        assert!(
            out.contains(&format!(
                "ok       {sub}/{file} valid ({name}, licence MIT)"
            )),
            "{sub}/{file}: {out}"
        );
    }
    assert!(!out.contains("is missing"), "{out}");
}

#[test]
fn doctor_names_each_missing_default_model() {
    let home = Home::new();
    let out = stdout(&doctor(&home, None));
    for file in [
        "checkpoints/juggernaut_reborn.safetensors (2.13 GB)",
        "vae/vae-ft-mse-840000-ema-pruned.safetensors (335 MB)",
        "controlnet/control_v11f1e_sd15_tile.pth (1.45 GB)",
        "upscalers/RealESRGAN_x4plus.pth (67.0 MB)",
        "loras/more_details.safetensors (9.55 MB)",
        "loras/SDXLrender_v2.0.safetensors (181 MB)",
        "embeddings/JuggernautNegative-neg.pt (13.3 kB)",
    ] {
        assert!(
            out.contains(&format!("PROBLEM  the default model {file} is missing")),
            "{file}: {out}"
        );
    }
    assert!(
        !out.contains("4x-UltraSharp.pth is missing"),
        "an opt-in model is not a problem: {out}"
    );
}

#[test]
fn a_download_that_cannot_fit_on_the_disk_is_refused_before_it_starts() {
    let s = setup(Behaviour::Good);
    // The same entry, claimed to be 1 EB: more than any disk the tests run on has free.
    let text = std::fs::read_to_string(&s.manifest).unwrap();
    let huge = text.replace(&format!("size = {SIZE}\n"), "size = 1000000000000000000\n");
    assert_ne!(huge, text);
    std::fs::write(&s.manifest, huge).unwrap();
    let output = install(&s, &[]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("not enough free space for the models: 1000000000 GB to fetch"),
        "{err}"
    );
    assert!(err.contains("tessera-install again"), "{err}");
    assert_eq!(s.server.ranges().len(), 0, "nothing was fetched");
    assert!(downloads(&s).is_empty() && !installed(&s).exists());
}
