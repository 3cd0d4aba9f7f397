//! Plugin execution providers: accelerators that ship as their own library and load into the
//! ordinary ONNX Runtime (1.23 and later): OpenVINO (Intel CPUs, GPUs and NPUs), WebGPU (any GPU
//! through Vulkan, Direct3D 12 or Metal) and TensorRT-RTX (NVIDIA RTX cards).
//!
//! A plugin's library lives in the data directory's `runtime/plugins/<name>/` (what
//! `tessera runtime install --providers` unpacks, `store/plugins.rs`). It is registered with
//! the environment once per process ([`register_library`]), after which the environment lists
//! the devices it offers ([`devices`]). A configured name such as `openvino:gpu` picks one of
//! them by kind and order ([`PluginEp`]); a session gets that device with options of its own
//! ([`options`]: the precision hint, the folder for compiled blobs, threads).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::device::Device;
use ort::memory::DeviceType;

use super::ep_api;
use super::runtime::{Runtime, one_line};

pub use crate::store::plugin_providers::{DeviceKind, PluginEp, PluginProvider, folder};

/// The kind of hardware ONNX Runtime says a device is.
fn kind_of(ty: DeviceType) -> DeviceKind {
    match ty {
        DeviceType::CPU => DeviceKind::Cpu,
        DeviceType::GPU => DeviceKind::Gpu,
        _ => DeviceKind::Npu,
    }
}

/// One device a registered plugin offers, as `tessera doctor` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDevice {
    /// What names it in configuration.
    pub ep: PluginEp,
    /// e.g. `Intel(R) Arc(TM) A770 Graphics`.
    pub name: String,
    /// The hardware's maker, as ONNX Runtime says.
    pub vendor: String,
    /// Its PCI vendor id (0x8086 Intel, 0x1002 AMD, 0x10de NVIDIA), 0 when unknown.
    pub vendor_id: u32,
    /// Its memory in bytes, where the provider or the system says.
    pub memory: Option<u64>,
    /// The provider library's version, e.g. `1.8.1+95d534b`.
    pub provider_version: String,
    /// What the provider says the device computes fast in (OpenVINO: `FP32 FP16 BF16 …`).
    pub capabilities: Vec<String>,
}

impl PluginDevice {
    /// Whether the device computes in f16 natively (a GPU or NPU, or a CPU whose provider says).
    pub fn does_fp16(&self) -> bool {
        !self.ep.on_cpu() || self.capabilities.iter().any(|c| c == "FP16")
    }

    /// Whether the device computes in bf16 natively (OpenVINO's CPU on AVX-512 BF16 or AMX).
    pub fn does_bf16(&self) -> bool {
        self.capabilities.iter().any(|c| c == "BF16")
    }
}

/// What registering each provider's library in this process gave: the library, or why not.
static REGISTERED: Mutex<Option<HashMap<PluginProvider, Result<PathBuf, String>>>> =
    Mutex::new(None);

/// Registers `provider`'s library from `data_dir` with the environment, once per process; the
/// outcome is kept, so a broken library costs one try and gives the same one-line reason to
/// everyone who asks.
pub(crate) fn register_library(
    runtime: &Runtime,
    data_dir: &Path,
    provider: PluginProvider,
) -> Result<PathBuf, String> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    let registered = registered.get_or_insert_with(HashMap::new);
    if let Some(outcome) = registered.get(&provider) {
        return outcome.clone();
    }
    let outcome = load(runtime, data_dir, provider);
    match &outcome {
        Ok(path) => {
            tracing::info!(provider = provider.label(), library = %path.display(), "registered a plugin execution provider")
        }
        // Whoever asked says it where it matters (a configured provider dropped, doctor).
        Err(reason) => tracing::debug!(provider = provider.label(), "{reason}"),
    }
    registered.insert(provider, outcome.clone());
    outcome
}

fn load(runtime: &Runtime, data_dir: &Path, provider: PluginProvider) -> Result<PathBuf, String> {
    let folder = folder(data_dir, provider);
    let library = locate(&folder, &runtime.path, provider).ok_or_else(|| {
        format!(
            "its plugin library {} is not installed in {}; install it: `tessera runtime install --providers {}`",
            provider.library_name(),
            folder.display(),
            provider.config_name()
        )
    })?;
    let library = std::path::absolute(&library).unwrap_or(library);
    runtime
        .env
        .register_ep_library(provider.ep_name(), &library)
        .map_err(|e| {
            format!(
                "its plugin library {} does not load: {}",
                library.display(),
                one_line(&e.to_string())
            )
        })?;
    Ok(library)
}

