//! LoRA files fused into canonical weights: W' = W + Σ m·(alpha/rank)·up·down.
//!
//! Key formats read (per module; `.weight` tensors, `alpha` optional):
//!
//! | format | UNet | text encoder | alpha |
//! |---|---|---|---|
//! | kohya-ss / A1111 | `lora_unet_<module with _>.lora_down/.lora_up` | `lora_te_<module with _>…` | `<name>.alpha` tensor |
//! | diffusers / PEFT | `unet.<module>.lora_A/.lora_B` | `text_encoder.<module>.lora_A/.lora_B` | `lora_adapter_metadata` JSON (`unet.lora_alpha`, `unet.alpha_pattern`, …) |
//! | old diffusers attention processors | `unet.<…>.processor.to_q_lora.down/.up` | `text_encoder.<module>.lora_linear_layer.down/.up` | — |
//!
//! Modules are UNet modules in diffusers naming and text-encoder modules in Hugging Face CLIP
//! naming (`text_model.encoder.layers.{i}.self_attn.q_proj`, …), the canonical names of
//! `nets::unet` and `nets::clip`; kohya's underscored names are matched against the canonical
//! module names with `.` read as `_` (or, for UNet keys in LDM block numbering such as
//! `lora_unet_input_blocks_4_1_proj_in`, translated first). Convolution LoRAs (kohya's LoCon on 3×3 ResNet convs:
//! down `[r, in, 3, 3]`, up `[out, r, 1, 1]`) and 1×1 LoRAs on Linear layers are fused through
//! the same product, reshaped to the weight. Without alpha the scale is 1 (alpha = rank).
//!
//! Every LoRA key must land on a layer of its network: one that does not is
//! [`WeightsError::LoraMismatch`], naming the key. LyCORIS LoHa/LoKr/Tucker factors, DoRA and
//! SDXL LoRAs are refused with a reason.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{Patch, SourceFile, SourceTensor, TensorMap, WeightsError};

/// Which network a LoRA module patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    Unet,
    TextEncoder,
}

impl LoraTarget {
    fn describe(self) -> &'static str {
        match self {
            LoraTarget::Unet => "UNet",
            LoraTarget::TextEncoder => "text encoder",
        }
    }
}

/// How a module names its target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ModuleName {
    /// kohya: dots replaced by underscores.
    Underscored(String),
    /// diffusers/PEFT: the canonical module path.
    Dotted(String),
}

/// One low-rank pair of a LoRA file.
#[derive(Clone, Debug)]
struct Module {
    /// The file's key of the down tensor (for errors).
    key: String,
    target: LoraTarget,
    name: ModuleName,
    down: SourceTensor,
    up: SourceTensor,
    alpha: Option<f32>,
}

/// An opened LoRA file.
#[derive(Debug)]
pub struct Lora {
    source: SourceFile,
    modules: Vec<Module>,
}

impl Lora {
    /// Reads the keys (and the alphas) of `path`.
    pub fn open(path: &Path) -> Result<Lora, WeightsError> {
        let source = SourceFile::open(path)?;
        let tensors = source.tensors();
        let unsupported = |reason: String| WeightsError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        if let Some(k) = tensors
            .keys()
            .find(|k| k.contains(".hada_") || k.contains(".lokr_") || k.contains("lora_mid"))
        {
            return Err(unsupported(format!(
                "LyCORIS LoHa/LoKr/Tucker factors (`{k}`) are not supported, only plain LoRA and LoCon"
            )));
        }
        if let Some(k) = tensors.keys().find(|k| k.contains("dora_scale")) {
            return Err(unsupported(format!("DoRA (`{k}`) is not supported")));
        }
        if let Some(k) = tensors
            .keys()
            .find(|k| k.starts_with("lora_te1_") || k.starts_with("lora_te2_"))
        {
            tracing::debug!(key = k, "SDXL LoRA key");
            return Err(WeightsError::WrongKind {
                path: path.to_owned(),
                expected: "an SD 1.5 LoRA",
                found: super::sd::ModelKind::Sdxl,
            });
        }
        let metadata = adapter_metadata(&source)?;
        let mut reader = source.reader()?;
        let mut modules = Vec::new();
        let mut used = std::collections::HashSet::new();
        for (key, down) in tensors.iter() {
            let Some((target, name, up_key, alpha_key)) = parse_down_key(key) else {
                continue;
            };
            let up = tensors.get(&up_key).ok_or_else(|| WeightsError::Corrupt {
                path: path.to_owned(),
                reason: format!("`{key}` has no `{up_key}`"),
            })?;
            let alpha = match alpha_key.as_deref().and_then(|k| tensors.get(k)) {
                Some(t) => Some(reader.read_f32(t)?.first().copied().unwrap_or(0.0)),
                None => metadata.alpha(target, &name),
            };
            used.insert(key.to_owned());
            used.insert(up_key);
            used.extend(alpha_key);
            modules.push(Module {
                key: key.to_owned(),
                target,
                name,
                down: down.clone(),
                up: up.clone(),
                alpha,
            });
        }
        if let Some(stray) = tensors.keys().find(|k| !used.contains(*k)) {
            return Err(WeightsError::UnknownLayout {
                path: path.to_owned(),
                network: "LoRA",
                found: format!("unexpected tensor `{stray}`"),
            });
        }
        if modules.is_empty() {
            return Err(WeightsError::WrongKind {
                path: path.to_owned(),
                expected: "a LoRA",
                found: super::sd::detect::classify(tensors),
            });
        }
        Ok(Lora { source, modules })
    }

    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// How many low-rank pairs patch `target`.
    pub fn module_count(&self, target: LoraTarget) -> usize {
        self.modules.iter().filter(|m| m.target == target).count()
    }
}

