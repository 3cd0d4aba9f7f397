//! The CUDA part of the runtime install, run as a user would (`tessera-install`, `tessera
//! runtime install`, `tessera doctor`, `tessera-install --uninstall`), with the machine's own pip
//! resolving against a package index served on 127.0.0.1. Its wheels are small ones built here
//! with the layout of the real ones: `onnxruntime_gpu` wheels whose METADATA asks, under the
//! extras `cuda` and `cudnn`, for the CUDA 13 runtime wheels (9.9.9, as onnxruntime-gpu 1.31.1
//! does) or the CUDA 12 ones (9.9.8, as 1.23.2 does), and NVIDIA wheels that keep their
//! libraries where the real ones do (`nvidia/cu13/lib/`, `nvidia/cublas/lib/`, `nvidia/cudnn/lib/`)
//! beside headers and static libraries, with their dependencies (cuDNN needs cuBLAS).

#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use support::{Behaviour, Home, Server, generated, isolated_pip, run, snapshot, stderr, stdout};

struct Wheel {
    /// Normalised project name, e.g. `nvidia-cudnn-cu13`.
    project: &'static str,
    version: &'static str,
    platform: String,
    requires: Vec<&'static str>,
    /// (path inside the wheel, content)
    files: Vec<(String, Vec<u8>)>,
}

impl Wheel {
    fn file_name(&self) -> String {
        format!(
            "{}-{}-py3-none-{}.whl",
            self.project.replace('-', "_"),
            self.version,
            self.platform
        )
    }

    fn bytes(&self) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let info = format!(
            "{}-{}.dist-info",
            self.project.replace('-', "_"),
            self.version
        );
        let mut metadata = format!(
            "Metadata-Version: 2.1\nName: {}\nVersion: {}\n",
            self.project, self.version
        );
        for requirement in &self.requires {
            metadata.push_str(&format!("Requires-Dist: {requirement}\n"));
        }
        metadata.push_str("\nA stand-in for tests.\n");
        let mut files = self.files.clone();
        files.push((format!("{info}/METADATA"), metadata.into_bytes()));
        files.push((
            format!("{info}/WHEEL"),
            format!(
                "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-{}\n",
                self.platform
            )
            .into_bytes(),
        ));
        files.push((format!("{info}/RECORD"), Vec::new()));
        for (name, bytes) in &files {
            zip.start_file(name.as_str(), options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }
}

/// The platform tag of the onnxruntime wheels (pip here must accept it) and of the NVIDIA ones.
fn linux() -> String {
    format!("manylinux_2_17_{}", std::env::consts::ARCH)
}

/// The content of a library file: distinct bytes and size per name.
fn library_bytes(name: &str) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    generated(1000 + (seed % 5000) as usize, seed)
}

/// An NVIDIA wheel for Linux holding `libraries` (paths inside it), plus a header, a static
/// library and a Python file that must stay in the wheel.
fn nvidia(
    project: &'static str,
    version: &'static str,
    requires: Vec<&'static str>,
    libraries: &[&str],
) -> Wheel {
    let root = libraries[0]
        .rsplit_once('/')
        .unwrap()
        .0
        .rsplit_once('/')
        .unwrap()
        .0;
    let mut files: Vec<(String, Vec<u8>)> = libraries
        .iter()
        .map(|path| {
            (
                path.to_string(),
                library_bytes(path.rsplit('/').next().unwrap()),
            )
        })
        .collect();
    files.push((
        format!("{root}/include/{project}.h"),
        b"/* header */".to_vec(),
    ));
    files.push((
        format!("{root}/lib/lib{project}_static.a"),
        b"!<arch>".to_vec(),
    ));
    files.push(("nvidia/__init__.py".into(), Vec::new()));
    Wheel {
        project,
        version,
        platform: linux(),
        requires,
        files,
    }
}

