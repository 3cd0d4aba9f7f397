//! Stable Diffusion 1.5 weights (UNet, VAE, ControlNet) from every layout users have, under
//! one canonical naming: diffusers' module names.
//!
//! | what | layouts read |
//! |---|---|
//! | UNet | single-file LDM checkpoint (`model.diffusion_model.*`), diffusers folder (`unet/`), a diffusers UNet file |
//! | VAE | single-file checkpoint (`first_stage_model.*`), a standalone LDM VAE (`encoder.down.*`, like `vae-ft-mse-840000-ema-pruned.safetensors`), diffusers folder (`vae/`) or file |
//! | ControlNet | LDM (`control_model.*` or bare, `.pth` / `.safetensors`), diffusers (folder with `config.json`, or the weights file) |
//!
//! in `.safetensors` or torch zips (`.ckpt`, `.pth`, `.bin`), f32, f16 or bf16. Diffusers folders
//! are searched for `diffusion_pytorch_model{,.fp16}.{safetensors,bin}`. A file that is not an
//! SD 1.5 model of the wanted kind is refused with [`WeightsError::WrongKind`], which says what
//! it is instead (see [`detect`]). The text encoder (`cond_stage_model.transformer.*`,
//! `text_encoder/`) is read by the CLIP side.

pub mod detect;
pub mod ldm;

use std::path::{Path, PathBuf};

use super::{SourceFile, SourceTensor, TensorMap, WeightsError};
pub use detect::ModelKind;

/// What a diffusers `config.json` declares about an SD network that its tensor shapes cannot
/// tell; `None`: not declared (the network's config then takes SD 1.5's value). The network
/// configs (`nets::unet::UnetConfig`, …) are filled from the shapes and this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffusersConfig {
    /// Attention heads of the UNet/ControlNet transformers (`num_attention_heads`, or
    /// `attention_head_dim`, which holds the head count for SD 1.5).
    pub attention_heads: Option<usize>,
    /// GroupNorm groups everywhere (`norm_num_groups`).
    pub norm_groups: Option<usize>,
}

impl DiffusersConfig {
    /// Each field of `self`, or `fallback`'s where `self` does not declare it.
    pub fn or(self, fallback: DiffusersConfig) -> DiffusersConfig {
        DiffusersConfig {
            attention_heads: self.attention_heads.or(fallback.attention_heads),
            norm_groups: self.norm_groups.or(fallback.norm_groups),
        }
    }
}

/// Which key layout a network's weights came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// CompVis/A1111 names (single-file checkpoints, LDM VAEs, original ControlNets).
    Ldm,
    /// diffusers names (the canonical ones).
    Diffusers,
}

/// One network's weights: the file, its tensors under canonical names, and what a diffusers
/// `config.json` beside it said.
#[derive(Debug)]
pub struct NetWeights {
    pub source: SourceFile,
    pub tensors: TensorMap<SourceTensor>,
    pub layout: Layout,
    /// From `config.json` when the weights sit in a diffusers folder.
    pub config: Option<DiffusersConfig>,
    /// Tensors of the file that none of the networks it holds uses (a checkpoint's
    /// noise-schedule and EMA buffers and CLIP's `position_ids`, a VAE's `loss.*` and EMA
    /// counters, whatever beside a ControlNet's `control_model.*`): skipped; the loader of the
    /// file counts them in the log ([`NetWeights::log_unused`]).
    pub unused: Vec<String>,
}

impl NetWeights {
    /// What is declared about the network: each field of `explicit` if given, else
    /// `config.json`'s.
    pub fn declared(&self, explicit: Option<DiffusersConfig>) -> DiffusersConfig {
        explicit
            .unwrap_or_default()
            .or(self.config.unwrap_or_default())
    }

    /// Logs how many of the file's tensors no network uses, with the first few names.
    pub fn log_unused(&self, what: &str) {
        if self.unused.is_empty() {
            return;
        }
        const SHOWN: usize = 6;
        let mut names = self.unused[..self.unused.len().min(SHOWN)].join(", ");
        if self.unused.len() > SHOWN {
            names.push_str(", …");
        }
        tracing::info!(
            "{what} {}: {} of its {} tensors are used by no network and were skipped ({names})",
            self.source.path().display(),
            self.unused.len(),
            self.source.tensors().len(),
        );
    }
}

/// The tensors of a single-file LDM checkpoint outside its three networks (UNet
/// `model.diffusion_model.*`, VAE `first_stage_model.*`, text encoder
/// `cond_stage_model.transformer.*`), plus the VAE's training leftovers and CLIP's
/// `position_ids` buffer, which no graph needs.
fn checkpoint_unused(all: &TensorMap<SourceTensor>) -> Vec<String> {
    all.keys()
        .filter(|k| {
            let used = k.starts_with("model.diffusion_model.")
                || (k.starts_with("first_stage_model.")
                    && !vae_leftover(&k["first_stage_model.".len()..]))
                || (k.starts_with("cond_stage_model.transformer.")
                    && !k.ends_with(".position_ids"));
            !used
        })
        .map(str::to_owned)
        .collect()
}

