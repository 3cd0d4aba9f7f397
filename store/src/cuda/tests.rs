//! The CUDA libraries' record and unpacking, on small wheels built here with the layout of
//! NVIDIA's (pip itself is exercised by the installer's tests, against a local index).

use super::*;
use std::io::Write;

/// A wheel holding `files` (path inside the wheel, bytes), stored uncompressed.
fn wheel(folder: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = folder.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (inner, bytes) in files {
        zip.start_file(*inner, stored).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

fn cublas(folder: &Path) -> PathBuf {
    wheel(
        folder,
        "nvidia_cublas-13.1.0.3-py3-none-manylinux_2_27_x86_64.whl",
        &[
            ("nvidia/__init__.py", b""),
            ("nvidia/cu13/include/cublas_v2.h", b"header"),
            ("nvidia/cu13/lib/libcublas.so.13", b"cublas"),
            ("nvidia/cu13/lib/libcublasLt.so.13", b"cublasLt, larger"),
            ("nvidia/cu13/lib/libcudart_static.a", b"static"),
            (
                "nvidia_cublas-13.1.0.3.dist-info/METADATA",
                b"Name: nvidia-cublas\n",
            ),
        ],
    )
}

fn cudnn(folder: &Path) -> PathBuf {
    wheel(
        folder,
        "nvidia_cudnn_cu13-9.13.0.50-py3-none-manylinux_2_27_x86_64.whl",
        &[
            ("nvidia/cudnn/lib/libcudnn.so.9", b"cudnn"),
            ("nvidia/cudnn/lib/libcudnn_graph.so.9", b"graph"),
            ("nvidia/cudnn/include/cudnn.h", b"header"),
        ],
    )
}

fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_gpu_wheel_says_which_nvidia_wheels_it_needs_and_for_which_platform() {
    let temp = tempfile::tempdir().unwrap();
    let metadata = "Metadata-Version: 2.4\nName: onnxruntime-gpu\nVersion: 9.9.9\n\
        Requires-Dist: numpy>=1.21.6\nProvides-Extra: cuda\n\
        Requires-Dist: nvidia-cuda-runtime~=13.0; extra == \"cuda\"\nProvides-Extra: cudnn\n\
        Requires-Dist: nvidia-cudnn-cu13~=9.0; extra == \"cudnn\"\n\nDescription\n";
    let gpu = wheel(
        temp.path(),
        "onnxruntime_gpu-9.9.9-cp311-cp311-manylinux_2_28_x86_64.whl",
        &[
            ("onnxruntime/capi/libonnxruntime.so.9.9.9", b"main"),
            (
                "onnxruntime_gpu-9.9.9.dist-info/METADATA",
                metadata.as_bytes(),
            ),
        ],
    );
    let needed = CudaLibraries::needed_by(&gpu).unwrap().unwrap();
    assert_eq!(
        needed.requirements,
        ["nvidia-cuda-runtime~=13.0", "nvidia-cudnn-cu13~=9.0"]
    );
    assert_eq!(needed.cuda_major, Some(13));
    assert_eq!(needed.label(), "CUDA 13");
    assert_eq!(needed.platforms[0], "manylinux_2_28_x86_64");
    assert!(
        needed
            .platforms
            .contains(&"manylinux2014_x86_64".to_owned())
    );

    let cpu = wheel(
        temp.path(),
        "onnxruntime-9.9.9-cp311-cp311-manylinux_2_28_x86_64.whl",
        &[(
            "onnxruntime-9.9.9.dist-info/METADATA",
            b"Name: onnxruntime\nRequires-Dist: numpy\n",
        )],
    );
    assert_eq!(CudaLibraries::needed_by(&cpu).unwrap(), None);

    let bare = wheel(temp.path(), "x-1-py3-none-any.whl", &[("x/y.py", b"")]);
    let err = CudaLibraries::needed_by(&bare).unwrap_err().to_string();
    assert!(err.contains("no *.dist-info/METADATA"), "{err}");
}

#[test]
fn only_the_shared_libraries_are_unpacked_flat_and_recorded() {
    let temp = tempfile::tempdir().unwrap();
    let wheels = [cublas(temp.path()), cudnn(temp.path())];
    let folder = temp.path().join("runtime/cuda");
    let (packages, libraries) = unpack::unpack(&wheels, &folder).unwrap();
    assert_eq!(
        names(&folder),
        [
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libcudnn.so.9",
            "libcudnn_graph.so.9"
        ]
    );
    assert_eq!(
        std::fs::read(folder.join("libcublasLt.so.13")).unwrap(),
        b"cublasLt, larger"
    );
    let named: Vec<_> = packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("nvidia-cublas", "13.1.0.3"),
            ("nvidia-cudnn-cu13", "9.13.0.50")
        ]
    );
    let lt = libraries
        .iter()
        .find(|l| l.file == "libcublasLt.so.13")
        .unwrap();
    assert_eq!((lt.package.as_str(), lt.size), ("nvidia-cublas", 16));
    assert_eq!(
        lt.sha256,
        crate::hashes::sha256_file(&folder.join("libcublasLt.so.13")).unwrap()
    );
}