/// The same wheel for Windows (DLLs in `bin/`): never to be chosen on this platform.
fn for_windows(wheel: &Wheel) -> Wheel {
    Wheel {
        project: wheel.project,
        version: wheel.version,
        platform: "win_amd64".into(),
        requires: wheel.requires.clone(),
        files: vec![(
            format!("nvidia/{}/bin/{}64.dll", wheel.project, wheel.project),
            b"dll".to_vec(),
        )],
    }
}

fn onnxruntime_gpu(version: &'static str, requires: Vec<&'static str>) -> Wheel {
    let capi = "onnxruntime/capi";
    Wheel {
        project: "onnxruntime-gpu",
        version,
        platform: linux(),
        requires,
        files: vec![
            (
                format!("{capi}/libonnxruntime.so.{version}"),
                format!("onnxruntime {version}").into_bytes(),
            ),
            (
                format!("{capi}/libonnxruntime_providers_cuda.so"),
                b"cuda provider".to_vec(),
            ),
            (
                format!("{capi}/libonnxruntime_providers_shared.so"),
                b"shared".to_vec(),
            ),
            ("onnxruntime/__init__.py".into(), Vec::new()),
        ],
    }
}

/// Every wheel of the index.
fn wheels() -> Vec<Wheel> {
    let cu13 = "nvidia/cu13/lib";
    let mut linux_wheels = vec![
        onnxruntime_gpu(
            "9.9.9",
            vec![
                "flatbuffers",
                "numpy>=1.21.6",
                "sympy; extra == \"symbolic\"",
                "nvidia-cuda-nvrtc~=13.0; extra == \"cuda\"",
                "nvidia-cuda-runtime~=13.0; extra == \"cuda\"",
                "nvidia-cufft~=12.0; extra == \"cuda\"",
                "nvidia-curand~=10.0; extra == \"cuda\"",
                "nvidia-cudnn-cu13~=9.0; extra == \"cudnn\"",
            ],
        ),
        onnxruntime_gpu(
            "9.9.8",
            vec![
                "coloredlogs",
                "nvidia-cuda-nvrtc-cu12~=12.0; extra == \"cuda\"",
                "nvidia-cuda-runtime-cu12~=12.0; extra == \"cuda\"",
                "nvidia-cufft-cu12~=11.0; extra == \"cuda\"",
                "nvidia-curand-cu12~=10.0; extra == \"cuda\"",
                "nvidia-cudnn-cu12~=9.0; extra == \"cudnn\"",
                "nvidia-tensorrt~=10.0; extra == \"tensorrt\"",
            ],
        ),
        // CUDA 13: one `nvidia/cu13/` folder, no -cu13 suffix but on cuDNN.
        nvidia(
            "nvidia-cuda-nvrtc",
            "13.0.88",
            vec![],
            &[
                &format!("{cu13}/libnvrtc.so.13"),
                &format!("{cu13}/libnvrtc-builtins.so.13.0"),
            ],
        ),
        nvidia(
            "nvidia-cuda-runtime",
            "13.0.96",
            vec![],
            &[&format!("{cu13}/libcudart.so.13")],
        ),
        nvidia(
            "nvidia-cufft",
            "12.0.0.61",
            vec!["nvidia-nvjitlink"],
            &[&format!("{cu13}/libcufft.so.12")],
        ),
        nvidia(
            "nvidia-nvjitlink",
            "13.0.88",
            vec![],
            &[&format!("{cu13}/libnvJitLink.so.13")],
        ),
        nvidia(
            "nvidia-curand",
            "10.4.0.35",
            vec![],
            &[&format!("{cu13}/libcurand.so.10")],
        ),
        nvidia(
            "nvidia-cublas",
            "13.1.0.3",
            vec!["nvidia-cuda-nvrtc"],
            &[
                &format!("{cu13}/libcublas.so.13"),
                &format!("{cu13}/libcublasLt.so.13"),
            ],
        ),
        nvidia(
            "nvidia-cudnn-cu13",
            "9.13.0.50",
            vec!["nvidia-cublas"],
            &[
                "nvidia/cudnn/lib/libcudnn.so.9",
                "nvidia/cudnn/lib/libcudnn_graph.so.9",
            ],
        ),
        // CUDA 12: a folder per component, -cu12 names.
        nvidia(
            "nvidia-cuda-nvrtc-cu12",
            "12.9.86",
            vec![],
            &["nvidia/cuda_nvrtc/lib/libnvrtc.so.12"],
        ),
        nvidia(
            "nvidia-cuda-runtime-cu12",
            "12.9.79",
            vec![],
            &["nvidia/cuda_runtime/lib/libcudart.so.12"],
        ),
        nvidia(
            "nvidia-cufft-cu12",
            "11.4.1.4",
            vec!["nvidia-nvjitlink-cu12"],
            &["nvidia/cufft/lib/libcufft.so.11"],
        ),
        nvidia(
            "nvidia-nvjitlink-cu12",
            "12.9.86",
            vec![],
            &["nvidia/nvjitlink/lib/libnvJitLink.so.12"],
        ),
        nvidia(
            "nvidia-curand-cu12",
            "10.3.10.19",
            vec![],
            &["nvidia/curand/lib/libcurand.so.10"],
        ),
        nvidia(
            "nvidia-cublas-cu12",
            "12.9.1.4",
            vec!["nvidia-cuda-nvrtc-cu12"],
            &[
                "nvidia/cublas/lib/libcublas.so.12",
                "nvidia/cublas/lib/libcublasLt.so.12",
            ],
        ),
        nvidia(
            "nvidia-cudnn-cu12",
            "9.10.2.21",
            vec!["nvidia-cublas-cu12"],
            &["nvidia/cudnn/lib/libcudnn.so.9"],
        ),
    ];
    // A newer cuBLAS for a newer glibc than the onnxruntime wheel's platform: not for it.
    let mut newer = nvidia(
        "nvidia-cublas",
        "13.2.0.9",
        vec!["nvidia-cuda-nvrtc"],
        &[&format!("{cu13}/libcublas.so.13")],
    );
    newer.platform = format!("manylinux_2_28_{}", std::env::consts::ARCH);
    let windows: Vec<Wheel> = linux_wheels
        .iter()
        .filter(|w| w.project.starts_with("nvidia"))
        .map(for_windows)
        .collect();
    linux_wheels.push(newer);
    linux_wheels.extend(windows);
    linux_wheels
}

