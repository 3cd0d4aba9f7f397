//! Job parameters of the diffusion pipeline: their ranges (checked before a job is queued,
//! with a sentence naming the field), and the models they name, resolved in the data
//! directory with a "how to get it" for missing defaults.

use std::ops::RangeInclusive;
use tessera_protocol::params::limits;
use tessera_protocol::{ErrorInfo, ErrorKind, JobParams, ModelKind, Preset};

use crate::config::Config;
use crate::store::{DataDir, ModelFile, RegistryError, defaults, registry};

/// Longest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 10_000;
/// Most LoRAs one job may apply.
pub const MAX_LORAS: usize = 16;

fn invalid(message: String) -> ErrorInfo {
    ErrorInfo::new(ErrorKind::InvalidParams, message)
}

fn range(name: &str, value: f32, limits: RangeInclusive<f32>) -> Result<(), ErrorInfo> {
    if limits.contains(&value) {
        Ok(())
    } else {
        let (low, high) = limits.into_inner();
        Err(invalid(format!(
            "{name} must be between {low} and {high} (got {value})"
        )))
    }
}

/// Checks every diffusion parameter of a job that diffuses (scale is checked for every job).
pub fn validate(params: &JobParams) -> Result<(), ErrorInfo> {
    if params.preset == Preset::Upscaler {
        return Ok(());
    }
    range("creativity", params.creativity, limits::CREATIVITY)?;
    range("resemblance", params.resemblance, limits::RESEMBLANCE)?;
    range("dynamic", params.dynamic, limits::DYNAMIC)?;
    range("decay", params.decay, limits::DECAY)?;
    range(
        "multistep_factor",
        params.multistep_factor,
        limits::MULTISTEP_FACTOR,
    )?;
    range("sharpen", params.sharpen, limits::SHARPEN)?;
    let (tile_low, tile_high) = limits::TILE.into_inner();
    let multiple = limits::TILE_MULTIPLE;
    for (name, tile) in [
        ("tile_width", params.tile_width),
        ("tile_height", params.tile_height),
    ] {
        if !limits::TILE.contains(&tile) || tile % multiple != 0 {
            return Err(invalid(format!(
                "{name} must be a multiple of {multiple} between {tile_low} and {tile_high} \
                 latents (got {tile})"
            )));
        }
    }
    if !limits::STEPS.contains(&params.steps) {
        let (low, high) = limits::STEPS.into_inner();
        return Err(invalid(format!(
            "steps must be between {low} and {high} (got {})",
            params.steps
        )));
    }
    for (name, text) in [
        ("prompt", &params.prompt),
        ("negative_prompt", &params.negative_prompt),
    ] {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(invalid(format!(
                "{name} is {} bytes long; at most {MAX_PROMPT_BYTES} are accepted",
                text.len()
            )));
        }
    }
    if params.loras.len() > MAX_LORAS {
        return Err(invalid(format!(
            "{} LoRAs were given; at most {MAX_LORAS} are accepted",
            params.loras.len()
        )));
    }
    for lora in &params.loras {
        if lora.name.trim().is_empty() {
            return Err(invalid("a LoRA has an empty name".into()));
        }
        range(
            &format!("the weight of LoRA {}", lora.name),
            lora.weight,
            limits::LORA_WEIGHT,
        )?;
    }
    Ok(())
}

/// The error for a model that cannot be found, with how to get it.
pub fn model_error(error: RegistryError) -> ErrorInfo {
    match error {
        RegistryError::NotFound {
            kind,
            ref name,
            ref folder,
            ..
        } => {
            let message = match defaults::how_to_get(kind, name, folder) {
                Some(how) => format!("{error}; {how}"),
                None => error.to_string(),
            };
            ErrorInfo::new(ErrorKind::ModelNotFound, message)
        }
        RegistryError::Io { .. } => ErrorInfo::new(ErrorKind::Io, error.to_string()),
    }
}

/// A model named by the job, or the configured default, or the first one of its kind. A
/// missing default names the default's file in the error.
pub fn resolve(
    dir: &DataDir,
    kind: ModelKind,
    named: Option<&str>,
    default: &str,
) -> Result<ModelFile, ErrorInfo> {
    let found = match named {
        Some(name) => registry::resolve(dir, kind, name),
        None => registry::resolve_default(dir, kind, default).map_err(|e| match e {
            RegistryError::NotFound {
                kind,
                folder,
                available,
                ..
            } => RegistryError::NotFound {
                kind,
                name: default.to_owned(),
                folder,
                available,
            },
            other => other,
        }),
    };
    found.map_err(model_error)
}