/// The tensors of a standalone LDM VAE that are not the network: the training loss's
/// (`loss.*`, in unpruned files) and LitEma's counters (`model_ema.*`), which A1111 also drops.
fn vae_leftover(key: &str) -> bool {
    key.starts_with("loss.") || key.starts_with("model_ema.")
}

/// The UNet of a checkpoint, a diffusers pipeline folder, a diffusers `unet/` folder or file.
pub fn unet(path: &Path) -> Result<NetWeights, WeightsError> {
    let (file, config) = resolve(path, "unet")?;
    let source = SourceFile::open(&file)?;
    let wrong = |found| wrong_kind(&file, "an SD 1.5 checkpoint or UNet", found);
    let kind = detect::classify(source.tensors());
    if kind != ModelKind::Sd15 {
        return Err(wrong(kind));
    }
    let all = source.tensors();
    let mut unused = Vec::new();
    let (tensors, layout) = if let Some(ldm) = strip(all, "model.diffusion_model.") {
        unused = checkpoint_unused(all);
        (
            ldm::unet(&ldm).map_err(|k| unexpected(&file, "UNet", &k))?,
            Layout::Ldm,
        )
    } else if all.contains("input_blocks.0.0.weight") {
        (
            ldm::unet(all).map_err(|k| unexpected(&file, "UNet", &k))?,
            Layout::Ldm,
        )
    } else if all.contains("conv_in.weight") {
        (all.clone(), Layout::Diffusers)
    } else {
        return Err(wrong(ModelKind::Unknown));
    };
    if let Some(kind) = detect::unet_kind(&tensors, "").filter(|k| *k != ModelKind::Sd15) {
        return Err(wrong(kind));
    }
    Ok(NetWeights {
        source,
        tensors,
        layout,
        config: config.as_deref().map(read_config).transpose()?,
        unused,
    })
}

/// The VAE of a checkpoint, a standalone VAE file (LDM or diffusers names), or a diffusers
/// pipeline / `vae/` folder.
pub fn vae(path: &Path) -> Result<NetWeights, WeightsError> {
    let (file, config) = resolve(path, "vae")?;
    let source = SourceFile::open(&file)?;
    let all = source.tensors();
    let wrong = |found| wrong_kind(&file, "an SD 1.5 checkpoint or VAE", found);
    let mut unused = Vec::new();
    let (tensors, layout) = if let Some(ldm) = strip(all, "first_stage_model.") {
        unused = checkpoint_unused(all);
        let kind = detect::classify(all);
        if kind != ModelKind::Sd15 && kind != ModelKind::Vae {
            return Err(wrong(kind));
        }
        (
            ldm::vae(&ldm).map_err(|k| unexpected(&file, "VAE", &k))?,
            Layout::Ldm,
        )
    } else if all.keys().any(|k| k.starts_with("encoder.down.")) {
        unused = all
            .keys()
            .filter(|k| vae_leftover(k))
            .map(str::to_owned)
            .collect();
        (
            ldm::vae(all).map_err(|k| unexpected(&file, "VAE", &k))?,
            Layout::Ldm,
        )
    } else if all.keys().any(|k| k.starts_with("encoder.down_blocks.")) {
        (diffusers_vae(all, &file)?, Layout::Diffusers)
    } else if detect::classify(all) == ModelKind::Sd15 {
        return Err(WeightsError::UnknownLayout {
            path: file.clone(),
            network: "VAE",
            found: "this checkpoint has no VAE (`first_stage_model.*`); give one separately".into(),
        });
    } else {
        return Err(wrong(detect::classify(all)));
    };
    Ok(NetWeights {
        source,
        tensors,
        layout,
        config: config.as_deref().map(read_config).transpose()?,
        unused,
    })
}

