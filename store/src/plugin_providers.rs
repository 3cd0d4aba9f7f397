//! The plugin execution providers Tessera knows (OpenVINO, WebGPU, TensorRT-RTX): their names
//! in configuration, packages, library files and folders in the data directory, and the
//! `name[:device]` syntax that picks one of their devices. Facts only: registering a library
//! with ONNX Runtime and listing its devices is the engine's (`engine::plugins`).

use std::path::{Path, PathBuf};

/// A plugin provider Tessera knows how to install and configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginProvider {
    OpenVino,
    WebGpu,
    TensorRtRtx,
}

impl PluginProvider {
    pub const ALL: [PluginProvider; 3] = [
        PluginProvider::OpenVino,
        PluginProvider::WebGpu,
        PluginProvider::TensorRtRtx,
    ];

    /// The name in configuration and on the command line.
    pub fn config_name(self) -> &'static str {
        match self {
            PluginProvider::OpenVino => "openvino",
            PluginProvider::WebGpu => "webgpu",
            PluginProvider::TensorRtRtx => "tensorrt-rtx",
        }
    }

    /// The name people know it by.
    pub fn label(self) -> &'static str {
        match self {
            PluginProvider::OpenVino => "OpenVINO",
            PluginProvider::WebGpu => "WebGPU",
            PluginProvider::TensorRtRtx => "TensorRT-RTX",
        }
    }

    /// ONNX Runtime's name of the provider, as its devices report it.
    pub fn ep_name(self) -> &'static str {
        match self {
            PluginProvider::OpenVino => "OpenVINOExecutionProvider",
            PluginProvider::WebGpu => "WebGpuExecutionProvider",
            PluginProvider::TensorRtRtx => "NvTensorRTRTXExecutionProvider",
        }
    }

    /// The package the plugin comes in (`pip download`).
    pub fn package(self) -> &'static str {
        match self {
            PluginProvider::OpenVino => "onnxruntime-ep-openvino",
            PluginProvider::WebGpu => "onnxruntime-ep-webgpu",
            PluginProvider::TensorRtRtx => "onnxruntime-ep-nv-tensorrt-rtx",
        }
    }

    /// The plugin library's file name on this system.
    pub fn library_name(self) -> &'static str {
        match (self, cfg!(windows), cfg!(target_os = "macos")) {
            (PluginProvider::OpenVino, true, _) => "onnxruntime_providers_openvino_plugin.dll",
            (PluginProvider::OpenVino, false, _) => "libonnxruntime_providers_openvino_plugin.so",
            (PluginProvider::WebGpu, true, _) => "onnxruntime_providers_webgpu.dll",
            (PluginProvider::WebGpu, false, true) => "libonnxruntime_providers_webgpu.dylib",
            (PluginProvider::WebGpu, false, false) => "libonnxruntime_providers_webgpu.so",
            (PluginProvider::TensorRtRtx, true, _) => "onnxruntime_providers_nv_tensorrt_rtx.dll",
            (PluginProvider::TensorRtRtx, false, _) => {
                "libonnxruntime_providers_nv_tensorrt_rtx.so"
            }
        }
    }

    /// Whether the provider compiles graphs into blobs worth keeping (`cache/compiled/`).
    pub fn compiles(self) -> bool {
        matches!(self, PluginProvider::OpenVino | PluginProvider::TensorRtRtx)
    }

    fn parse(name: &str) -> Option<PluginProvider> {
        match name {
            "openvino" | "ov" => Some(PluginProvider::OpenVino),
            "webgpu" => Some(PluginProvider::WebGpu),
            "tensorrt-rtx" | "trt-rtx" | "nv-tensorrt-rtx" => Some(PluginProvider::TensorRtRtx),
            _ => None,
        }
    }
}

/// The folder of `provider`'s library in a data directory: `runtime/plugins/<name>/`.
pub fn folder(data_dir: &Path, provider: PluginProvider) -> PathBuf {
    data_dir
        .join("runtime")
        .join("plugins")
        .join(provider.config_name())
}

/// What kind of hardware a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    Npu,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "CPU",
            DeviceKind::Gpu => "GPU",
            DeviceKind::Npu => "NPU",
        }
    }
}

/// One device of a plugin provider, as configured: `openvino:gpu` is the first OpenVINO GPU,
/// `openvino:gpu.1` the second, `webgpu` the first WebGPU device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PluginEp {
    pub provider: PluginProvider,
    pub kind: DeviceKind,
    /// Among the provider's devices of this kind, in the order the provider lists them.
    pub index: u8,
}

impl PluginEp {
    /// Parses `name[:device]`; `None` when `name` is no plugin provider.
    pub fn parse(text: &str) -> Option<Result<PluginEp, String>> {
        let lower = text.to_ascii_lowercase();
        let (name, device) = match lower.split_once(':') {
            Some((name, device)) => (name, Some(device)),
            None => (lower.as_str(), None),
        };
        let provider = PluginProvider::parse(name)?;
        Some(Self::with_device(provider, device).map_err(|why| format!("{text:?}: {why}")))
    }

    fn with_device(provider: PluginProvider, device: Option<&str>) -> Result<PluginEp, String> {
        let number = |s: &str| {
            s.parse::<u8>()
                .map_err(|_| format!("{s:?} is not a device number"))
        };
        let (kind, index) = match (provider, device) {
            (PluginProvider::OpenVino, None) => (DeviceKind::Gpu, 0),
            (PluginProvider::OpenVino, Some(device)) => {
                let (kind, index) = match device.split_once('.') {
                    Some((kind, index)) => (kind, number(index)?),
                    None => (device, 0),
                };
                let kind = match kind {
                    "cpu" => DeviceKind::Cpu,
                    "gpu" => DeviceKind::Gpu,
                    "npu" => DeviceKind::Npu,
                    _ => {
                        return Err(
                            "OpenVINO's devices are cpu, gpu, gpu.1 (a second GPU), npu".into()
                        );
                    }
                };
                (kind, index)
            }
            (_, None) => (DeviceKind::Gpu, 0),
            (_, Some(device)) => (DeviceKind::Gpu, number(device)?),
        };
        Ok(PluginEp {
            provider,
            kind,
            index,
        })
    }

    /// The name in configuration, e.g. `openvino:gpu.1`, `webgpu`.
    pub fn config_name(self) -> String {
        let name = self.provider.config_name();
        match (self.provider, self.index) {
            (PluginProvider::OpenVino, 0) => {
                format!("{name}:{}", self.kind.name().to_ascii_lowercase())
            }
            (PluginProvider::OpenVino, i) => {
                format!("{name}:{}.{i}", self.kind.name().to_ascii_lowercase())
            }
            (_, 0) => name.to_owned(),
            (_, i) => format!("{name}:{i}"),
        }
    }

    /// Whether its device is a CPU (then nothing is moved to another memory, and the CPU's
    /// precision policy applies).
    pub fn on_cpu(self) -> bool {
        self.kind == DeviceKind::Cpu
    }
}

impl std::fmt::Display for PluginEp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = self.provider.label();
        match (self.provider, self.index) {
            (PluginProvider::OpenVino, 0) => write!(f, "{label} {}", self.kind.name()),
            (PluginProvider::OpenVino, i) => write!(f, "{label} {} {i}", self.kind.name()),
            (_, 0) => f.write_str(label),
            (_, i) => write!(f, "{label} device {i}"),
        }
    }
}
