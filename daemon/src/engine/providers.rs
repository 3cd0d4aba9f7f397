//! Execution providers (their names in configuration, `cuda`, `cuda:1`, `directml`, `coreml`,
//! `cpu`, are `store::execution_providers`, which the installer shares): why one cannot be used
//! here ([`diagnose`]: the library lacks it, a CUDA or cuDNN library is
//! missing, no device, not the right system), the options each is registered with
//! ([`EpSettings`], [`cuda_options`]), and registration on a session. Whether a provider that
//! passes all this actually computes is the probe's job (`probe.rs`).

use std::path::{Path, PathBuf};

use super::ExecutionProvider;
use super::nvml::Nvml;
use super::plugins::{self, PluginEp, PluginSettings, PrecisionHint};
use super::runtime::{Runtime, one_line};
pub use crate::store::execution_providers::parse_list;
use ort::ep::ExecutionProvider as _;
use ort::session::builder::SessionBuilder;

/// How cuDNN picks a convolution algorithm (`cudnn_conv_algo_search`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvSearch {
    /// Time every algorithm on the first call of each input shape and keep the fastest: worth
    /// it where a network is called many times with one shape.
    Exhaustive,
    /// cuDNN's heuristics pick at once, with no trial runs and no trial memory.
    Heuristic,
}

impl ConvSearch {
    /// The search for a model: exhaustive for the networks a stage calls with one shape
    /// throughout (the UNet and the ControlNet: every diffusion tile of a stage has the same
    /// size, and they are called at every step), heuristic for the rest (VAE tiles and ESRGAN
    /// edge tiles vary in size, and each size would pay its own search, for one or a few
    /// calls; the text encoder and the probe run once or have no convolutions).
    pub fn for_model(name: &str) -> ConvSearch {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("unet") || lower.starts_with("controlnet") {
            ConvSearch::Exhaustive
        } else {
            ConvSearch::Heuristic
        }
    }
}

/// What a session's providers are registered with, besides the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpSettings {
    pub conv_search: ConvSearch,
    /// Cap of the accelerator's memory arena for this session (`gpu_mem_limit`): the VRAM budget.
    pub memory_limit: Option<u64>,
    /// The graph computes in f16 (compiling providers are asked for f16 too).
    pub graph_fp16: bool,
    /// What a CPU device of a compiling provider is asked to compute in.
    pub hint: PrecisionHint,
    /// The folder of this session's compiled blobs (`cache/compiled/…`), for providers that
    /// compile (OpenVINO, TensorRT-RTX, CoreML).
    pub compiled_cache: Option<PathBuf>,
    /// Threads of a CPU device of a plugin provider (0: its own choice).
    pub threads: usize,
}

impl EpSettings {
    /// For the probe: nothing to search for, nothing to cap, nothing to keep.
    pub fn probe() -> EpSettings {
        EpSettings {
            conv_search: ConvSearch::Heuristic,
            memory_limit: None,
            graph_fp16: false,
            hint: PrecisionHint::Graph,
            compiled_cache: None,
            threads: 1,
        }
    }

    fn plugin(&self) -> PluginSettings {
        PluginSettings {
            graph_fp16: self.graph_fp16,
            hint: self.hint,
            cache_dir: self.compiled_cache.clone(),
            threads: self.threads,
        }
    }
}

/// DirectML on `adapter`, else on the adapter DXGI ranks first for high performance (a laptop's
/// discrete GPU; adapter 0 is often the integrated one), GPUs only.
pub fn directml(adapter: Option<i32>) -> ort::ep::DirectML {
    use ort::ep::directml::{DeviceFilter, PerformancePreference};
    let dml = ort::ep::DirectML::default();
    match adapter {
        Some(id) => dml.with_device_id(id),
        None => dml
            .with_performance_preference(PerformancePreference::HighPerformance)
            .with_device_filter(DeviceFilter::Gpu),
    }
}