/// A ControlNet: LDM (`control_model.*` or bare) or diffusers, a file or a diffusers folder.
pub fn controlnet(path: &Path) -> Result<NetWeights, WeightsError> {
    let (file, config) = resolve(path, "controlnet")?;
    let source = SourceFile::open(&file)?;
    let all = source.tensors();
    let wrong = |found| wrong_kind(&file, "an SD 1.5 ControlNet", found);
    let kind = detect::classify(all);
    if kind != ModelKind::ControlNet {
        return Err(wrong(kind));
    }
    let mut unused = Vec::new();
    let (tensors, layout) = if let Some(ldm) = strip(all, "control_model.") {
        // ControlNet 1.0's files hold the whole ControlLDM: the SD model beside it is unused.
        unused = all
            .keys()
            .filter(|k| !k.starts_with("control_model."))
            .map(str::to_owned)
            .collect();
        (
            ldm::unet(&ldm).map_err(|k| unexpected(&file, "ControlNet", &k))?,
            Layout::Ldm,
        )
    } else if all.contains("input_hint_block.0.weight") {
        (
            ldm::unet(all).map_err(|k| unexpected(&file, "ControlNet", &k))?,
            Layout::Ldm,
        )
    } else {
        (all.clone(), Layout::Diffusers)
    };
    if let Some(kind) = detect::unet_kind(&tensors, "").filter(|k| *k != ModelKind::Sd15) {
        return Err(wrong(kind));
    }
    Ok(NetWeights {
        source,
        tensors,
        layout,
        config: config.as_deref().map(read_config).transpose()?,
        unused,
    })
}

/// The weights file and its `config.json` for `path`: the file itself, or the diffusers folder
/// (pipeline root with a `component/` sub-folder, or the component folder).
fn resolve(path: &Path, component: &str) -> Result<(PathBuf, Option<PathBuf>), WeightsError> {
    if !path.is_dir() {
        // Only a diffusers weights file has its config beside it.
        let diffusers = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("diffusion_pytorch_model"));
        let config = path.with_file_name("config.json");
        return Ok((
            path.to_owned(),
            (diffusers && config.is_file()).then_some(config),
        ));
    }
    let folder = if path.join(component).is_dir() {
        path.join(component)
    } else {
        path.to_owned()
    };
    let names = [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
    ];
    let file = names.iter().map(|n| folder.join(n)).find(|p| p.is_file());
    let Some(file) = file else {
        return Err(WeightsError::Io {
            path: folder.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {} in this folder", names.join(" / ")),
            ),
        });
    };
    let config = folder.join("config.json");
    Ok((file, config.is_file().then_some(config)))
}

/// What a diffusers `config.json` declares that shapes cannot tell.
fn read_config(path: &Path) -> Result<DiffusersConfig, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|e| WeightsError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightsError::corrupt(path, format!("not JSON: {e}")))?;
    let number = |v: &serde_json::Value| -> Result<Option<usize>, WeightsError> {
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Number(n) => Ok(n.as_u64().map(|n| n as usize)),
            serde_json::Value::Array(items) => {
                let first = items.first().and_then(|v| v.as_u64());
                if items.iter().all(|v| v.as_u64() == first) {
                    Ok(first.map(|n| n as usize))
                } else {
                    Err(WeightsError::Unsupported {
                        path: path.to_owned(),
                        reason: "a different number of attention heads per level".into(),
                    })
                }
            }
            _ => Ok(None),
        }
    };
    // diffusers names SD 1.5's head count `attention_head_dim` (a known misnomer);
    // `num_attention_heads` wins when present.
    let heads = match number(&json["num_attention_heads"])? {
        Some(h) => Some(h),
        None => number(&json["attention_head_dim"])?,
    };
    let groups = number(&json["norm_num_groups"])?;
    Ok(DiffusersConfig {
        attention_heads: heads,
        norm_groups: groups,
    })
}

/// Old diffusers VAEs name the mid-block attention `query`/`key`/`value`/`proj_attn`, some
/// with 1×1-convolution shapes; both become the current names and Linear shapes.
fn diffusers_vae(
    all: &TensorMap<SourceTensor>,
    file: &Path,
) -> Result<TensorMap<SourceTensor>, WeightsError> {
    let mut out = TensorMap::new();
    for (key, t) in all.iter() {
        let name = key
            .replace(".attentions.0.query.", ".attentions.0.to_q.")
            .replace(".attentions.0.key.", ".attentions.0.to_k.")
            .replace(".attentions.0.value.", ".attentions.0.to_v.")
            .replace(".attentions.0.proj_attn.", ".attentions.0.to_out.0.");
        let mut t = t.clone();
        if name.contains(".attentions.0.to_") && name.ends_with(".weight") && t.shape.len() == 4 {
            t = t.squeezed(2).ok_or_else(|| unexpected(file, "VAE", key))?;
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// The tensors under `prefix`, with the prefix removed; `None` when there are none.
fn strip(all: &TensorMap<SourceTensor>, prefix: &str) -> Option<TensorMap<SourceTensor>> {
    let map: TensorMap<SourceTensor> = all
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_owned(), t.clone())))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn wrong_kind(path: &Path, expected: &'static str, found: ModelKind) -> WeightsError {
    WeightsError::WrongKind {
        path: path.to_owned(),
        expected,
        found,
    }
}

fn unexpected(path: &Path, network: &'static str, key: &str) -> WeightsError {
    WeightsError::UnknownLayout {
        path: path.to_owned(),
        network,
        found: format!("unexpected tensor `{key}`"),
    }
}
