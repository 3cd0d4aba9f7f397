//! Execution providers: names in configuration (`cuda`, `cuda:1`, `directml`, `coreml`, `cpu`),
//! registration on a session, and the probe that tells which of them this ONNX Runtime library
//! can actually use here. An accelerator that cannot be registered (a CPU-only library, a missing
//! CUDA or cuDNN, no DirectX 12 device) is dropped with its reason, and the CPU takes over.

use super::ExecutionProvider;
use super::runtime::{Runtime, one_line};
use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(text: &str) -> Result<ExecutionProvider, String> {
        let (name, device) = match text.split_once(':') {
            Some((name, device)) => (name, Some(device)),
            None => (text, None),
        };
        let device_id = match device {
            Some(d) => d
                .parse::<i32>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| format!("{text:?}: the device must be a number, e.g. cuda:1"))?,
            None => 0,
        };
        let provider = match name.to_ascii_lowercase().as_str() {
            "cpu" => ExecutionProvider::Cpu,
            "cuda" => ExecutionProvider::Cuda { device_id },
            "directml" | "dml" => ExecutionProvider::DirectMl { device_id },
            "coreml" => ExecutionProvider::CoreMl,
            _ => {
                return Err(format!(
                    "unknown execution provider {text:?} (one of cpu, cuda, directml, coreml)"
                ));
            }
        };
        if device.is_some()
            && matches!(provider, ExecutionProvider::Cpu | ExecutionProvider::CoreMl)
        {
            return Err(format!(
                "{text:?}: only cuda and directml take a device number"
            ));
        }
        Ok(provider)
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecutionProvider::Cuda { device_id } | ExecutionProvider::DirectMl { device_id }
                if *device_id != 0 =>
            {
                write!(f, "{} device {device_id}", self.name())
            }
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

/// Adds `ep` to a session under construction.
pub(super) fn register(builder: &mut SessionBuilder, ep: ExecutionProvider) -> Result<(), String> {
    let result = match ep {
        ExecutionProvider::Cpu => Ok(()),
        ExecutionProvider::Cuda { device_id } => ort::ep::CUDA::default()
            .with_device_id(device_id)
            .register(builder),
        ExecutionProvider::DirectMl { device_id } => ort::ep::DirectML::default()
            .with_device_id(device_id)
            .register(builder),
        ExecutionProvider::CoreMl => ort::ep::CoreML::default().register(builder),
    };
    result.map_err(|e| one_line(&e.to_string()))
}

/// Tries each provider on a scratch session builder: `Ok` when it registers.
pub(super) fn probe(
    runtime: &Runtime,
    list: &[ExecutionProvider],
) -> Vec<(ExecutionProvider, Result<(), String>)> {
    list.iter()
        .map(|&ep| {
            let outcome = Session::builder(&runtime.env)
                .map_err(|e| one_line(&e.to_string()))
                .and_then(|mut builder| register(&mut builder, ep));
            (ep, outcome)
        })
        .collect()
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
            Ok(ExecutionProvider::DirectMl { device_id: 0 })
        );
        assert_eq!(parse("coreml"), Ok(ExecutionProvider::CoreMl));
        assert!(parse("cuda:x").unwrap_err().contains("must be a number"));
        assert!(
            parse("cpu:1")
                .unwrap_err()
                .contains("only cuda and directml")
        );
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
}
