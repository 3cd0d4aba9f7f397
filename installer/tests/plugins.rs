//! Plugin execution providers in the install, run as a user would (`tessera-install
//! --providers`, `tessera-install --uninstall`), with the machine's own pip resolving against a
//! package index served on 127.0.0.1. Its wheels are small stand-ins with the layout of the
//! real ones: the plain `onnxruntime` wheel and `onnxruntime-ep-openvino`, which keeps the
//! plugin and OpenVINO's libraries beside its Python code.

#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use support::{Behaviour, Home, Server, isolated_pip, run, stdout};

fn wheel(project: &str, version: &str, files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let dist = project.replace('-', "_");
    let platform = format!("manylinux_2_28_{}", std::env::consts::ARCH);
    let name = format!("{dist}-{version}-py3-none-{platform}.whl");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let info = format!("{dist}-{version}.dist-info");
    let mut all: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect();
    all.push((
        format!("{info}/METADATA"),
        format!("Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n").into_bytes(),
    ));
    all.push((
        format!("{info}/WHEEL"),
        format!("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-{platform}\n")
            .into_bytes(),
    ));
    all.push((format!("{info}/RECORD"), Vec::new()));
    for (file, bytes) in &all {
        zip.start_file(file.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    (name, zip.finish().unwrap().into_inner())
}

/// A PEP 503 index of the two wheels.
fn index() -> BTreeMap<String, Vec<u8>> {
    let wheels = [
        (
            "onnxruntime",
            wheel(
                "onnxruntime",
                "9.9.7",
                &[
                    ("onnxruntime/capi/libonnxruntime.so.9.9.7", b"runtime"),
                    ("onnxruntime/__init__.py", b""),
                ],
            ),
        ),
        (
            "onnxruntime-ep-openvino",
            wheel(
                "onnxruntime-ep-openvino",
                "1.8.1",
                &[
                    ("onnxruntime_ep_openvino/__init__.py", b"python"),
                    (
                        "onnxruntime_ep_openvino/libonnxruntime_providers_openvino_plugin.so",
                        b"plugin",
                    ),
                    ("onnxruntime_ep_openvino/libopenvino.so.2641", b"openvino"),
                    (
                        "onnxruntime_ep_openvino/libopenvino_intel_gpu_plugin.so",
                        b"gpu",
                    ),
                    ("onnxruntime_ep_openvino/cache.json", b"{}"),
                ],
            ),
        ),
    ];
    let mut files = BTreeMap::new();
    let mut root = String::from("<!DOCTYPE html><html><body>\n");
    for (project, (name, bytes)) in wheels {
        files.insert(
            format!("/simple/{project}/"),
            format!(
                "<!DOCTYPE html><html><body><a href=\"/files/{name}\">{name}</a></body></html>\n"
            )
            .into_bytes(),
        );
        files.insert(format!("/files/{name}"), bytes);
        root.push_str(&format!("<a href=\"/simple/{project}/\">{project}</a>\n"));
    }
    root.push_str("</body></html>\n");
    files.insert("/simple/".into(), root.into_bytes());
    files
}

#[test]
fn a_plugin_provider_is_installed_recorded_and_uninstalled() {
    let home = Home::new();
    let server = Server::start(index(), Behaviour::Good);
    let mut install = home.installer("");
    isolated_pip(&mut install)
        .args(["--no-service", "--no-plugins", "--no-models"])
        .args(["--ort-package", "onnxruntime", "--ort-version", "9.9.7"])
        .args(["--providers", "openvino:gpu,cpu"])
        .arg("--pip-index-url")
        .arg(server.url("/simple/"));
    let output = run(&mut install);
    assert!(output.status.success());
    let out = stdout(&output);
    assert!(out.contains("onnxruntime-ep-openvino 1.8.1 in"), "{out}");
    assert!(
        out.contains("execution providers: openvino:gpu, cpu"),
        "{out}"
    );
    let runtime = home.data().join("runtime");
    let folder = runtime.join("plugins/openvino");
    for file in [
        "libonnxruntime_providers_openvino_plugin.so",
        "libopenvino.so.2641",
        "libopenvino_intel_gpu_plugin.so",
        "cache.json",
    ] {
        assert!(folder.join(file).is_file(), "{file} missing");
    }
    assert!(!folder.join("__init__.py").exists());
    let record = tessera_store::runtime::read_record(&runtime).unwrap();
    assert_eq!(record.providers, ["openvino:gpu", "cpu"]);
    assert_eq!(record.plugins.len(), 1);
    assert_eq!(record.plugins[0].files.len(), 4);
    // The install record lists the plugin's files, so that --uninstall takes them.
    let installed = std::fs::read_to_string(home.data().join("install.toml")).unwrap();
    assert!(installed.contains("libopenvino.so.2641"), "{installed}");
    // `tessera doctor` checks the recorded files and names one that is missing.
    let doctor = |home: &Home| {
        let mut command = Command::new(tessera_e2e::tessera_bin());
        command
            .arg("doctor")
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", home.path())
            .env_remove("XDG_DATA_HOME")
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_SOCKET")
            .env_remove("TESSERA_ORT_LIB")
            .env_remove("ORT_DYLIB_PATH");
        stdout(&run(&mut command))
    };
    let text = doctor(&home);
    assert!(
        text.lines().any(|l| l.starts_with("  ok ")
            && l.contains("onnxruntime-ep-openvino 1.8.1 in")
            && l.contains("4 files")),
        "{text}"
    );
    std::fs::remove_file(folder.join("libopenvino.so.2641")).unwrap();
    let text = doctor(&home);
    let line = text
        .lines()
        .find(|l| l.contains("onnxruntime-ep-openvino 1.8.1 in"))
        .unwrap();
    assert!(
        line.starts_with("  PROBLEM")
            && line.contains("libopenvino.so.2641 (8 bytes) missing or changed"),
        "{line}"
    );
    let mut uninstall = home.installer("");
    uninstall.arg("--uninstall");
    assert!(run(&mut uninstall).status.success());
    assert!(!folder.exists(), "the plugin's folder is gone");
}