/// The VAE name that means the checkpoint's own, baked-in VAE (A1111's "None"): as a job's
/// `vae`, the CLI's `--vae` or the configuration's `diffusion.default_vae`.
pub const CHECKPOINT_VAE: &str = "checkpoint";

/// How to do without a missing VAE, appended to its not-found error.
const CHECKPOINT_VAE_HINT: &str = "or use the checkpoint's own VAE: `--vae checkpoint` \
     (`vae = \"checkpoint\"` in a job, `diffusion.default_vae = \"checkpoint\"` in config.toml)";

/// The SD model files a diffusion job needs besides its LoRAs ([`lora_files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdModels {
    pub checkpoint: ModelFile,
    pub vae: ModelFile,
    pub controlnet: ModelFile,
}

/// Resolves the checkpoint, VAE and ControlNet of a diffusing job.
pub fn resolve_sd(
    dir: &DataDir,
    config: &Config,
    params: &JobParams,
) -> Result<SdModels, ErrorInfo> {
    let d = &config.diffusion;
    let checkpoint = resolve(
        dir,
        ModelKind::Checkpoint,
        params.checkpoint.as_deref(),
        &d.default_checkpoint,
    )?;
    let wanted = params.vae.as_deref().unwrap_or(&d.default_vae);
    let vae = if wanted.eq_ignore_ascii_case(CHECKPOINT_VAE) {
        ModelFile {
            kind: ModelKind::Vae,
            name: CHECKPOINT_VAE.to_owned(),
            ..checkpoint.clone()
        }
    } else {
        resolve(dir, ModelKind::Vae, params.vae.as_deref(), &d.default_vae).map_err(|mut e| {
            if e.kind == ErrorKind::ModelNotFound {
                e.message = format!("{}; {CHECKPOINT_VAE_HINT}", e.message);
            }
            e
        })?
    };
    let controlnet = resolve(
        dir,
        ModelKind::ControlNet,
        params.controlnet.as_deref(),
        &d.default_controlnet,
    )?;
    Ok(SdModels {
        checkpoint,
        vae,
        controlnet,
    })
}

