use super::*;
use crate::engine::ExecutionProvider;

fn parse(text: &str) -> Result<ExecutionProvider, String> {
    text.parse()
}

fn ep(provider: PluginProvider, kind: DeviceKind, index: u8) -> ExecutionProvider {
    ExecutionProvider::Plugin(PluginEp {
        provider,
        kind,
        index,
    })
}

#[test]
fn plugin_devices_are_named_by_kind_and_order() {
    use DeviceKind::*;
    use PluginProvider::*;
    assert_eq!(parse("openvino:cpu"), Ok(ep(OpenVino, Cpu, 0)));
    assert_eq!(parse("OpenVINO:GPU"), Ok(ep(OpenVino, Gpu, 0)));
    assert_eq!(parse("openvino"), Ok(ep(OpenVino, Gpu, 0)));
    assert_eq!(parse("openvino:gpu.1"), Ok(ep(OpenVino, Gpu, 1)));
    assert_eq!(parse("openvino:npu"), Ok(ep(OpenVino, Npu, 0)));
    assert_eq!(parse("webgpu"), Ok(ep(WebGpu, Gpu, 0)));
    assert_eq!(parse("webgpu:1"), Ok(ep(WebGpu, Gpu, 1)));
    assert_eq!(parse("trt-rtx"), Ok(ep(TensorRtRtx, Gpu, 0)));
    assert!(parse("openvino:tpu").unwrap_err().contains("cpu, gpu"));
    assert!(
        parse("webgpu:x")
            .unwrap_err()
            .contains("not a device number")
    );
    for (name, shown) in [
        ("openvino:cpu", "OpenVINO CPU"),
        ("openvino:gpu.1", "OpenVINO GPU 1"),
        ("webgpu", "WebGPU"),
        ("webgpu:2", "WebGPU device 2"),
        ("tensorrt-rtx", "TensorRT-RTX"),
    ] {
        let provider = parse(name).unwrap();
        assert_eq!(provider.to_string(), shown);
        assert_eq!(provider.config_name(), name, "round trip");
    }
    assert_eq!(parse("openvino").unwrap().config_name(), "openvino:gpu");
}

#[test]
fn only_plugin_cpu_devices_follow_the_cpus_policies() {
    assert!(parse("openvino:cpu").unwrap().on_host_cpu());
    assert!(!parse("openvino:gpu").unwrap().on_host_cpu());
    assert!(!parse("webgpu").unwrap().on_host_cpu());
    assert!(parse("openvino:cpu").unwrap().is_accelerator());
}

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn devices_are_described_from_their_metadata() {
    let cpu = PluginEp {
        provider: PluginProvider::OpenVino,
        kind: DeviceKind::Cpu,
        index: 0,
    };
    // As OpenVINO 1.8.1 lists its CPU device.
    let described = describe(
        cpu,
        &metadata(&[
            ("FULL_DEVICE_NAME", "Intel(R) Xeon(R) Processor"),
            (
                "OPTIMIZATION_CAPABILITIES",
                "BF16 WINOGRAD FP32 FP16 INT8 BIN",
            ),
            ("ov_device", "CPU"),
            ("version", "1.8.1+95d534b.ci.79"),
        ]),
        &BTreeMap::new(),
        "Intel",
    );
    assert_eq!(described.name, "Intel(R) Xeon(R) Processor");
    assert_eq!(described.provider_version, "1.8.1+95d534b.ci.79");
    assert!(described.does_bf16() && described.does_fp16());
    assert_eq!(described.memory, None);
    // A GPU whose memory OpenVINO gives in bytes, or Windows in DXGI's words.
    let gpu = PluginEp {
        kind: DeviceKind::Gpu,
        ..cpu
    };
    let arc = describe(
        gpu,
        &metadata(&[("GPU_DEVICE_TOTAL_MEM_SIZE", "17079205888")]),
        &BTreeMap::new(),
        "Intel",
    );
    assert_eq!(arc.memory, Some(17_079_205_888));
    assert_eq!(arc.name, "Intel GPU");
    assert!(arc.does_fp16(), "GPUs do f16");
    let dxgi = describe(
        gpu,
        &BTreeMap::new(),
        &metadata(&[
            ("DxgiVideoMemory", "8176 MB"),
            ("Description", "AMD Radeon RX 7600"),
        ]),
        "AMD",
    );
    assert_eq!(dxgi.memory, Some(8176 << 20));
    assert_eq!(dxgi.name, "AMD Radeon RX 7600");
}