/// CoreML as Tessera asks for it when configured (docs/gpu.md says why macOS defaults to the
/// CPU): the MLProgram format (more operators than the old NeuralNetwork format, fp16 on the GPU
/// and the Neural Engine), every compute unit, and the compiled model kept in `cache_dir` so
/// that only the first start compiles. Inputs keep their dynamic shapes: requiring static ones
/// would leave every network of Tessera, whose height and width are dynamic, on the CPU.
pub fn coreml(cache_dir: Option<&Path>) -> ort::ep::CoreML {
    use ort::ep::coreml::{ComputeUnits, ModelFormat};
    let coreml = ort::ep::CoreML::default()
        .with_model_format(ModelFormat::MLProgram)
        .with_compute_units(ComputeUnits::All)
        .with_static_input_shapes(false);
    match cache_dir {
        Some(dir) => coreml.with_model_cache_dir(dir.display()),
        None => coreml,
    }
}

/// The CUDA provider options Tessera sets, as ONNX Runtime's keys and values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub device_id: i32,
    /// `cudnn_conv_algo_search`: `EXHAUSTIVE` or `HEURISTIC`.
    pub conv_algo_search: &'static str,
    /// `arena_extend_strategy`: always `kSameAsRequested`, so the arena grows by what a call
    /// asks for instead of doubling (the default, `kNextPowerOfTwo`, can overshoot by gigabytes
    /// on an 8 GB card).
    pub arena_extend_strategy: &'static str,
    /// `gpu_mem_limit` in bytes, when there is a budget.
    pub gpu_mem_limit: Option<u64>,
}

/// The options of a CUDA session on `device_id` with `settings`.
pub fn cuda_options(device_id: i32, settings: &EpSettings) -> CudaOptions {
    CudaOptions {
        device_id,
        conv_algo_search: match settings.conv_search {
            ConvSearch::Exhaustive => "EXHAUSTIVE",
            ConvSearch::Heuristic => "HEURISTIC",
        },
        arena_extend_strategy: "kSameAsRequested",
        gpu_mem_limit: settings.memory_limit,
    }
}

impl CudaOptions {
    /// `ort`'s CUDA provider with these options.
    fn to_ort(&self) -> ort::ep::CUDA {
        use ort::ep::cuda::ConvAlgorithmSearch;
        let search = match self.conv_algo_search {
            "EXHAUSTIVE" => ConvAlgorithmSearch::Exhaustive,
            _ => ConvAlgorithmSearch::Heuristic,
        };
        let cuda = ort::ep::CUDA::default()
            .with_device_id(self.device_id)
            .with_conv_algorithm_search(search)
            .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
        match self.gpu_mem_limit {
            Some(limit) => cuda.with_memory_limit(limit as usize),
            None => cuda,
        }
    }
}

/// Adds `ep` to a session under construction.
pub(super) fn register(
    runtime: &Runtime,
    builder: &mut SessionBuilder,
    ep: ExecutionProvider,
    settings: &EpSettings,
) -> Result<(), String> {
    let result = match ep {
        // The simulated accelerator of the fault-injection tests runs on the CPU provider.
        ExecutionProvider::Cpu | ExecutionProvider::Simulated => Ok(()),
        ExecutionProvider::Cuda { device_id } => {
            cuda_options(device_id, settings).to_ort().register(builder)
        }
        ExecutionProvider::DirectMl { adapter } => directml(adapter).register(builder),
        ExecutionProvider::CoreMl => coreml(settings.compiled_cache.as_deref()).register(builder),
        ExecutionProvider::Plugin(plugin) => {
            let device = plugins::ort_device(runtime, plugin)?;
            let native = plugins::native_name(&device);
            let options = plugins::options(plugin, &native, &settings.plugin());
            return super::ep_api::append_for_device(builder, &runtime.env, &device, &options)
                .map_err(|e| one_line(&e));
        }
    };
    result.map_err(|e| one_line(&e.to_string()))
}

