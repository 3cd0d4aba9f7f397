use super::*;
use std::io::Write;

fn fake_wheel(path: &Path, files: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// The OpenVINO wheel's layout (1.8.1), small.
fn openvino_wheel(dir: &Path, version: &str, extra: &str) -> PathBuf {
    let wheel = dir.join(format!(
        "onnxruntime_ep_openvino-{version}-py3-none-manylinux_2_28_x86_64.whl"
    ));
    let library = format!(
        "onnxruntime_ep_openvino/{}",
        PluginProvider::OpenVino.library_name()
    );
    fake_wheel(
        &wheel,
        &[
            ("onnxruntime_ep_openvino/__init__.py", b"python"),
            (&library, b"plugin"),
            ("onnxruntime_ep_openvino/libopenvino.so.2641", b"openvino"),
            (extra, b"extra"),
            ("onnxruntime_ep_openvino/cache.json", b"{}"),
            (
                &format!("onnxruntime_ep_openvino-{version}.dist-info/METADATA"),
                b"Name: onnxruntime-ep-openvino\n",
            ),
        ],
    );
    wheel
}

/// A data directory with a (stand-in) CPU runtime recorded.
fn data_dir(temp: &Path) -> DataDir {
    let dir = DataDir::open(temp.join("data")).unwrap();
    std::fs::write(dir.runtime().join("libonnxruntime.so.1.32.0"), b"main").unwrap();
    std::fs::write(
        dir.runtime().join("runtime.toml"),
        "package = \"onnxruntime\"\nversion = \"1.32.0\"\nlibrary = \"libonnxruntime.so.1.32.0\"\nsha256 = \"x\"\nwheel = \"w\"\nproviders = [\"cpu\"]\ndependencies_read = true\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_plugin_wheel_is_unpacked_into_its_folder_and_recorded_with_the_runtime() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(temp.path());
    let wheels = dir.cache().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    openvino_wheel(&wheels, "1.8.1", "onnxruntime_ep_openvino/libtbb.so.12");
    let options = PluginInstallOptions {
        version: None,
        wheel: None,
        force: false,
        index_url: None,
    };
    let list = vec!["openvino:gpu".to_owned()];
    let record = install_for(&dir, &list, &options).unwrap();
    assert_eq!(record.providers, ["openvino:gpu", "cpu"]);
    let plugin = &record.plugins[0];
    assert_eq!(
        (plugin.provider.as_str(), plugin.version.as_str()),
        ("openvino", "1.8.1")
    );
    let folder = dir.runtime().join("plugins/openvino");
    let mut files: Vec<&str> = plugin.files.iter().map(|f| f.file.as_str()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "cache.json",
            PluginProvider::OpenVino.library_name(),
            "libopenvino.so.2641",
            "libtbb.so.12"
        ],
        "the Python code and the dist-info stay out"
    );
    assert!(folder.join("libtbb.so.12").is_file());
    assert_eq!(
        super::super::runtime::read_record(&dir.runtime()).unwrap(),
        record
    );
    assert!(plugin.damaged(&dir).is_empty());
    // A damaged file is seen, and the next run puts it back.
    std::fs::remove_file(folder.join("libtbb.so.12")).unwrap();
    assert_eq!(plugin.damaged(&dir).len(), 1);
    let again = install_for(&dir, &list, &options).unwrap();
    assert!(again.plugins[0].damaged(&dir).is_empty());
    // Another version replaces the files, removing what it lacks.
    openvino_wheel(&wheels, "1.9.0", "onnxruntime_ep_openvino/libtbb.so.13");
    let newer = install_for(
        &dir,
        &list,
        &PluginInstallOptions {
            version: Some("1.9.0".into()),
            ..options.clone()
        },
    )
    .unwrap();
    assert_eq!(newer.plugins[0].version, "1.9.0");
    assert!(!folder.join("libtbb.so.12").exists());
    assert!(folder.join("libtbb.so.13").is_file());
    // A list without the plugin takes it away.
    let cpu = install_for(&dir, &["cpu".to_owned()], &options).unwrap();
    assert!(cpu.plugins.is_empty());
    assert!(!folder.exists());
}

#[test]
fn a_wheel_without_the_plugin_library_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(temp.path());
    let wheel = temp
        .path()
        .join("onnxruntime_ep_openvino-1.8.1-py3-none-any.whl");
    fake_wheel(
        &wheel,
        &[("onnxruntime_ep_openvino/__init__.py", b"python")],
    );
    let err = install(
        &dir,
        PluginProvider::OpenVino,
        None,
        &PluginInstallOptions {
            version: None,
            wheel: Some(wheel),
            force: false,
            index_url: None,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("holds no"), "{err}");
}

#[test]
fn the_plugins_of_a_provider_list_are_found_once_each() {
    let list: Vec<String> = ["openvino:gpu", "openvino:cpu", "cuda", "webgpu", "cpu"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        plugin_providers(&list),
        [PluginProvider::OpenVino, PluginProvider::WebGpu]
    );
}