#[test]
fn the_record_tells_present_missing_and_damaged_libraries_apart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open(temp.path().join("data")).unwrap();
    let (packages, libraries) =
        unpack::unpack(&[cublas(temp.path())], &folder(&dir.runtime())).unwrap();
    let record = CudaLibraries {
        requirements: vec!["nvidia-cublas~=13.0".into()],
        cuda_major: Some(13),
        packages,
        libraries,
        ..CudaLibraries::default()
    };
    assert!(record.intact(&dir.runtime()));
    assert_eq!(record.size(), 6 + 16);
    let cuda = folder(&dir.runtime());
    assert_eq!(
        record.paths(&dir.runtime()),
        [cuda.join("libcublas.so.13"), cuda.join("libcublasLt.so.13")]
    );

    std::fs::remove_file(cuda.join("libcublasLt.so.13")).unwrap();
    std::fs::write(cuda.join("libcublas.so.13"), b"short").unwrap();
    let states: Vec<_> = record
        .states(&dir.runtime())
        .into_iter()
        .map(|(l, s)| (l.file.as_str(), s))
        .collect();
    assert_eq!(
        states,
        [
            ("libcublas.so.13", LibraryState::WrongSize(5)),
            ("libcublasLt.so.13", LibraryState::Missing)
        ]
    );
    assert!(!record.intact(&dir.runtime()));
    // Same size, other bytes, another time (set: a rewrite may land in the same clock tick):
    // only the hash tells.
    std::fs::write(cuda.join("libcublas.so.13"), b"CUBLAS").unwrap();
    std::fs::write(cuda.join("libcublasLt.so.13"), b"cublasLt, larger").unwrap();
    for file in ["libcublas.so.13", "libcublasLt.so.13"] {
        let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(cuda.join(file))
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    assert!(
        record
            .states(&dir.runtime())
            .iter()
            .all(|(_, s)| *s == LibraryState::Present)
    );
    assert!(!record.intact(&dir.runtime()));

    // Toml round trip, as in runtime.toml.
    let text = toml::to_string(&record).unwrap();
    assert_eq!(toml::from_str::<CudaLibraries>(&text).unwrap(), record);
}

#[test]
fn libraries_the_new_set_lacks_are_removed_and_then_the_folder() {
    let temp = tempfile::tempdir().unwrap();
    let runtime = temp.path().join("runtime");
    let (_, old_libraries) = unpack::unpack(
        &[cublas(temp.path()), cudnn(temp.path())],
        &folder(&runtime),
    )
    .unwrap();
    let old = CudaLibraries {
        libraries: old_libraries,
        ..CudaLibraries::default()
    };
    let (_, new_libraries) = unpack::unpack(&[cudnn(temp.path())], &folder(&runtime)).unwrap();
    let new = CudaLibraries {
        libraries: new_libraries,
        ..CudaLibraries::default()
    };
    remove_stale(&runtime, Some(&old), Some(&new));
    assert_eq!(
        names(&folder(&runtime)),
        ["libcudnn.so.9", "libcudnn_graph.so.9"]
    );
    remove_stale(&runtime, Some(&new), None);
    assert!(!folder(&runtime).exists());
}