/// A PEP 503 index of `wheels`: `/simple/NAME/` pages linking to `/files/FILE`.
fn index(wheels: &[Wheel]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pages: BTreeMap<&str, String> = BTreeMap::new();
    for wheel in wheels {
        let name = wheel.file_name();
        pages
            .entry(wheel.project)
            .or_default()
            .push_str(&format!("<a href=\"/files/{name}\">{name}</a><br>\n"));
        files.insert(format!("/files/{name}"), wheel.bytes());
    }
    let mut root = String::from("<!DOCTYPE html><html><body>\n");
    for (project, links) in &pages {
        root.push_str(&format!("<a href=\"/simple/{project}/\">{project}</a>\n"));
        files.insert(
            format!("/simple/{project}/"),
            format!("<!DOCTYPE html><html><body>\n{links}</body></html>\n").into_bytes(),
        );
    }
    root.push_str("</body></html>\n");
    files.insert("/simple/".into(), root.into_bytes());
    files
}

fn install(home: &Home, server: &Server, version: &str) -> Output {
    let mut command = home.installer("");
    isolated_pip(&mut command)
        .args(["--no-service", "--no-plugins", "--no-models"])
        .args(["--ort-package", "onnxruntime-gpu", "--ort-version", version])
        .arg("--pip-index-url")
        .arg(server.url("/simple/"));
    run(&mut command)
}

/// The `tessera` program with this HOME's data directory.
fn tessera(home: &Home, args: &[&str]) -> Output {
    let mut command = Command::new(tessera_e2e::tessera_bin());
    isolated_pip(&mut command)
        .args(args)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH");
    run(&mut command)
}