/// `(target, module, up key, alpha key)` for the down tensor `key`, or `None` when `key` is
/// not a down tensor.
fn parse_down_key(key: &str) -> Option<(LoraTarget, ModuleName, String, Option<String>)> {
    if let Some(base) = key.strip_suffix(".lora_down.weight") {
        let (target, name) = if let Some(n) = base.strip_prefix("lora_unet_") {
            (LoraTarget::Unet, n)
        } else if let Some(n) = base.strip_prefix("lora_te_") {
            (LoraTarget::TextEncoder, n)
        } else {
            return None;
        };
        return Some((
            target,
            ModuleName::Underscored(name.to_owned()),
            format!("{base}.lora_up.weight"),
            Some(format!("{base}.alpha")),
        ));
    }
    let (target, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (LoraTarget::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (LoraTarget::TextEncoder, r)
    } else {
        return None;
    };
    let forms = [
        (".lora_A.weight", ".lora_B.weight"),
        (".lora.down.weight", ".lora.up.weight"),
        (
            ".lora_linear_layer.down.weight",
            ".lora_linear_layer.up.weight",
        ),
        ("_lora.down.weight", "_lora.up.weight"),
    ];
    for (down, up) in forms {
        if let Some(module) = rest.strip_suffix(down) {
            let base = &key[..key.len() - down.len()];
            // Old attention-processor names: `attn1.processor.to_q_lora` is `attn1.to_q`;
            // in the text encoder `self_attn.to_q_lora` is `self_attn.q_proj`.
            let module = module.replace(".processor.", ".");
            let module = match target {
                LoraTarget::Unet => module.replace("to_out", "to_out.0"),
                LoraTarget::TextEncoder => module
                    .replace("self_attn.to_q", "self_attn.q_proj")
                    .replace("self_attn.to_k", "self_attn.k_proj")
                    .replace("self_attn.to_v", "self_attn.v_proj")
                    .replace("self_attn.to_out", "self_attn.out_proj"),
            };
            let module = module.replace("to_out.0.0", "to_out.0");
            return Some((
                target,
                ModuleName::Dotted(module),
                format!("{base}{up}"),
                Some(format!("{base}.alpha")),
            ));
        }
    }
    None
}

/// A target's alphas in PEFT's adapter configuration: the default, and per module pattern.
type Alphas = (Option<f32>, Vec<(String, f32)>);

/// A kohya UNet module named in LDM block numbering (`input_blocks_4_1_proj_in`, as kohya
/// writes SDXL and some SD 1.5 tools write SD 1.5) in diffusers' names with `_`
/// (`down_blocks_1_attentions_0_proj_in`), for a UNet of `layers` ResNets per level. The
/// numbering is that of `weights::sd::ldm`.
fn ldm_underscored(name: &str, layers: usize) -> Option<String> {
    let per = layers + 1;
    let resnet = |rest: &str| -> Option<String> {
        let pairs = [
            ("in_layers_2", "conv1"),
            ("emb_layers_1", "time_emb_proj"),
            ("out_layers_3", "conv2"),
            ("skip_connection", "conv_shortcut"),
        ];
        pairs
            .iter()
            .find(|(from, _)| rest == *from)
            .map(|(_, to)| (*to).to_owned())
    };
    // "<n>_<slot>_<rest>" → (n, slot, rest)
    let numbered = |s: &str| -> Option<(usize, usize, String)> {
        let (n, s) = s.split_once('_')?;
        let (slot, rest) = s.split_once('_').unwrap_or((s, ""));
        Some((n.parse().ok()?, slot.parse().ok()?, rest.to_owned()))
    };
    match name {
        "time_embed_0" => return Some("time_embedding_linear_1".into()),
        "time_embed_2" => return Some("time_embedding_linear_2".into()),
        "input_blocks_0_0" => return Some("conv_in".into()),
        "out_2" => return Some("conv_out".into()),
        _ => {}
    }
    if let Some(s) = name.strip_prefix("input_blocks_") {
        let (n, slot, rest) = numbered(s)?;
        let (level, j) = ((n.checked_sub(1)?) / per, (n - 1) % per);
        return match (slot, j == layers) {
            (0, true) if rest == "op" => Some(format!("down_blocks_{level}_downsamplers_0_conv")),
            (0, false) => Some(format!(
                "down_blocks_{level}_resnets_{j}_{}",
                resnet(&rest)?
            )),
            (1, false) => Some(format!("down_blocks_{level}_attentions_{j}_{rest}")),
            _ => None,
        };
    }
    if let Some(s) = name.strip_prefix("middle_block_") {
        let (n, rest) = s.split_once('_')?;
        return match n {
            "0" => Some(format!("mid_block_resnets_0_{}", resnet(rest)?)),
            "1" => Some(format!("mid_block_attentions_0_{rest}")),
            "2" => Some(format!("mid_block_resnets_1_{}", resnet(rest)?)),
            _ => None,
        };
    }
    if let Some(s) = name.strip_prefix("output_blocks_") {
        let (n, slot, rest) = numbered(s)?;
        let (level, j) = (n / per, n % per);
        return match slot {
            0 => Some(format!("up_blocks_{level}_resnets_{j}_{}", resnet(&rest)?)),
            1 | 2 if rest == "conv" => Some(format!("up_blocks_{level}_upsamplers_0_conv")),
            1 => Some(format!("up_blocks_{level}_attentions_{j}_{rest}")),
            _ => None,
        };
    }
    None
}

/// The PEFT adapter configuration diffusers stores in the safetensors metadata.
#[derive(Default)]
struct AdapterMetadata {
    alphas: HashMap<LoraTarget, Alphas>,
}

impl AdapterMetadata {
    fn alpha(&self, target: LoraTarget, name: &ModuleName) -> Option<f32> {
        let (default, patterns) = self.alphas.get(&target)?;
        if let ModuleName::Dotted(module) = name {
            // PEFT matches a pattern against the end of the module path.
            for (pattern, alpha) in patterns {
                if module == pattern || module.ends_with(&format!(".{pattern}")) {
                    return Some(*alpha);
                }
            }
        }
        *default
    }
}

fn adapter_metadata(source: &SourceFile) -> Result<AdapterMetadata, WeightsError> {
    let Some(raw) = source.metadata("lora_adapter_metadata") else {
        return Ok(AdapterMetadata::default());
    };
    let json: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| WeightsError::Corrupt {
            path: source.path().to_owned(),
            reason: format!("lora_adapter_metadata is not JSON: {e}"),
        })?;
    let mut out = AdapterMetadata::default();
    for (target, prefix) in [
        (LoraTarget::Unet, "unet."),
        (LoraTarget::TextEncoder, "text_encoder."),
    ] {
        let alpha = json
            .get(format!("{prefix}lora_alpha"))
            .and_then(|v| v.as_f64())
            .map(|a| a as f32);
        let patterns = json
            .get(format!("{prefix}alpha_pattern"))
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                    .collect()
            })
            .unwrap_or_default();
        out.alphas.insert(target, (alpha, patterns));
    }
    Ok(out)
}

