//! The element type each network computes in, and how the configuration chooses it per device.
//!
//! Graphs keep f32 inputs and outputs whatever they compute in (`nets::builder::NetBuilder`'s
//! `input`/`output`, the one place where values cross between f32 and the compute type), so a precision is a property of a compiled graph only: callers
//! never see it. On the CPU execution provider f16 is no faster (ONNX Runtime's CPU kernels
//! widen it), so `auto` means f32 there, and on every device that computes on the host's CPU
//! (OpenVINO's CPU device, whose own precision hint decides its arithmetic:
//! `engine.cpu_precision_hint`); on a GPU-like accelerator (CUDA, DirectML, CoreML, OpenVINO's
//! GPU and NPU, WebGPU, TensorRT-RTX) `auto` means f16 for the UNet, the ControlNet, the text
//! encoder and ESRGAN. The VAE has its own
//! setting, f32 unless asked otherwise: SD 1.5's VAE overflows f16 in its decoder, so an f16 VAE
//! is checked after every pass and a pass with NaN or ∞ is done again in f32
//! (`pipeline/clarity/model_set.rs`).

use serde::{Deserialize, Serialize};

use crate::engine::ExecutionProvider;
use crate::weights::WeightType;

/// The precision of a compiled graph's weights and arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    /// How the weights are stored (and so the element type the graph computes in).
    pub fn weight_type(self) -> WeightType {
        match self {
            Precision::F32 => WeightType::F32,
            Precision::F16 => WeightType::F16,
        }
    }

    /// `""` or `"-fp16"`, for file and cache names.
    pub fn suffix(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => "-fp16",
        }
    }

    /// `""` or `" (fp16)"`, for session names (what `tessera status` lists).
    pub fn label_suffix(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => " (fp16)",
        }
    }

    /// `fp32` or `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::F16 => "fp16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the configuration (or a benchmark flag) asks for: a precision, or the device's best.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// f16 on an accelerator, f32 on the CPU.
    #[default]
    Auto,
    Fp32,
    Fp16,
}

impl PrecisionSetting {
    /// The precision on a device that is (`accelerated`) or is not a GPU-like accelerator.
    pub fn on(self, accelerated: bool) -> Precision {
        match self {
            PrecisionSetting::Fp32 => Precision::F32,
            PrecisionSetting::Fp16 => Precision::F16,
            PrecisionSetting::Auto if accelerated => Precision::F16,
            PrecisionSetting::Auto => Precision::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrecisionSetting::Auto => "auto",
            PrecisionSetting::Fp32 => "fp32",
            PrecisionSetting::Fp16 => "fp16",
        }
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<PrecisionSetting, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(PrecisionSetting::Auto),
            "fp32" | "f32" => Ok(PrecisionSetting::Fp32),
            "fp16" | "f16" => Ok(PrecisionSetting::Fp16),
            other => Err(format!("`{other}` is no precision (auto, fp32 or fp16)")),
        }
    }
}

/// Whether sessions on these providers run on a GPU-like accelerator: the first is one that
/// does not compute on the host's CPU.
pub fn accelerated(providers: &[ExecutionProvider]) -> bool {
    providers.first().is_some_and(|ep| !ep.on_host_cpu())
}

/// The precision of every network of a job, resolved for the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precisions {
    /// The UNet and the ControlNet (they share the residuals' type and speed).
    pub unet: Precision,
    pub text: Precision,
    pub upscaler: Precision,
    /// The VAE's encoder and decoder; f16 passes are checked and redone in f32 if they overflow.
    pub vae: Precision,
}

impl Precisions {
    /// `networks` for the UNet, ControlNet, text encoder and ESRGAN, `vae` for the VAE, on
    /// `providers` (best first).
    pub fn resolve(
        networks: PrecisionSetting,
        vae: PrecisionSetting,
        providers: &[ExecutionProvider],
    ) -> Precisions {
        let gpu = accelerated(providers);
        let p = networks.on(gpu);
        Precisions {
            unet: p,
            text: p,
            upscaler: p,
            vae: vae.on(gpu),
        }
    }

