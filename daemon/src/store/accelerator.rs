//! Which onnxruntime wheel fits this machine, and which execution providers it carries.
//!
//! - Windows: the plain `onnxruntime` wheel (CPU). `onnxruntime-directml`, which would run on
//!   any DirectX 12 GPU, is published on PyPI up to 1.24 only, older than the ONNX Runtime 1.31
//!   this build needs (API 31); `--ort-package onnxruntime-directml --ort-version …` takes it
//!   once a release is new enough.
//! - macOS: the plain `onnxruntime` wheel, which carries CoreML.
//! - Linux x86-64 with an NVIDIA GPU and its driver: `onnxruntime-gpu` (CUDA).
//! - Anything else: the plain `onnxruntime` wheel (CPU).
//!
//! The execution-provider list written next to the installed library follows the package, and
//! the daemon uses it unless `engine.execution_providers` in `config.toml` says otherwise.

use crate::setup::places::Platform;
use std::path::Path;
use std::process::Command;

/// What the choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub platform: Platform,
    /// `std::env::consts::ARCH`, e.g. `x86_64`.
    pub arch: String,
    /// How an NVIDIA driver was found, e.g. `NVIDIA driver 550.54 (/proc/driver/nvidia/version)`.
    pub nvidia: Option<String>,
}

impl Machine {
    /// This machine.
    pub fn detect() -> Machine {
        Machine {
            platform: Platform::current(),
            arch: std::env::consts::ARCH.to_owned(),
            nvidia: detect_nvidia(Path::new("/proc/driver/nvidia/version")),
        }
    }
}

/// The wheel to install, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelChoice {
    pub package: &'static str,
    pub reason: String,
}

pub fn choose(machine: &Machine) -> WheelChoice {
    match machine.platform {
        Platform::Windows => WheelChoice {
            package: "onnxruntime",
            reason: "Windows: CPU; no onnxruntime-directml release is new enough for this build"
                .into(),
        },
        Platform::MacOs => WheelChoice {
            package: "onnxruntime",
            reason: "macOS: the standard wheel carries CoreML".into(),
        },
        Platform::Linux => match &machine.nvidia {
            Some(found) if machine.arch == "x86_64" => WheelChoice {
                package: "onnxruntime-gpu",
                reason: format!("{found}: CUDA"),
            },
            Some(found) => WheelChoice {
                package: "onnxruntime",
                reason: format!("{found}, but the GPU wheel is built for x86-64 only: CPU"),
            },
            None => WheelChoice {
                package: "onnxruntime",
                reason: "no NVIDIA GPU driver found: CPU".into(),
            },
        },
    }
}

/// The execution providers a wheel carries, best first; the CPU is always last.
pub fn providers_for(package: &str, platform: Platform) -> Vec<String> {
    let mut list: Vec<String> = match package {
        "onnxruntime-gpu" => vec!["cuda".into()],
        "onnxruntime-directml" => vec!["directml".into()],
        "onnxruntime" if platform == Platform::MacOs => vec!["coreml".into()],
        _ => Vec::new(),
    };
    list.push("cpu".into());
    list
}

/// An NVIDIA driver: the kernel module's version file on Linux, else a working `nvidia-smi`.
pub fn detect_nvidia(proc_version: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(proc_version) {
        // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 …"
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split("Kernel Module").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("(version unknown)");
        return Some(format!(
            "NVIDIA driver {version} ({})",
            proc_version.display()
        ));
    }
    let output = Command::new("nvidia-smi")
        .arg("--query-gpu=name,driver_version")
        .arg("--format=csv,noheader")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next()?.trim();
    (output.status.success() && !first.is_empty()).then(|| format!("{first} (nvidia-smi)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(platform: Platform, arch: &str, nvidia: bool) -> Machine {
        Machine {
            platform,
            arch: arch.into(),
            nvidia: nvidia.then(|| "NVIDIA driver 550.54.14".into()),
        }
    }

    #[test]
    fn the_wheel_follows_platform_and_gpu() {
        let pick = |p, a, n| choose(&machine(p, a, n)).package;
        assert_eq!(pick(Platform::Linux, "x86_64", false), "onnxruntime");
        assert_eq!(pick(Platform::Linux, "x86_64", true), "onnxruntime-gpu");
        assert_eq!(pick(Platform::Linux, "aarch64", true), "onnxruntime");
        assert_eq!(pick(Platform::Windows, "x86_64", true), "onnxruntime");
        assert_eq!(pick(Platform::Windows, "x86_64", false), "onnxruntime");
        assert_eq!(pick(Platform::MacOs, "aarch64", false), "onnxruntime");
        assert!(
            choose(&machine(Platform::Linux, "x86_64", true))
                .reason
                .contains("550.54.14")
        );
    }

    #[test]
    fn providers_follow_the_package() {
        assert_eq!(
            providers_for("onnxruntime-gpu", Platform::Linux),
            ["cuda", "cpu"]
        );
        assert_eq!(
            providers_for("onnxruntime-directml", Platform::Windows),
            ["directml", "cpu"]
        );
        assert_eq!(
            providers_for("onnxruntime", Platform::MacOs),
            ["coreml", "cpu"]
        );
        assert_eq!(providers_for("onnxruntime", Platform::Linux), ["cpu"]);
    }

    #[test]
    fn the_kernel_module_file_names_the_driver() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("version");
        std::fs::write(
            &file,
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n",
        )
        .unwrap();
        let found = detect_nvidia(&file).unwrap();
        assert!(found.starts_with("NVIDIA driver 550.54.14"), "{found}");
    }
}