/// One LoRA contribution to one weight.
#[derive(Clone, Debug)]
struct Delta {
    lora: usize,
    down: SourceTensor,
    up: SourceTensor,
    /// m · alpha / rank.
    scale: f32,
}

/// LoRAs resolved against one network: which canonical weights get which deltas. Implements
/// [`Patch`], so `materialize_as` fuses them while converting, once per set of LoRAs and
/// multipliers (the fingerprint keys the cache).
pub struct LoraPatch<'a> {
    loras: Vec<&'a Lora>,
    deltas: BTreeMap<String, Vec<Delta>>,
    fingerprint: String,
}

impl<'a> LoraPatch<'a> {
    /// Matches the `target` modules of every LoRA (with its multiplier for that network)
    /// against `canonical`; a module that matches no weight is an error naming its key.
    pub fn resolve(
        loras: &[(&'a Lora, f32)],
        target: LoraTarget,
        canonical: &TensorMap<SourceTensor>,
    ) -> Result<LoraPatch<'a>, WeightsError> {
        let modules: HashMap<String, &str> = canonical
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .map(|m| (m.replace('.', "_"), m))
            .collect();
        let layers = canonical.scope("down_blocks.0.resnets").count_indexed();
        let mut deltas: BTreeMap<String, Vec<Delta>> = BTreeMap::new();
        let mut fingerprint = format!("lora-1 {target:?}");
        for (index, (lora, multiplier)) in loras.iter().enumerate() {
            fingerprint.push_str(&format!(" {}:{multiplier}", lora.source.fingerprint()));
            for m in lora.modules.iter().filter(|m| m.target == target) {
                let mismatch = || WeightsError::LoraMismatch {
                    path: lora.path().to_owned(),
                    key: m.key.clone(),
                    network: target.describe(),
                };
                let module = match &m.name {
                    ModuleName::Underscored(n) => modules
                        .get(n)
                        .or_else(|| {
                            let translated = ldm_underscored(n, layers)?;
                            modules.get(&translated)
                        })
                        .map(|s| s.to_string()),
                    ModuleName::Dotted(n) => canonical
                        .contains(&format!("{n}.weight"))
                        .then(|| n.clone()),
                };
                let module = module.ok_or_else(mismatch)?;
                let weight_name = format!("{module}.weight");
                let weight = canonical.get(&weight_name).ok_or_else(mismatch)?;
                let rank = m.down.shape.first().copied().unwrap_or(0);
                let out = weight.shape.first().copied().unwrap_or(0);
                let fits = rank > 0
                    && m.up.shape.len() >= 2
                    && m.up.shape[0] == out
                    && m.up.shape[1] == rank
                    && m.up.shape[2..].iter().all(|&d| d == 1)
                    && m.down.numel() / rank * out == weight.numel();
                if !fits {
                    return Err(WeightsError::BadShape {
                        name: m.key.clone(),
                        shape: m.down.shape.iter().map(|&d| d as i64).collect(),
                        reason: format!(
                            "with up {:?} it does not fit `{weight_name}` {:?}",
                            m.up.shape, weight.shape
                        ),
                    });
                }
                let alpha = m.alpha.unwrap_or(rank as f32);
                deltas.entry(weight_name).or_default().push(Delta {
                    lora: index,
                    down: m.down.clone(),
                    up: m.up.clone(),
                    scale: multiplier * alpha / rank as f32,
                });
            }
        }
        Ok(LoraPatch {
            loras: loras.iter().map(|(l, _)| *l).collect(),
            deltas,
            fingerprint,
        })
    }

    /// The canonical weights this patch changes.
    pub fn patched(&self) -> impl Iterator<Item = &str> {
        self.deltas.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// The files of the LoRAs, for logs.
    pub fn files(&self) -> Vec<PathBuf> {
        self.loras.iter().map(|l| l.path().to_owned()).collect()
    }
}

impl Patch for LoraPatch<'_> {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn apply(&self, name: &str, _shape: &[usize], data: &mut [f32]) -> Result<(), WeightsError> {
        let Some(deltas) = self.deltas.get(name) else {
            return Ok(());
        };
        for d in deltas {
            let mut reader = self.loras[d.lora].source.reader()?;
            let down = reader.read_f32(&d.down)?;
            let up = reader.read_f32(&d.up)?;
            let rank = d.down.shape[0];
            let cols = down.len() / rank;
            let rows = up.len() / rank;
            // W[o, i] += scale · Σ_r up[o, r] · down[r, i]
            for o in 0..rows {
                let row = &mut data[o * cols..(o + 1) * cols];
                for r in 0..rank {
                    let u = d.scale * up[o * rank + r];
                    if u == 0.0 {
                        continue;
                    }
                    let down_row = &down[r * cols..(r + 1) * cols];
                    for (w, &dv) in row.iter_mut().zip(down_row) {
                        *w += u * dv;
                    }
                }
            }
        }
        Ok(())
    }
}