    /// Everything in f32 (tests, the CPU's `auto`).
    pub fn f32() -> Precisions {
        Precisions::default()
    }

    /// A few words for the device line of `tessera status` and the editors' status: `fp32`,
    /// `fp16, VAE fp32`.
    pub fn short(&self) -> String {
        let networks = [self.unet, self.text, self.upscaler];
        if networks.iter().all(|p| *p == self.vae) {
            self.vae.to_string()
        } else if networks.iter().all(|p| *p == self.unet) {
            format!("{}, VAE {}", self.unet, self.vae)
        } else {
            self.describe()
        }
    }

    /// One line for `tessera status` and `tessera doctor`, e.g. `fp16 (UNet, ControlNet, text
    /// encoder, ESRGAN), VAE fp32`.
    pub fn describe(&self) -> String {
        let all = [self.unet, self.text, self.upscaler, self.vae];
        if all.iter().all(|p| *p == self.unet) {
            return format!("{} (every network)", self.unet);
        }
        if self.unet == self.text && self.text == self.upscaler {
            return format!(
                "{} (UNet, ControlNet, text encoder, ESRGAN), VAE {}",
                self.unet, self.vae
            );
        }
        format!(
            "UNet and ControlNet {}, text encoder {}, ESRGAN {}, VAE {}",
            self.unet, self.text, self.upscaler, self.vae
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUDA: ExecutionProvider = ExecutionProvider::Cuda { device_id: 0 };

    #[test]
    fn auto_means_f16_on_an_accelerator_and_f32_on_the_cpu() {
        use PrecisionSetting::*;
        let cpu = Precisions::resolve(Auto, Fp32, &[ExecutionProvider::Cpu]);
        assert_eq!(cpu, Precisions::f32());
        assert_eq!(cpu.describe(), "fp32 (every network)");
        assert_eq!(cpu.short(), "fp32");
        let gpu = Precisions::resolve(Auto, Fp32, &[CUDA, ExecutionProvider::Cpu]);
        assert_eq!(
            (gpu.unet, gpu.text, gpu.upscaler, gpu.vae),
            (
                Precision::F16,
                Precision::F16,
                Precision::F16,
                Precision::F32
            )
        );
        assert_eq!(
            gpu.describe(),
            "fp16 (UNet, ControlNet, text encoder, ESRGAN), VAE fp32"
        );
        assert_eq!(gpu.short(), "fp16, VAE fp32");
        // An explicit setting wins over the device; the VAE follows its own.
        let forced = Precisions::resolve(Fp16, Fp16, &[ExecutionProvider::Cpu]);
        assert_eq!(forced.describe(), "fp16 (every network)");
        // OpenVINO's CPU device follows the CPU's policy, its GPU the accelerators'.
        let ov = |device: &str| {
            format!("openvino:{device}")
                .parse::<ExecutionProvider>()
                .unwrap()
        };
        assert_eq!(
            Precisions::resolve(Auto, Fp32, &[ov("cpu"), ExecutionProvider::Cpu]),
            Precisions::f32()
        );
        assert_eq!(
            Precisions::resolve(Auto, Fp32, &[ov("gpu"), ExecutionProvider::Cpu]).unet,
            Precision::F16
        );
        let vae_auto = Precisions::resolve(Fp32, Auto, &[CUDA]);
        assert_eq!(
            (vae_auto.unet, vae_auto.vae),
            (Precision::F32, Precision::F16)
        );
    }

    #[test]
    fn settings_parse_from_flags_and_toml() {
        assert_eq!("FP16".parse(), Ok(PrecisionSetting::Fp16));
        assert_eq!("auto".parse(), Ok(PrecisionSetting::Auto));
        assert!(
            "bf16"
                .parse::<PrecisionSetting>()
                .unwrap_err()
                .contains("bf16")
        );
        #[derive(Deserialize)]
        struct T {
            p: PrecisionSetting,
        }
        let t: T = toml::from_str("p = \"fp32\"").unwrap();
        assert_eq!(t.p, PrecisionSetting::Fp32);
        assert!(toml::from_str::<T>("p = \"half\"").is_err());
    }
}