/// `provider`'s library: in the data directory's `folder`, else in `plugins/<name>/` beside
/// the ONNX Runtime library in use (a runtime installed elsewhere, as the tests do).
pub fn locate(folder: &Path, ort_library: &Path, provider: PluginProvider) -> Option<PathBuf> {
    let beside = ort_library
        .parent()
        .map(|dir| dir.join("plugins").join(provider.config_name()));
    [Some(folder.to_path_buf()), beside]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(provider.library_name()))
        .find(|library| library.is_file())
}

/// The ONNX Runtime devices of `provider` (its registered library must be), in its order.
fn ort_devices(runtime: &Runtime, provider: PluginProvider) -> Vec<Device<'_>> {
    runtime
        .env
        .devices()
        .filter(|d| d.ep().is_ok_and(|name| name == provider.ep_name()))
        .collect()
}

/// The ONNX Runtime device `ep` names, or why there is none.
pub(crate) fn ort_device(runtime: &Runtime, ep: PluginEp) -> Result<Device<'_>, String> {
    let all = ort_devices(runtime, ep.provider);
    let count = all.len();
    all.into_iter()
        .filter(|d| kind_of(d.hardware_device().ty()) == ep.kind)
        .nth(ep.index as usize)
        .ok_or_else(|| match count {
            0 => format!(
                "{} lists no device here{}",
                ep.provider.label(),
                no_device_hint(ep.provider)
            ),
            n => format!(
                "{} lists no {} {} ({n} device{} of other kinds: see `tessera doctor`)",
                ep.provider.label(),
                ep.kind.name(),
                if ep.index == 0 {
                    String::new()
                } else {
                    format!("number {}", ep.index)
                },
                if n == 1 { "" } else { "s" }
            )
            .replace("  ", " "),
        })
}

fn no_device_hint(provider: PluginProvider) -> &'static str {
    match provider {
        PluginProvider::WebGpu if cfg!(target_os = "linux") => {
            " (WebGPU needs a Vulkan driver and libvulkan.so.1)"
        }
        PluginProvider::WebGpu => " (no GPU adapter; update the graphics driver)",
        PluginProvider::TensorRtRtx => " (it needs an NVIDIA RTX GPU and its driver)",
        PluginProvider::OpenVino => " (OpenVINO finds Intel CPUs, GPUs and NPUs)",
    }
}

/// Every device the registered `provider` offers, described.
pub(crate) fn devices(runtime: &Runtime, provider: PluginProvider) -> Vec<PluginDevice> {
    let mut seen: HashMap<DeviceKind, u8> = HashMap::new();
    ort_devices(runtime, provider)
        .iter()
        .map(|d| {
            let kind = kind_of(d.hardware_device().ty());
            let index = seen.entry(kind).or_default();
            let ep = PluginEp {
                provider,
                kind,
                index: *index,
            };
            *index += 1;
            let mut device = describe(
                ep,
                &ep_api::provider_metadata(d),
                &ep_api::hardware_metadata(d),
                d.hardware_device().vendor().unwrap_or(""),
            );
            device.vendor_id = ep_api::vendor_id(d);
            device
        })
        .collect()
}

/// A device from what its provider and ONNX Runtime say of it.
pub fn describe(
    ep: PluginEp,
    provider: &BTreeMap<String, String>,
    hardware: &BTreeMap<String, String>,
    vendor: &str,
) -> PluginDevice {
    let name = ["FULL_DEVICE_NAME", "Description", "DeviceName"]
        .iter()
        .find_map(|k| provider.get(*k).or_else(|| hardware.get(*k)))
        .cloned()
        .unwrap_or_else(|| format!("{vendor} {}", ep.kind.name()).trim().to_owned());
    PluginDevice {
        ep,
        name,
        vendor: vendor.to_owned(),
        vendor_id: 0,
        memory: memory_of(provider, hardware),
        provider_version: provider.get("version").cloned().unwrap_or_default(),
        capabilities: provider
            .get("OPTIMIZATION_CAPABILITIES")
            .map(|c| c.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// A device's memory from the keys providers and ONNX Runtime use for it: OpenVINO's
/// `GPU_DEVICE_TOTAL_MEM_SIZE` (bytes), ONNX Runtime's DXGI `DxgiVideoMemory` on Windows (e.g.
/// `8176 MB`).
fn memory_of(
    provider: &BTreeMap<String, String>,
    hardware: &BTreeMap<String, String>,
) -> Option<u64> {
    let bytes = |text: &str| -> Option<u64> {
        let text = text.trim();
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        let value: u64 = digits.parse().ok()?;
        let unit = text[digits.len()..].trim().to_ascii_lowercase();
        Some(match unit.as_str() {
            "" | "b" => value,
            "kb" => value << 10,
            "mb" => value << 20,
            "gb" => value << 30,
            _ => return None,
        })
    };
    [
        ("GPU_DEVICE_TOTAL_MEM_SIZE", provider),
        ("DxgiVideoMemory", hardware),
        ("VideoMemory", hardware),
    ]
    .iter()
    .find_map(|(key, map)| map.get(*key).and_then(|v| bytes(v)))
    .filter(|&b| b > 0)
}

/// The precision a compiling provider is asked to compute in, whatever the graph stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PrecisionHint {
    /// The graph's own precision (f32 graphs in f32, f16 graphs in f16).
    #[default]
    Graph,
    /// bf16 arithmetic (OpenVINO's CPU on hardware with BF16).
    Bf16,
    /// f16 arithmetic.
    Fp16,
}

impl std::str::FromStr for PrecisionHint {
    type Err = String;
    fn from_str(s: &str) -> Result<PrecisionHint, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "graph" | "fp32" | "f32" => Ok(PrecisionHint::Graph),
            "bf16" => Ok(PrecisionHint::Bf16),
            "fp16" | "f16" => Ok(PrecisionHint::Fp16),
            other => Err(format!(
                "`{other}` is no precision hint (auto, bf16 or fp16)"
            )),
        }
    }
}

