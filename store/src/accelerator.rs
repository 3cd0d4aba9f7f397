//! Which onnxruntime wheel and which execution providers fit this machine.
//!
//! The machine's GPUs are found by their PCI vendor ids, without any GPU library: on Linux the
//! display controllers in `/sys/bus/pci/devices/*/` (class `0x03xxxx`, with their `vendor`), on
//! Windows the display adapters' `MatchingDeviceId` values in the registry (`PCI\VEN_8086&…`, read
//! with `reg query`; neither DXGI nor WMI is needed), on macOS none (Apple's GPUs have no use
//! here, see below). Then, most capable first:
//!
//! - an NVIDIA GPU with its driver: `onnxruntime-gpu` (CUDA) on x86-64, Linux and Windows (its
//!   CUDA and cuDNN wheels exist for both). Not DirectML on Windows: `onnxruntime-directml` is
//!   published up to 1.24 only, older than the ONNX Runtime 1.31 this build needs (API 31);
//!   `--providers directml` with `--ort-version` takes it once a release is new enough;
//! - another GPU that is not Intel's (AMD, …): the plain wheel with the WebGPU plugin
//!   (`webgpu`: Vulkan on Linux, Direct3D 12 on Windows), which picks the high-performance
//!   adapter;
//! - an Intel GPU (integrated or Arc): the plain wheel with the OpenVINO plugin
//!   (`openvino:gpu`) on x86-64;
//! - otherwise the plain `onnxruntime` wheel (CPU). macOS gets the CPU too: CoreML stays
//!   opt-in until it is measured faster (docs/gpu.md).
//!
//! The execution-provider list is written next to the installed library, and the daemon uses
//! it unless `engine.execution_providers` in `config.toml` says otherwise.

use super::Platform;
use std::path::Path;
use std::process::Command;

/// PCI vendor ids.
pub const INTEL: u16 = 0x8086;
pub const AMD: u16 = 0x1002;
pub const NVIDIA: u16 = 0x10de;

/// A display adapter found on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub vendor: u16,
}

impl Gpu {
    pub fn vendor_name(self) -> &'static str {
        match self.vendor {
            INTEL => "Intel",
            AMD => "AMD",
            NVIDIA => "NVIDIA",
            0x1af4 | 0x1234 | 0x15ad | 0x1414 => "virtual",
            _ => "other",
        }
    }

    /// Virtual display adapters (virtio, QEMU's VGA, VMware, Hyper-V) compute nothing.
    fn is_virtual(self) -> bool {
        self.vendor_name() == "virtual"
    }
}

/// What the choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub platform: Platform,
    /// `std::env::consts::ARCH`, e.g. `x86_64`.
    pub arch: String,
    /// How an NVIDIA driver was found, e.g. `NVIDIA driver 550.54 (/proc/driver/nvidia/version)`.
    pub nvidia: Option<String>,
    /// The display adapters, by PCI vendor.
    pub gpus: Vec<Gpu>,
}

