//! `models export-onnx`: SD 1.5 networks compiled to ONNX files.

use std::path::PathBuf;
use std::process::ExitCode;

use super::ExportArgs;
use super::launch::Target;
use crate::nets::export::{ExportOptions, export};
use crate::nets::sd::Precision;
use crate::store;
use crate::weights::sd::DiffusersConfig;

pub fn export_onnx(target: &Target, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = store::DataDir::open(&target.data_dir.path)?;
    let loras = args
        .loras
        .iter()
        .map(|s| parse_lora(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = match (args.attention_heads, args.norm_groups) {
        (None, None) => None,
        (attention_heads, norm_groups) => Some(DiffusersConfig {
            attention_heads,
            norm_groups,
        }),
    };
    let options = ExportOptions {
        checkpoint: args.checkpoint.clone(),
        vae: args.vae.clone(),
        controlnet: args.controlnet.clone(),
        loras,
        embeddings: args.embeddings.clone(),
        precision: if args.fp16 {
            Precision::F16
        } else {
            Precision::F32
        },
        config,
        skip_text_encoder: args.no_text_encoder,
        out_dir: args.out_dir.clone(),
        cache_dir: dir.cache(),
    };
    let written = export(&options)?;
    for file in written {
        println!("{}", file.display());
    }
    if args.no_text_encoder {
        println!("text encoder left out (--no-text-encoder)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `PATH:WEIGHT`, or just `PATH` (weight 1). The weight follows the last `:`, so Windows
/// drive letters stay part of the path.
fn parse_lora(spec: &str) -> anyhow::Result<(PathBuf, f32)> {
    if let Some((path, weight)) = spec.rsplit_once(':')
        && let Ok(w) = weight.parse::<f32>()
        && !path.is_empty()
    {
        return Ok((PathBuf::from(path), w));
    }
    Ok((PathBuf::from(spec), 1.0))
}