/// Why `ep` cannot be used here, in one line, checked before ONNX Runtime is asked to build
/// anything on it: the library lacks the provider, the system is the wrong one, the driver or
/// device is missing, a CUDA or cuDNN library the provider needs is missing. `Ok` means only
/// that nothing is known to be missing: registration and the probe decide.
pub fn diagnose(runtime: &Runtime, data_dir: &Path, ep: ExecutionProvider) -> Result<(), String> {
    match ep {
        ExecutionProvider::Cpu | ExecutionProvider::Simulated => Ok(()),
        ExecutionProvider::Plugin(plugin) => diagnose_plugin(runtime, data_dir, plugin),
        ExecutionProvider::Cuda { device_id } => diagnose_cuda(runtime, device_id),
        ExecutionProvider::DirectMl { .. } => {
            if !cfg!(windows) {
                return Err("DirectML runs on Windows only (it is DirectX 12)".into());
            }
            if !ort::ep::DirectML::is_available().unwrap_or(false) {
                return Err(
                    "this ONNX Runtime library has no DirectML provider; install onnxruntime-directml (`tessera runtime install --package onnxruntime-directml`)".into(),
                );
            }
            Ok(())
        }
        ExecutionProvider::CoreMl => {
            if !cfg!(target_os = "macos") {
                return Err("CoreML runs on macOS only".into());
            }
            if !ort::ep::CoreML::is_available().unwrap_or(false) {
                return Err("this ONNX Runtime library has no CoreML provider".into());
            }
            Ok(())
        }
    }
}

/// A plugin provider's library registers and offers the device `plugin` names.
fn diagnose_plugin(runtime: &Runtime, data_dir: &Path, plugin: PluginEp) -> Result<(), String> {
    plugins::register_library(runtime, data_dir, plugin.provider)?;
    plugins::ort_device(runtime, plugin).map(drop)
}

/// The CUDA provider's own library, next to ONNX Runtime's.
fn cuda_provider_name() -> &'static str {
    if cfg!(windows) {
        "onnxruntime_providers_cuda.dll"
    } else {
        "libonnxruntime_providers_cuda.so"
    }
}

fn diagnose_cuda(runtime: &Runtime, device_id: i32) -> Result<(), String> {
    let provider = runtime
        .path
        .parent()
        .map(|dir| dir.join(cuda_provider_name()));
    let listed = ort::ep::CUDA::is_available().unwrap_or(false);
    let Some(provider) = provider.filter(|p| listed && p.is_file()) else {
        return Err(if listed {
            format!(
                "this ONNX Runtime library lacks {} beside it; reinstall the GPU package: `tessera runtime install --package onnxruntime-gpu --force`",
                cuda_provider_name()
            )
        } else {
            "this ONNX Runtime library has no CUDA provider (it is the CPU-only package); install the GPU package: `tessera runtime install --package onnxruntime-gpu`".into()
        });
    };
    let nvml = Nvml::open().map_err(|e| format!("no NVIDIA driver ({e})"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("the NVIDIA driver does not answer ({e})"))?;
    if count == 0 {
        return Err("no NVIDIA GPU (the driver sees no device)".into());
    }
    if device_id as u32 >= count {
        return Err(format!(
            "no CUDA device {device_id} (the driver sees {count}: 0 to {})",
            count - 1
        ));
    }
    let search = [
        runtime.path.parent().map(Path::to_path_buf),
        runtime
            .path
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf),
    ];
    check_libraries(&provider, &search)
}

/// `Err` naming the CUDA and cuDNN libraries `provider` needs that load neither by the
/// system's search nor from `dirs`.
fn check_libraries(provider: &Path, dirs: &[Option<PathBuf>]) -> Result<(), String> {
    let missing: Vec<String> = needed_libraries(provider)
        .into_iter()
        .filter(|name| !loadable(name, dirs))
        .collect();
    match missing.as_slice() {
        [] => Ok(()),
        names => Err(format!(
            "{} missing (needed by {}); install CUDA and cuDNN, or run tessera-install again",
            match names {
                [one] => format!("{one} is"),
                many => format!("{} are", many.join(", ")),
            },
            provider
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        )),
    }
}

/// The CUDA and cuDNN libraries a provider library names (its dynamic-section strings), e.g.
/// `libcudart.so.12`, `libcublasLt.so.12`, `libcudnn.so.9`: the names say which CUDA major the
/// wheel was built for.
pub fn needed_libraries(provider: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(provider) else {
        return Vec::new();
    };
    needed_in(&bytes)
}