/// Sets the uncompressed size every central-directory record of a zip claims (the field at
/// offset 24 of each `PK\x01\x02` record), leaving the data as it is.
fn claim_size(wheel: &Path, size: u32) {
    let mut bytes = std::fs::read(wheel).unwrap();
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let record = at + found;
        bytes[record + 24..record + 28].copy_from_slice(&size.to_le_bytes());
        at = record + 4;
    }
    std::fs::write(wheel, bytes).unwrap();
}

#[test]
fn libraries_that_cannot_fit_on_the_disk_are_refused_before_a_byte_is_written() {
    let temp = tempfile::tempdir().unwrap();
    // 1024 libraries that claim 4 GB each: 4.4 TB, more than the disk of any test machine.
    let files: Vec<(String, Vec<u8>)> = (0..1024)
        .map(|i| (format!("nvidia/cu13/lib/libhuge{i}.so.1"), vec![0u8; 4]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let huge = wheel(
        temp.path(),
        "nvidia_huge-1.0-py3-none-manylinux_2_17_x86_64.whl",
        &refs,
    );
    claim_size(&huge, 0xFFFF_0000);
    let folder = temp.path().join("runtime/cuda");
    match unpack::unpack(&[huge], &folder) {
        Err(unpack::UnpackError::NoRoom(short)) => {
            assert_eq!(short.needed, 1025 * 0xFFFF_0000);
            let error = RuntimeInstallError::NoSpace {
                what: "the CUDA 13 libraries".into(),
                shortfall: short,
            }
            .to_string();
            assert!(
                error.starts_with(
                    "not enough free space for the CUDA 13 libraries: 4402 GB needed and "
                ),
                "{error}"
            );
            assert!(!error.contains('\n'));
        }
        other => panic!("expected a refusal for lack of space, got {other:?}"),
    }
    assert!(names(&folder).is_empty(), "nothing was written");
}

#[test]
fn an_old_driver_is_named_with_the_version_the_cuda_major_needs() {
    assert_eq!(
        driver_supports("NVIDIA driver 580.65.06 (/proc/driver/nvidia/version)", 13),
        Ok(Some(580))
    );
    assert_eq!(
        driver_supports("NVIDIA GeForce RTX 3080, 550.54.14 (nvidia-smi)", 12),
        Ok(Some(525))
    );
    assert_eq!(
        driver_supports("NVIDIA driver 550.54.14 (/proc/driver/nvidia/version)", 13),
        Err("the NVIDIA driver 550.54.14 is older than CUDA 13 needs (580 or newer)".into())
    );
    assert_eq!(
        driver_supports("NVIDIA driver (version unknown) (x)", 13),
        Ok(None)
    );
    assert_eq!(driver_supports("NVIDIA driver 550.54.14", 14), Ok(None));
}

#[test]
fn windows_wheels_give_their_dlls_the_same_way() {
    let temp = tempfile::tempdir().unwrap();
    let cublas = wheel(
        temp.path(),
        "nvidia_cublas-13.1.0.3-py3-none-win_amd64.whl",
        &[
            ("nvidia/cu13/bin/x86_64/cublas64_13.dll", b"cublas"),
            ("nvidia/cu13/bin/x86_64/cublasLt64_13.dll", b"cublasLt"),
            ("nvidia/cu13/lib/x64/cublas.lib", b"import library"),
        ],
    );
    let cudnn = wheel(
        temp.path(),
        "nvidia_cudnn_cu13-9.13.0.50-py3-none-win_amd64.whl",
        &[
            ("nvidia/cudnn/bin/cudnn64_9.dll", b"cudnn"),
            ("nvidia/cudnn/bin/cudnn_graph64_9.dll", b"graph"),
        ],
    );
    let folder = temp.path().join("runtime/cuda");
    let (packages, _) = unpack::unpack(&[cublas, cudnn], &folder).unwrap();
    assert_eq!(
        names(&folder),
        [
            "cublas64_13.dll",
            "cublasLt64_13.dll",
            "cudnn64_9.dll",
            "cudnn_graph64_9.dll"
        ]
    );
    assert_eq!(packages[1].name, "nvidia-cudnn-cu13");
}
