//! Execution providers by name: the entries of `engine.execution_providers` and of
//! `--providers` (`cpu`, `cuda`, `cuda:1`, `directml`, `coreml`, `openvino:gpu`, `webgpu`, …),
//! parsed and printed. Registering them on a session is the engine's (`engine/providers.rs`);
//! the names live here so that the installer can check a `--providers` list without linking
//! ONNX Runtime.

use crate::plugin_providers::PluginEp;

/// An ONNX Runtime execution provider. Which ones work depends on the library: the
/// `onnxruntime-gpu` wheel carries CUDA, `onnxruntime-directml` DirectML, the macOS wheel CoreML;
/// plugin providers (OpenVINO, WebGPU, TensorRT-RTX) come as libraries of their own in
/// `runtime/plugins/`. One that cannot be used is dropped with its reason and the CPU takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda {
        device_id: i32,
    },
    /// `adapter`: the DXGI adapter index; `None`: the high-performance adapter (the discrete
    /// GPU of a laptop with two).
    DirectMl {
        adapter: Option<i32>,
    },
    CoreMl,
    /// A device of a plugin provider (`plugin_providers.rs`).
    Plugin(PluginEp),
    /// The fault-injection tests' accelerator: it runs on the CPU provider but is treated as
    /// an accelerator (the engine's `faults.rs`); no configuration names it.
    Simulated,
}

impl ExecutionProvider {
    /// The provider's name for people, e.g. `CUDA`, `OpenVINO GPU`.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPU",
            ExecutionProvider::Cuda { .. } => "CUDA",
            ExecutionProvider::DirectMl { .. } => "DirectML",
            ExecutionProvider::CoreMl => "CoreML",
            ExecutionProvider::Plugin(ep) => ep.provider.label(),
            ExecutionProvider::Simulated => "simulated GPU",
        }
    }

    /// Whether this is an accelerator (anything but ONNX Runtime's own CPU provider): its
    /// sessions are probed, can fall back to the CPU, and have their node placement logged.
    pub fn is_accelerator(self) -> bool {
        self != ExecutionProvider::Cpu
    }

    /// Whether it computes on the host's CPU and memory (the CPU provider, OpenVINO's CPU
    /// device): then the CPU's policies hold (f32 graphs under `auto`, one diffusion tile per
    /// call, the VAE's memory budget) and no device memory is budgeted.
    pub fn on_host_cpu(self) -> bool {
        match self {
            ExecutionProvider::Cpu => true,
            ExecutionProvider::Plugin(ep) => ep.on_cpu(),
            _ => false,
        }
    }

    /// The name this provider has in configuration, e.g. `cuda:1`, `openvino:cpu`.
    pub fn config_name(self) -> String {
        match self {
            ExecutionProvider::Cpu => "cpu".into(),
            ExecutionProvider::Cuda { device_id: 0 } => "cuda".into(),
            ExecutionProvider::Cuda { device_id } => format!("cuda:{device_id}"),
            ExecutionProvider::DirectMl { adapter: None } => "directml".into(),
            ExecutionProvider::DirectMl { adapter: Some(i) } => format!("directml:{i}"),
            ExecutionProvider::CoreMl => "coreml".into(),
            ExecutionProvider::Plugin(ep) => ep.config_name(),
            ExecutionProvider::Simulated => "simulated".into(),
        }
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(text: &str) -> Result<ExecutionProvider, String> {
        if let Some(plugin) = PluginEp::parse(text) {
            return plugin.map(ExecutionProvider::Plugin);
        }
        let (name, device) = match text.split_once(':') {
            Some((name, device)) => (name, Some(device)),
            None => (text, None),
        };
        let device_id =
            match device {
                Some(d) => Some(d.parse::<i32>().ok().filter(|id| *id >= 0).ok_or_else(|| {
                    format!("{text:?}: the device must be a number, e.g. cuda:1")
                })?),
                None => None,
            };
        let provider = match name.to_ascii_lowercase().as_str() {
            "cpu" => ExecutionProvider::Cpu,
            "cuda" => ExecutionProvider::Cuda {
                device_id: device_id.unwrap_or(0),
            },
            "directml" | "dml" => ExecutionProvider::DirectMl { adapter: device_id },
            "coreml" => ExecutionProvider::CoreMl,
            _ => {
                return Err(format!(
                    "unknown execution provider {text:?} (one of cpu, cuda, directml, coreml, openvino:gpu, openvino:cpu, openvino:npu, webgpu, tensorrt-rtx)"
                ));
            }
        };
        if device.is_some()
            && matches!(provider, ExecutionProvider::Cpu | ExecutionProvider::CoreMl)
        {
            return Err(format!(
                "{text:?}: only cuda, directml, openvino, webgpu and tensorrt-rtx take a device"
            ));
        }
        Ok(provider)
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecutionProvider::Cuda { device_id } if *device_id != 0 => {
                write!(f, "{} device {device_id}", self.name())
            }
            ExecutionProvider::DirectMl {
                adapter: Some(adapter),
            } => write!(f, "{} adapter {adapter}", self.name()),
            ExecutionProvider::Plugin(ep) => write!(f, "{ep}"),
            _ => f.write_str(self.name()),
        }
    }
}

/// Parses a configured list; the CPU is appended when missing (it is always the fallback).
pub fn parse_list(names: &[String]) -> Result<Vec<ExecutionProvider>, String> {
    let mut list = names
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<ExecutionProvider>, String>>()?;
    if !list.contains(&ExecutionProvider::Cpu) {
        list.push(ExecutionProvider::Cpu);
    }
    Ok(list)
}