fn needed_in(bytes: &[u8]) -> Vec<String> {
    const STEMS: [&str; 5] = ["cudart", "cublasLt", "cublas", "cudnn", "cufft"];
    let mut found: Vec<String> = Vec::new();
    for name in bytes
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'_'))
        .filter_map(|w| std::str::from_utf8(w).ok())
    {
        let stem_ok = |stem: &str| {
            if cfg!(windows) {
                name.strip_prefix(stem)
                    .and_then(|r| r.strip_suffix(".dll"))
                    .is_some_and(|r| {
                        r.starts_with("64_") && r[3..].chars().all(|c| c.is_ascii_digit())
                    })
            } else {
                name.strip_prefix("lib")
                    .and_then(|r| r.strip_prefix(stem))
                    .and_then(|r| r.strip_prefix(".so."))
                    .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
            }
        };
        if STEMS.iter().any(|s| stem_ok(s)) && !found.iter().any(|f| f == name) {
            found.push(name.to_owned());
        }
    }
    found
}

/// Whether `name` loads, by the system's search or from one of `dirs`.
fn loadable(name: &str, dirs: &[Option<PathBuf>]) -> bool {
    // SAFETY: these are the libraries ONNX Runtime's CUDA provider loads next anyway; loading
    // them runs their initialisers, which is what using CUDA means.
    let by_name = unsafe { libloading::Library::new(name) };
    if let Ok(lib) = by_name {
        // Kept loaded: the provider finds it when it loads its own dependencies.
        std::mem::forget(lib);
        return true;
    }
    dirs.iter().flatten().any(|dir| {
        let path = dir.join(name);
        // SAFETY: as above.
        path.is_file()
            && unsafe { libloading::Library::new(&path) }
                .map(std::mem::forget)
                .is_ok()
    })
}