/// Every LoRA a job applies: the positive prompt's `<lora:name:te:unet>` tags (A1111 reads
/// them from the prompt, not the negative prompt), then the job's `loras` (one weight for
/// both), as (file, text-encoder multiplier, UNet multiplier).
pub fn lora_files(
    dir: &DataDir,
    params: &JobParams,
) -> Result<Vec<(ModelFile, f64, f64)>, ErrorInfo> {
    let (_, tags) = crate::pipeline::prompt::syntax::extract_networks(&params.prompt)
        .map_err(|e| invalid(format!("prompt: {e}")))?;
    let mut out = Vec::new();
    for tag in tags {
        let file = registry::resolve(dir, ModelKind::Lora, &tag.name).map_err(model_error)?;
        out.push((file, tag.te, tag.unet));
    }
    for lora in &params.loras {
        let file = registry::resolve(dir, ModelKind::Lora, &lora.name).map_err(model_error)?;
        let w = f64::from(lora.weight);
        out.push((file, w, w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::LoraWeight;

    #[test]
    fn defaults_of_both_presets_are_valid() {
        assert!(validate(&JobParams::default()).is_ok());
        assert!(validate(&JobParams::refiners()).is_ok());
    }

    #[test]
    fn each_range_names_its_field() {
        let bad = [
            (
                JobParams {
                    creativity: 1.5,
                    ..JobParams::default()
                },
                "creativity",
            ),
            (
                JobParams {
                    resemblance: -0.1,
                    ..JobParams::default()
                },
                "resemblance",
            ),
            (
                JobParams {
                    dynamic: 0.5,
                    ..JobParams::default()
                },
                "dynamic",
            ),
            (
                JobParams {
                    decay: f32::NAN,
                    ..JobParams::default()
                },
                "decay",
            ),
            (
                JobParams {
                    multistep_factor: 2.5,
                    ..JobParams::default()
                },
                "multistep_factor",
            ),
            (
                JobParams {
                    sharpen: 11.0,
                    ..JobParams::default()
                },
                "sharpen",
            ),
            (
                JobParams {
                    tile_width: 100,
                    ..JobParams::default()
                },
                "tile_width",
            ),
            (
                JobParams {
                    tile_height: 8,
                    ..JobParams::default()
                },
                "tile_height",
            ),
            (
                JobParams {
                    steps: 0,
                    ..JobParams::default()
                },
                "steps",
            ),
            (
                JobParams {
                    prompt: "x".repeat(10_001),
                    ..JobParams::default()
                },
                "prompt",
            ),
            (
                JobParams {
                    loras: vec![LoraWeight {
                        name: "a".into(),
                        weight: 20.0,
                    }],
                    ..JobParams::default()
                },
                "LoRA a",
            ),
        ];
        for (params, field) in bad {
            let e = validate(&params).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParams);
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
        // The upscaler alone ignores the diffusion fields.
        let upscale = JobParams {
            creativity: 7.0,
            ..JobParams::upscaler_only(2.0, None)
        };
        assert!(validate(&upscale).is_ok());
    }

    #[test]
    fn loras_come_from_the_prompt_tags_then_the_list() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        let params = JobParams {
            loras: vec![LoraWeight {
                name: "extra".into(),
                weight: 0.25,
            }],
            ..JobParams::default()
        };
        let e = lora_files(&dir, &params).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelNotFound);
        assert!(
            e.message.contains("more_details.safetensors"),
            "{}",
            e.message
        );
        for name in ["more_details", "SDXLrender_v2.0", "extra"] {
            std::fs::write(
                dir.models(ModelKind::Lora)
                    .join(format!("{name}.safetensors")),
                b"x",
            )
            .unwrap();
        }
        let found: Vec<(String, f64, f64)> = lora_files(&dir, &params)
            .unwrap()
            .into_iter()
            .map(|(f, te, unet)| (f.name, te, unet))
            .collect();
        assert_eq!(
            found,
            [
                ("more_details".to_owned(), 0.5, 0.5),
                ("SDXLrender_v2.0".to_owned(), 1.0, 1.0),
                ("extra".to_owned(), 0.25, 0.25)
            ]
        );
        let bad = JobParams {
            prompt: "<lora:x:heavy>".into(),
            ..JobParams::default()
        };
        assert_eq!(
            lora_files(&dir, &bad).unwrap_err().kind,
            ErrorKind::InvalidParams
        );
    }

    #[test]
    fn a_missing_default_model_names_its_file_and_the_installer() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        let e = resolve_sd(&dir, &Config::default(), &JobParams::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelNotFound);
        assert!(
            e.message.contains("juggernaut_reborn.safetensors")
                && e.message.contains("tessera-install"),
            "{}",
            e.message
        );
        // A named model that is missing lists what there is.
        std::fs::write(
            dir.models(ModelKind::Checkpoint).join("mine.safetensors"),
            b"x",
        )
        .unwrap();
        let named = JobParams {
            checkpoint: Some("other".into()),
            ..JobParams::default()
        };
        let e = resolve_sd(&dir, &Config::default(), &named).unwrap_err();
        assert!(e.message.contains("available: mine"), "{}", e.message);
        // Without the default, the first checkpoint is used; the VAE is missing next, and the
        // error says how to do without it.
        let e = resolve_sd(&dir, &Config::default(), &JobParams::default()).unwrap_err();
        assert!(
            e.message
                .contains("vae-ft-mse-840000-ema-pruned.safetensors")
                && e.message.contains("--vae checkpoint")
                && e.message.contains("default_vae = \"checkpoint\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_checkpoint_vae_is_the_checkpoint_file() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        for (kind, name) in [
            (ModelKind::Checkpoint, "mine.safetensors"),
            (ModelKind::ControlNet, "tile.safetensors"),
        ] {
            std::fs::write(dir.models(kind).join(name), b"x").unwrap();
        }
        let checkpoint = dir.models(ModelKind::Checkpoint).join("mine.safetensors");
        // From the job (any case) and from the configuration, with no VAE in models/vae/.
        let job = JobParams {
            vae: Some("Checkpoint".into()),
            ..JobParams::default()
        };
        let models = resolve_sd(&dir, &Config::default(), &job).unwrap();
        assert_eq!(models.vae.path, checkpoint);
        assert_eq!(models.vae.kind, ModelKind::Vae);
        let mut config = Config::default();
        config.diffusion.default_vae = CHECKPOINT_VAE.into();
        let models = resolve_sd(&dir, &config, &JobParams::default()).unwrap();
        assert_eq!(models.vae.path, checkpoint);
        // A VAE named by the job still wins over the configured "checkpoint".
        std::fs::write(dir.models(ModelKind::Vae).join("ft.safetensors"), b"x").unwrap();
        let named = JobParams {
            vae: Some("ft".into()),
            ..JobParams::default()
        };
        let models = resolve_sd(&dir, &config, &named).unwrap();
        assert_eq!(models.vae.name, "ft");
    }
}