fn options_of(ep: &str, native: &str, settings: &PluginSettings) -> BTreeMap<String, String> {
    let ExecutionProvider::Plugin(ep) = parse(ep).unwrap() else {
        panic!("{ep} is no plugin");
    };
    options(ep, native, settings).into_iter().collect()
}

fn load_config(options: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::from_str(&options["load_config"]).unwrap()
}

#[test]
fn openvino_gets_its_precision_threads_and_cache_as_device_properties() {
    let settings = PluginSettings {
        graph_fp16: false,
        hint: PrecisionHint::Graph,
        cache_dir: Some(PathBuf::from(
            "/data/cache/compiled/openvino-1.8.1/cpu/ab\"c",
        )),
        threads: 2,
    };
    let cpu = options_of("openvino:cpu", "CPU", &settings);
    assert_eq!(
        cpu.len(),
        1,
        "with a load_config OpenVINO ignores the rest: {cpu:?}"
    );
    assert_eq!(
        load_config(&cpu),
        serde_json::json!({"CPU": {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": "2",
            "CACHE_DIR": "/data/cache/compiled/openvino-1.8.1/cpu/ab\"c",
        }})
    );
    let bf16 = options_of(
        "openvino:cpu",
        "CPU",
        &PluginSettings {
            hint: PrecisionHint::Bf16,
            cache_dir: None,
            ..settings.clone()
        },
    );
    assert_eq!(
        load_config(&bf16)["CPU"]["INFERENCE_PRECISION_HINT"],
        "bf16"
    );
    assert!(load_config(&bf16)["CPU"].get("CACHE_DIR").is_none());
    // A GPU takes f16 with an f16 graph, f32 with an f32 one, and no thread count; the
    // properties go to the device OpenVINO names.
    let gpu16 = options_of(
        "openvino:gpu.1",
        "GPU.1",
        &PluginSettings {
            graph_fp16: true,
            ..settings.clone()
        },
    );
    let config = load_config(&gpu16);
    assert_eq!(config["GPU.1"]["INFERENCE_PRECISION_HINT"], "f16");
    assert!(config["GPU.1"].get("INFERENCE_NUM_THREADS").is_none());
    let gpu32 = options_of("openvino:gpu", "", &settings);
    assert_eq!(
        load_config(&gpu32)["GPU"]["INFERENCE_PRECISION_HINT"],
        "f32"
    );
    let npu = options_of("openvino:npu", "NPU", &settings);
    assert_eq!(load_config(&npu)["NPU"]["INFERENCE_PRECISION_HINT"], "f16");
}

#[test]
fn webgpu_asks_for_the_high_performance_adapter_and_tensorrt_rtx_for_its_cache() {
    let settings = PluginSettings {
        cache_dir: Some(PathBuf::from("/c")),
        ..PluginSettings::default()
    };
    let webgpu = options_of("webgpu", "", &settings);
    assert_eq!(
        webgpu,
        BTreeMap::from([("powerPreference".to_owned(), "high-performance".to_owned())])
    );
    let second = options_of("webgpu:1", "", &settings);
    assert_eq!(second["adapterIndex"], "1");
    let rtx = options_of("tensorrt-rtx:1", "", &settings);
    assert_eq!(rtx["device_id"], "1");
    assert_eq!(rtx["nv_runtime_cache_path"], "/c");
}

#[test]
fn a_library_is_looked_for_in_the_data_directory_then_beside_the_runtime() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let runtime_dir = temp.path().join("elsewhere/runtime");
    let ort = runtime_dir.join("libonnxruntime.so.1.32.0");
    let provider = PluginProvider::OpenVino;
    let ours = folder(&data, provider);
    assert_eq!(locate(&ours, &ort, provider), None);
    let beside = runtime_dir.join("plugins/openvino");
    std::fs::create_dir_all(&beside).unwrap();
    std::fs::write(beside.join(provider.library_name()), b"x").unwrap();
    assert_eq!(
        locate(&ours, &ort, provider),
        Some(beside.join(provider.library_name()))
    );
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::write(ours.join(provider.library_name()), b"x").unwrap();
    assert_eq!(
        locate(&ours, &ort, provider),
        Some(ours.join(provider.library_name())),
        "the data directory's own comes first"
    );
}