/// What a session on a plugin device is built with, besides the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginSettings {
    /// The graph's precision is f16 (then the device is asked to compute in f16 too).
    pub graph_fp16: bool,
    /// What the device is asked to compute in (CPU devices; GPUs and NPUs follow the graph).
    pub hint: PrecisionHint,
    /// Where compiled blobs are kept (`cache/compiled/…`), for providers that compile.
    pub cache_dir: Option<PathBuf>,
    /// Threads for a CPU device (0: the provider's choice).
    pub threads: usize,
}

/// The provider options of a session on `ep` (the provider's own keys): OpenVINO's
/// `load_config` (its device's precision hint, threads and cache folder), WebGPU's adapter
/// preference, TensorRT-RTX's device and runtime cache.
/// `native_device` is the provider's own name of the device (OpenVINO's `ov_device`: `CPU`,
/// `GPU.0`, `NPU`), empty when unknown.
pub fn options(
    ep: PluginEp,
    native_device: &str,
    settings: &PluginSettings,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_owned(), v));
    match ep.provider {
        PluginProvider::OpenVino => {
            // With a load_config OpenVINO ignores its other options (`precision`, `cache_dir`,
            // `num_of_threads`): everything goes in as OpenVINO properties of the device.
            let mut properties: Vec<(&str, String)> = Vec::new();
            let inference = match (ep.kind, settings.hint, settings.graph_fp16) {
                // A GPU or NPU computes in f16 unless the graph asks for f32.
                (DeviceKind::Gpu, _, false) => "f32",
                (DeviceKind::Gpu | DeviceKind::Npu, _, _) => "f16",
                (DeviceKind::Cpu, _, true) => "f16",
                (DeviceKind::Cpu, PrecisionHint::Graph, false) => "f32",
                (DeviceKind::Cpu, PrecisionHint::Bf16, false) => "bf16",
                (DeviceKind::Cpu, PrecisionHint::Fp16, false) => "f16",
            };
            properties.push(("INFERENCE_PRECISION_HINT", inference.into()));
            if ep.on_cpu() && settings.threads > 0 {
                properties.push(("INFERENCE_NUM_THREADS", settings.threads.to_string()));
            }
            if let Some(dir) = &settings.cache_dir {
                properties.push(("CACHE_DIR", dir.to_string_lossy().into_owned()));
            }
            let body: Vec<String> = properties
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                .collect();
            let device = if native_device.is_empty() {
                ep.kind.name()
            } else {
                native_device
            };
            set(
                "load_config",
                format!("{{{}:{{{}}}}}", json_string(device), body.join(",")),
            );
        }
        PluginProvider::WebGpu => {
            // The discrete GPU of a laptop with two, unless a device is named.
            set("powerPreference", "high-performance".into());
            if ep.index > 0 {
                set("adapterIndex", ep.index.to_string());
            }
        }
        PluginProvider::TensorRtRtx => {
            set("device_id", ep.index.to_string());
            if let Some(dir) = &settings.cache_dir {
                set("nv_runtime_cache_path", dir.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The provider's own name of a device (OpenVINO's `ov_device`), from its metadata.
pub(crate) fn native_name(device: &Device<'_>) -> String {
    ep_api::provider_metadata(device)
        .remove("ov_device")
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
