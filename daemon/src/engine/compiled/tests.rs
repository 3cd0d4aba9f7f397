use super::*;
use crate::engine::CpuMemory;

fn model(dir: &Path, name: &str, weights: &str) -> CompiledModel {
    let file = dir.join(weights);
    if !file.exists() {
        std::fs::write(&file, b"weights").unwrap();
    }
    CompiledModel {
        name: name.into(),
        onnx: name.as_bytes().to_vec(),
        weights_folder: dir.to_path_buf(),
        weight_files: vec![file],
        cpu_memory: CpuMemory::Heap,
    }
}

#[test]
fn a_folder_per_graph_device_and_provider_version_tells_a_hit_from_a_write() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("cache/compiled");
    let unet = model(temp.path(), "UNet", "unet.safetensors");
    let first = entry(&root, &unet, "1.32.0", "openvino", "1.8.1", "cpu").unwrap();
    assert!(first.dir.starts_with(root.join("openvino-1.8.1/cpu")));
    assert_eq!(first.outcome(), CacheUse::Unused);
    std::fs::write(first.dir.join("123.blob"), b"compiled").unwrap();
    assert_eq!(first.outcome(), CacheUse::Written);
    let again = entry(&root, &unet, "1.32.0", "openvino", "1.8.1", "cpu").unwrap();
    assert_eq!(again.dir, first.dir, "the same graph finds its folder");
    assert_eq!(again.outcome(), CacheUse::Hit);
    std::fs::write(again.dir.join("456.blob"), b"other").unwrap();
    assert_eq!(again.outcome(), CacheUse::Rewritten);
    // Another device, provider version, runtime or graph: another folder.
    for other in [
        entry(&root, &unet, "1.32.0", "openvino", "1.8.1", "gpu").unwrap(),
        entry(&root, &unet, "1.32.0", "openvino", "1.9.0", "cpu").unwrap(),
        entry(&root, &unet, "1.33.0", "openvino", "1.8.1", "cpu").unwrap(),
        entry(
            &root,
            &model(temp.path(), "VAE", "unet.safetensors"),
            "1.32.0",
            "openvino",
            "1.8.1",
            "cpu",
        )
        .unwrap(),
    ] {
        assert_ne!(other.dir, first.dir);
    }
}

#[test]
fn stale_entries_go_with_their_weights_their_provider_version_or_over_the_limit() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("cache/compiled");
    let blob = |e: &CacheEntry, bytes: usize| {
        std::fs::write(e.dir.join("model.blob"), vec![0u8; bytes]).unwrap()
    };
    let kept = entry(
        &root,
        &model(temp.path(), "UNet", "unet.safetensors"),
        "1.32.0",
        "openvino",
        "1.8.1",
        "cpu",
    )
    .unwrap();
    blob(&kept, 100);
    let vae = model(temp.path(), "VAE", "vae.safetensors");
    let gone = entry(&root, &vae, "1.32.0", "openvino", "1.8.1", "cpu").unwrap();
    blob(&gone, 100);
    let old = entry(
        &root,
        &model(temp.path(), "Text", "text.safetensors"),
        "1.32.0",
        "openvino",
        "1.7.0",
        "cpu",
    )
    .unwrap();
    blob(&old, 100);
    let coreml = entry(
        &root,
        &model(temp.path(), "ESRGAN", "esrgan.safetensors"),
        "1.32.0",
        "coreml",
        "1.32.0",
        "all",
    )
    .unwrap();
    blob(&coreml, 100);
    // The VAE's weight file is removed (a converted file the user deleted).
    std::fs::remove_file(temp.path().join("vae.safetensors")).unwrap();
    let current = BTreeMap::from([("openvino".to_owned(), "1.8.1".to_owned())]);
    let removed = remove_stale(&root, &current, LIMIT);
    let reasons: BTreeMap<PathBuf, String> = removed.into_iter().collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[&gone.dir].contains("are gone"), "{reasons:?}");
    assert!(
        reasons[&old.dir].contains("1.8.1 is installed"),
        "{reasons:?}"
    );
    assert!(kept.dir.is_dir());
    assert!(
        coreml.dir.is_dir(),
        "a provider not installed now keeps its entries"
    );
    assert!(
        !root.join("openvino-1.7.0").exists(),
        "empty folders go too"
    );
    // Over the limit, the least recently used goes first.
    let record = kept.dir.join(ENTRY);
    let mut text: EntryRecord = toml::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    text.used = 1;
    std::fs::write(&record, toml::to_string(&text).unwrap()).unwrap();
    let removed = remove_stale(&root, &current, 150);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].0, kept.dir);
    assert!(coreml.dir.is_dir());
}

#[test]
fn a_changed_weight_file_makes_its_entry_stale() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("cache/compiled");
    let unet = model(temp.path(), "UNet", "unet.safetensors");
    let e = entry(&root, &unet, "1.32.0", "openvino", "1.8.1", "cpu").unwrap();
    std::fs::write(
        temp.path().join("unet.safetensors"),
        b"other weights, longer",
    )
    .unwrap();
    let removed = remove_stale(&root, &BTreeMap::new(), LIMIT);
    assert_eq!(removed.len(), 1);
    assert!(removed[0].1.contains("changed"), "{removed:?}");
    assert!(!e.dir.exists());
}