fn listing(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn packages(home: &Home) -> Vec<String> {
    let record = tessera_store::runtime::read_record(&home.data().join("runtime")).unwrap();
    let mut packages: Vec<String> = record
        .cuda
        .unwrap()
        .packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    packages.sort();
    packages
}

/// Wheels fetched from the index since `from` requests.
fn fetched(server: &Server, from: usize) -> Vec<String> {
    server.paths()[from..]
        .iter()
        .filter_map(|p| p.strip_prefix("/files/"))
        .map(str::to_owned)
        .collect()
}

const CUDA_13_LIBRARIES: [&str; 10] = [
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcudart.so.13",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcufft.so.12",
    "libcurand.so.10",
    "libnvJitLink.so.13",
    "libnvrtc-builtins.so.13.0",
    "libnvrtc.so.13",
];

#[test]
fn the_cuda_libraries_a_gpu_wheel_names_are_installed_checked_replaced_and_removed() {
    let home = Home::new();
    let before = snapshot(home.path());
    let server = Server::start(index(&wheels()), Behaviour::Good);
    let runtime = home.data().join("runtime");
    let cuda = runtime.join("cuda");

    // The CUDA 13 wheel: its cuda and cudnn extras, and what they need, for its platform.
    let output = install(&home, &server, "9.9.9");
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("CUDA 13 libraries: 10 files"), "{out}");
    assert!(out.contains("execution providers: cuda, cpu"), "{out}");
    assert_eq!(
        listing(&cuda),
        CUDA_13_LIBRARIES,
        "the libraries alone, flat"
    );
    for file in CUDA_13_LIBRARIES {
        assert_eq!(std::fs::read(cuda.join(file)).unwrap(), library_bytes(file));
    }
    assert_eq!(
        packages(&home),
        [
            "nvidia-cublas 13.1.0.3",
            "nvidia-cuda-nvrtc 13.0.88",
            "nvidia-cuda-runtime 13.0.96",
            "nvidia-cudnn-cu13 9.13.0.50",
            "nvidia-cufft 12.0.0.61",
            "nvidia-curand 10.4.0.35",
            "nvidia-nvjitlink 13.0.88",
        ],
        "cuBLAS for the wheel's platform, not the newer one for a newer glibc"
    );
    let record = tessera_store::runtime::read_record(&runtime).unwrap();
    let libraries = record.cuda.as_ref().unwrap();
    assert_eq!(libraries.cuda_major, Some(13));
    assert_eq!(libraries.requirements.len(), 5);
    assert!(
        listing(&runtime).contains(&"libonnxruntime_providers_cuda.so".to_owned()),
        "the CUDA provider is kept beside the library"
    );
    let wheels = fetched(&server, 0);
    for unwanted in [
        "cu12",
        "win_amd64",
        "tensorrt",
        "numpy",
        "sympy",
        "13.2.0.9",
    ] {
        assert!(
            wheels.iter().all(|w| !w.contains(unwanted)),
            "{unwanted}: {wheels:?}"
        );
    }
    assert_eq!(wheels.len(), 1 + 7, "{wheels:?}");
    assert!(
        !home.data().join("cache/wheels/cuda").exists(),
        "the NVIDIA wheels are deleted once unpacked"
    );

    // Again: nothing fetched, nothing changed.
    let requests = server.paths().len();
    let unpacked = snapshot(&runtime);
    let output = install(&home, &server, "9.9.9");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(fetched(&server, requests), Vec::<String>::new());
    assert_eq!(snapshot(&runtime), unpacked);

    // doctor: every library with its size; a missing one named with the size it should have.
    let doctor = stdout(&tessera(&home, &["doctor"]));
    assert!(
        doctor.contains(&format!(
            "ok       CUDA 13 libraries for onnxruntime-gpu 9.9.9 in {}: 10 of 10 present",
            cuda.display()
        )),
        "{doctor}"
    );
    let lt = library_bytes("libcublasLt.so.13").len();
    let lt_size = tessera_store::space::size_text(lt as u64);
    assert!(
        doctor.contains(&format!(
            "ok       libcublasLt.so.13 {lt_size} (nvidia-cublas 13.1.0.3)"
        )),
        "{doctor}"
    );
    std::fs::remove_file(cuda.join("libcublasLt.so.13")).unwrap();
    let sick = tessera(&home, &["doctor"]);
    assert!(!sick.status.success());
    let doctor = stdout(&sick);
    assert!(
        doctor.contains(&format!(
            "PROBLEM  libcublasLt.so.13 is missing: {lt_size} expected from nvidia-cublas 13.1.0.3, looked in {}",
            cuda.display()
        )),
        "{doctor}"
    );
    assert!(doctor.contains("9 of 10 present"), "{doctor}");
    assert!(
        doctor.contains("tessera runtime install --package onnxruntime-gpu --version 9.9.9"),
        "{doctor}"
    );

    // `tessera runtime install` fetches what is missing.
    let requests = server.paths().len();
    let repair = tessera(
        &home,
        &[
            "runtime",
            "install",
            "--package",
            "onnxruntime-gpu",
            "--version",
            "9.9.9",
            "--pip-index-url",
            &server.url("/simple/"),
        ],
    );
    assert!(repair.status.success(), "{}", stderr(&repair));
    assert!(stderr(&repair).contains("CUDA 13 libraries: 10 files"));
    assert_eq!(
        std::fs::read(cuda.join("libcublasLt.so.13")).unwrap(),
        library_bytes("libcublasLt.so.13")
    );
    assert_eq!(fetched(&server, requests).len(), 7, "the CUDA wheels only");

    // The CUDA 12 wheel replaces them with the CUDA 12 set.
    let output = install(&home, &server, "9.9.8");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("CUDA 12 libraries: 8 files"));
    assert_eq!(
        listing(&cuda),
        [
            "libcublas.so.12",
            "libcublasLt.so.12",
            "libcudart.so.12",
            "libcudnn.so.9",
            "libcufft.so.11",
            "libcurand.so.10",
            "libnvJitLink.so.12",
            "libnvrtc.so.12",
        ]
    );
    assert_eq!(
        std::fs::read(cuda.join("libcudnn.so.9")).unwrap(),
        library_bytes("libcudnn.so.9")
    );
    assert!(
        packages(&home).contains(&"nvidia-cudnn-cu12 9.10.2.21".to_owned()),
        "{:?}",
        packages(&home)
    );
    assert!(
        server
            .paths()
            .iter()
            .all(|p| !p.contains("tensorrt") && !p.contains("coloredlogs")),
        "another extra's requirements and non-NVIDIA ones are not fetched"
    );

    // Uninstall: everything goes, the libraries included.
    let output = run(home.installer("").arg("--uninstall"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!cuda.exists());
    let after = snapshot(home.path());
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.is_empty(),
        "left by install + uninstall: {changed:?}"
    );
}

#[test]
fn a_failing_index_is_one_line_naming_the_cuda_libraries() {
    let home = Home::new();
    // An index with the onnxruntime wheel but none of the NVIDIA ones.
    let all = wheels();
    let only_onnxruntime: Vec<Wheel> = all
        .into_iter()
        .filter(|w| w.project == "onnxruntime-gpu")
        .collect();
    let server = Server::start(index(&only_onnxruntime), Behaviour::Good);
    let output = install(&home, &server, "9.9.9");
    assert!(!output.status.success());
    let err = stderr(&output);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("tessera-install: pip could not download the CUDA 13 libraries (nvidia-cuda-nvrtc~=13.0, "),
        "{err}"
    );
    assert!(last.contains("the CPU still works"), "{last}");
    // The library itself is in place, recorded as not yet checked for CUDA: a re-run tries again.
    let record = tessera_store::runtime::read_record(&home.data().join("runtime")).unwrap();
    assert!(!record.dependencies_read && record.cuda.is_none());
    assert!(!home.data().join("cache/wheels/cuda").exists());
    // And --uninstall still removes what the failed run added.
    assert!(run(home.installer("").arg("--uninstall")).status.success());
    assert!(!home.data().join("runtime").exists());
}