impl Machine {
    /// This machine.
    pub fn detect() -> Machine {
        let platform = Platform::current();
        let gpus = match platform {
            Platform::Linux => gpus_in_sysfs(Path::new("/sys/bus/pci/devices")),
            Platform::Windows => Command::new("reg")
                .args([
                    "query",
                    WINDOWS_DISPLAY_CLASS,
                    "/s",
                    "/v",
                    "MatchingDeviceId",
                ])
                .output()
                .map(|o| gpus_in_registry(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default(),
            Platform::MacOs => Vec::new(),
        };
        Machine {
            platform,
            arch: std::env::consts::ARCH.to_owned(),
            nvidia: detect_nvidia(Path::new("/proc/driver/nvidia/version")),
            gpus,
        }
    }

    fn has(&self, vendor: u16) -> bool {
        self.gpus.iter().any(|g| g.vendor == vendor)
    }

    /// A GPU that is neither Intel's, NVIDIA's nor virtual.
    fn other_gpu(&self) -> Option<Gpu> {
        self.gpus
            .iter()
            .copied()
            .find(|g| g.vendor != INTEL && g.vendor != NVIDIA && !g.is_virtual())
    }
}

/// The registry key of the display adapter class on Windows.
pub const WINDOWS_DISPLAY_CLASS: &str =
    r"HKLM\SYSTEM\CurrentControlSet\Control\Class\{4d36e968-e325-11ce-bfc1-08002be10318}";

/// The display controllers (PCI class 0x03) under a `/sys/bus/pci/devices`-like folder.
pub fn gpus_in_sysfs(devices: &Path) -> Vec<Gpu> {
    let Ok(entries) = std::fs::read_dir(devices) else {
        return Vec::new();
    };
    let hex = |path: &Path| -> Option<u32> {
        let text = std::fs::read_to_string(path).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .iter()
        .filter(|d| hex(&d.join("class")).is_some_and(|c| c >> 16 == 0x03))
        .filter_map(|d| hex(&d.join("vendor")))
        .map(|vendor| Gpu {
            vendor: vendor as u16,
        })
        .collect()
}

/// The display adapters in `reg query … /v MatchingDeviceId` output
/// (`MatchingDeviceId    REG_SZ    pci\ven_8086&dev_a7a0`).
pub fn gpus_in_registry(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter(|l| l.to_ascii_lowercase().contains("matchingdeviceid"))
        .filter_map(|l| {
            let lower = l.to_ascii_lowercase();
            let at = lower.find("ven_")? + 4;
            u16::from_str_radix(lower.get(at..at + 4)?, 16).ok()
        })
        .map(|vendor| Gpu { vendor })
        .collect()
}

/// The wheel to install, the providers to use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelChoice {
    pub package: &'static str,
    /// Best first, the CPU last: what the daemon uses (plugins among them are installed too).
    pub providers: Vec<String>,
    pub reason: String,
}

fn choice(package: &'static str, providers: &[&str], reason: String) -> WheelChoice {
    let mut providers: Vec<String> = providers.iter().map(|p| (*p).to_owned()).collect();
    providers.push("cpu".into());
    WheelChoice {
        package,
        providers,
        reason,
    }
}

pub fn choose(machine: &Machine) -> WheelChoice {
    let x86 = machine.arch == "x86_64";
    let plugins_here = matches!(machine.platform, Platform::Linux | Platform::Windows);
    if machine.platform == Platform::MacOs {
        return choice(
            "onnxruntime",
            &[],
            "macOS: the CPU (CoreML is opt-in until it is measured faster)".into(),
        );
    }
    if let Some(found) = &machine.nvidia
        && x86
    {
        return choice("onnxruntime-gpu", &["cuda"], format!("{found}: CUDA"));
    }
    if let Some(gpu) = machine.other_gpu()
        && plugins_here
    {
        return choice(
            "onnxruntime",
            &["webgpu"],
            format!("{} GPU: WebGPU", gpu.vendor_name()),
        );
    }
    if machine.has(INTEL) && plugins_here && x86 {
        return choice(
            "onnxruntime",
            &["openvino:gpu"],
            "Intel GPU: OpenVINO".into(),
        );
    }
    let reason = match &machine.nvidia {
        Some(found) => format!("{found}, but the GPU wheel is built for x86-64 only: CPU"),
        None if machine.platform == Platform::Windows => {
            "no GPU found: CPU (DirectML with --providers directml)".into()
        }
        None => "no NVIDIA, AMD or Intel GPU found: CPU".into(),
    };
    choice("onnxruntime", &[], reason)
}

/// The wheel that carries the built-in providers of `providers` (CUDA: the GPU wheel,
/// DirectML: the DirectML wheel); plugin providers load into any of them.
pub fn package_for(providers: &[String]) -> &'static str {
    let named = |p: &str| providers.iter().any(|n| n.split(':').next() == Some(p));
    if named("cuda") {
        "onnxruntime-gpu"
    } else if named("directml") || named("dml") {
        "onnxruntime-directml"
    } else {
        "onnxruntime"
    }
}

/// The execution providers a wheel carries, best first; the CPU is always last.
pub fn providers_for(package: &str, _platform: Platform) -> Vec<String> {
    let mut list: Vec<String> = match package {
        "onnxruntime-gpu" => vec!["cuda".into()],
        "onnxruntime-directml" => vec!["directml".into()],
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

/// A `--providers` list with a name that is no execution provider.
#[derive(Debug, thiserror::Error)]
#[error("--providers: {0}")]
pub struct BadProviders(pub String);

/// What `tessera runtime install` and `tessera-install` install: the package, the providers (when they are to be
/// recorded, plugins installed), and why.
pub struct RuntimePlan {
    pub package: String,
    pub providers: Option<Vec<String>>,
    pub reason: String,
}

/// The package and providers: as asked, else what the providers need, else what fits the
/// machine ([`choose`]).
pub fn runtime_plan(
    package: Option<String>,
    providers: Option<&str>,
) -> Result<RuntimePlan, BadProviders> {
    let listed: Option<Vec<String>> = providers
        .filter(|l| !l.trim().eq_ignore_ascii_case("auto"))
        .map(|l| {
            l.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        });
    if let Some(list) = &listed {
        crate::execution_providers::parse_list(list).map_err(BadProviders)?;
    }
    Ok(match (package, listed) {
        (Some(package), listed) => RuntimePlan {
            package,
            providers: listed,
            reason: "as asked".into(),
        },
        (None, Some(list)) => RuntimePlan {
            package: package_for(&list).to_owned(),
            providers: Some(list),
            reason: "for the providers asked for".into(),
        },
        (None, None) => {
            let choice = choose(&Machine::detect());
            RuntimePlan {
                package: choice.package.to_owned(),
                providers: Some(choice.providers),
                reason: choice.reason,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(platform: Platform, arch: &str, nvidia: bool) -> Machine {
        Machine {
            platform,
            arch: arch.into(),
            nvidia: nvidia.then(|| "NVIDIA driver 550.54.14".into()),
            gpus: if nvidia {
                vec![Gpu { vendor: NVIDIA }]
            } else {
                Vec::new()
            },
        }
    }

    fn with_gpus(mut m: Machine, vendors: &[u16]) -> Machine {
        m.gpus.extend(vendors.iter().map(|&vendor| Gpu { vendor }));
        m
    }

    #[test]
    fn the_wheel_follows_platform_and_gpu() {
        let pick = |p, a, n| choose(&machine(p, a, n)).package;
        assert_eq!(pick(Platform::Linux, "x86_64", false), "onnxruntime");
        assert_eq!(pick(Platform::Linux, "x86_64", true), "onnxruntime-gpu");
        assert_eq!(pick(Platform::Linux, "aarch64", true), "onnxruntime");
        assert_eq!(pick(Platform::Windows, "x86_64", true), "onnxruntime-gpu");
        assert_eq!(pick(Platform::Windows, "x86_64", false), "onnxruntime");
        assert_eq!(pick(Platform::MacOs, "aarch64", false), "onnxruntime");
        let cuda = choose(&machine(Platform::Linux, "x86_64", true));
        assert!(cuda.reason.contains("550.54.14"));
        assert_eq!(cuda.providers, ["cuda", "cpu"]);
    }

    #[test]
    fn intel_gets_openvino_other_gpus_webgpu_and_nvidia_wins() {
        let linux = machine(Platform::Linux, "x86_64", false);
        let intel = choose(&with_gpus(linux.clone(), &[INTEL]));
        assert_eq!(
            (intel.package, intel.providers.as_slice()),
            (
                "onnxruntime",
                &["openvino:gpu".to_owned(), "cpu".to_owned()][..]
            )
        );
        assert_eq!(intel.reason, "Intel GPU: OpenVINO");
        let amd = choose(&with_gpus(linux.clone(), &[INTEL, AMD]));
        assert_eq!(
            amd.providers,
            ["webgpu", "cpu"],
            "the discrete AMD card wins"
        );
        assert_eq!(amd.reason, "AMD GPU: WebGPU");
        let other = choose(&with_gpus(linux.clone(), &[0x5143]));
        assert_eq!(other.providers, ["webgpu", "cpu"]);
        let laptop = choose(&with_gpus(
            machine(Platform::Linux, "x86_64", true),
            &[INTEL],
        ));
        assert_eq!(
            laptop.providers,
            ["cuda", "cpu"],
            "NVIDIA with its driver first"
        );
        let vm = choose(&with_gpus(linux, &[0x1af4, 0x1234]));
        assert_eq!(vm.providers, ["cpu"], "virtual adapters compute nothing");
        let windows_intel = choose(&with_gpus(
            machine(Platform::Windows, "x86_64", false),
            &[INTEL],
        ));
        assert_eq!(windows_intel.providers, ["openvino:gpu", "cpu"]);
        let mac = choose(&with_gpus(
            machine(Platform::MacOs, "aarch64", false),
            &[0x106b],
        ));
        assert_eq!(mac.providers, ["cpu"]);
    }

    #[test]
    fn gpus_are_read_from_sysfs_and_the_registry() {
        let temp = tempfile::tempdir().unwrap();
        for (slot, class, vendor) in [
            ("0000:00:02.0", "0x030000", "0x8086"),
            ("0000:00:1f.3", "0x040300", "0x8086"),
            ("0000:03:00.0", "0x030200", "0x1002"),
        ] {
            let d = temp.path().join(slot);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        }
        assert_eq!(
            gpus_in_sysfs(temp.path()),
            [Gpu { vendor: INTEL }, Gpu { vendor: AMD }],
            "the audio device is no GPU"
        );
        assert!(gpus_in_sysfs(&temp.path().join("missing")).is_empty());
        let reg = "\r\nHKEY_LOCAL_MACHINE\\SYSTEM\\...\\0000\r\n    MatchingDeviceId    REG_SZ    pci\\ven_8086&dev_a7a0\r\n\r\nHKEY_LOCAL_MACHINE\\...\\0001\r\n    MatchingDeviceId    REG_SZ    PCI\\VEN_10DE&DEV_2520\r\n";
        assert_eq!(
            gpus_in_registry(reg),
            [Gpu { vendor: INTEL }, Gpu { vendor: NVIDIA }]
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
        assert_eq!(providers_for("onnxruntime", Platform::MacOs), ["cpu"]);
        assert_eq!(providers_for("onnxruntime", Platform::Linux), ["cpu"]);
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(package_for(&list(&["cuda:1", "cpu"])), "onnxruntime-gpu");
        assert_eq!(package_for(&list(&["directml"])), "onnxruntime-directml");
        assert_eq!(package_for(&list(&["openvino:gpu", "cpu"])), "onnxruntime");
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