/// Tries each provider on a scratch session builder: `Ok` when it registers.
pub(super) fn registers(runtime: &Runtime, ep: ExecutionProvider) -> Result<(), String> {
    let mut builder =
        ort::session::Session::builder(&runtime.env).map_err(|e| one_line(&e.to_string()))?;
    register(runtime, &mut builder, ep, &EpSettings::probe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_devices() {
        let parse = |s: &str| s.parse::<ExecutionProvider>();
        assert_eq!(parse("cpu"), Ok(ExecutionProvider::Cpu));
        assert_eq!(parse("CUDA"), Ok(ExecutionProvider::Cuda { device_id: 0 }));
        assert_eq!(
            parse("cuda:1"),
            Ok(ExecutionProvider::Cuda { device_id: 1 })
        );
        assert_eq!(
            parse("dml"),
            Ok(ExecutionProvider::DirectMl { adapter: None })
        );
        assert_eq!(
            parse("directml:1"),
            Ok(ExecutionProvider::DirectMl { adapter: Some(1) })
        );
        assert_eq!(parse("coreml"), Ok(ExecutionProvider::CoreMl));
        assert!(parse("cuda:x").unwrap_err().contains("must be a number"));
        assert!(parse("cpu:1").unwrap_err().contains("only cuda, directml"));
        assert!(
            parse("tensorrt")
                .unwrap_err()
                .contains("unknown execution provider")
        );
        assert_eq!(
            parse_list(&["cuda".into()]).unwrap(),
            [
                ExecutionProvider::Cuda { device_id: 0 },
                ExecutionProvider::Cpu
            ]
        );
        assert_eq!(
            ExecutionProvider::Cuda { device_id: 1 }.to_string(),
            "CUDA device 1"
        );
    }

    #[test]
    fn convolution_search_is_exhaustive_only_for_the_fixed_shape_networks() {
        for name in [
            "UNet+ControlNet tiny",
            "UNet juggernaut",
            "controlnet_body x.pth",
        ] {
            assert_eq!(
                ConvSearch::for_model(name),
                ConvSearch::Exhaustive,
                "{name}"
            );
        }
        for name in [
            "VAE decoder x",
            "VAE encoder x (Frozen GroupNorm statistics)",
            "ESRGAN RealESRGAN_x4plus.pth",
            "CLIP text encoder x",
        ] {
            assert_eq!(ConvSearch::for_model(name), ConvSearch::Heuristic, "{name}");
        }
    }

    #[test]
    fn cuda_options_follow_the_model_and_the_budget() {
        let unet = EpSettings {
            conv_search: ConvSearch::for_model("UNet+ControlNet x"),
            memory_limit: Some(5 << 30),
            ..EpSettings::probe()
        };
        let options = cuda_options(1, &unet);
        assert_eq!(
            options,
            CudaOptions {
                device_id: 1,
                conv_algo_search: "EXHAUSTIVE",
                arena_extend_strategy: "kSameAsRequested",
                gpu_mem_limit: Some(5 << 30),
            }
        );
        // What reaches ONNX Runtime: ort keeps the options as key/value strings.
        let passed = format!("{:?}", options.to_ort());
        for expected in [
            "\"device_id\": \"1\"",
            "\"cudnn_conv_algo_search\": \"EXHAUSTIVE\"",
            "\"arena_extend_strategy\": \"kSameAsRequested\"",
            &format!("\"gpu_mem_limit\": \"{}\"", 5u64 << 30),
        ] {
            assert!(passed.contains(expected), "{expected} not in {passed}");
        }
        let vae = cuda_options(
            0,
            &EpSettings {
                conv_search: ConvSearch::for_model("VAE decoder x"),
                memory_limit: None,
                ..EpSettings::probe()
            },
        );
        assert_eq!(vae.conv_algo_search, "HEURISTIC");
        let passed = format!("{:?}", vae.to_ort());
        assert!(
            passed.contains("\"HEURISTIC\"") && !passed.contains("gpu_mem_limit"),
            "{passed}"
        );
    }

    #[test]
    fn the_cuda_libraries_a_provider_needs_are_read_from_its_bytes() {
        let bytes = b"\0libcublasLt.so.12\0libcudart.so.12\0libcudnn.so.9\0libcudart.so.12\0libc.so.6\0libcudnn_ops.so.9\0";
        let needed = needed_in(bytes);
        if cfg!(windows) {
            assert!(needed.is_empty());
        } else {
            assert_eq!(
                needed,
                ["libcublasLt.so.12", "libcudart.so.12", "libcudnn.so.9"]
            );
        }
    }

    #[test]
    fn missing_cuda_libraries_are_named() {
        if cfg!(windows) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let provider = dir.path().join("libonnxruntime_providers_cuda.so");
        std::fs::write(
            &provider,
            b"\x7fELF\0libcudart.so.99\0libcudnn.so.99\0libc.so.6\0",
        )
        .unwrap();
        let error = check_libraries(&provider, &[Some(dir.path().to_owned())]).unwrap_err();
        assert_eq!(
            error,
            "libcudart.so.99, libcudnn.so.99 are missing (needed by libonnxruntime_providers_cuda.so); install CUDA and cuDNN, or run tessera-install again"
        );
        std::fs::write(&provider, b"libc.so.6\0").unwrap();
        assert!(
            check_libraries(&provider, &[]).is_ok(),
            "nothing CUDA is needed"
        );
    }

    #[test]
    fn directml_takes_the_high_performance_gpu_unless_an_adapter_is_named() {
        let chosen = format!("{:?}", directml(None));
        for expected in ["device_id: None", "HighPerformance", "device_filter: Gpu"] {
            assert!(chosen.contains(expected), "{expected} not in {chosen}");
        }
        let named = format!("{:?}", directml(Some(1)));
        assert!(named.contains("device_id: Some(1)"), "{named}");
    }

    #[test]
    fn coreml_compiles_ml_programs_into_the_compiled_cache() {
        let passed = format!(
            "{:?}",
            coreml(Some(Path::new("/data/cache/compiled/coreml")))
        );
        for expected in [
            "\"ModelFormat\": \"MLProgram\"",
            "\"MLComputeUnits\": \"ALL\"",
            "\"RequireStaticInputShapes\": \"false\"",
            "\"ModelCacheDirectory\": \"/data/cache/compiled/coreml\"",
        ] {
            assert!(passed.contains(expected), "{expected} not in {passed}");
        }
        assert!(!format!("{:?}", coreml(None)).contains("ModelCacheDirectory"));
    }
}
