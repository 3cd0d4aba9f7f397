//! The original LDM (CompVis / A1111 single-file) names of the SD 1.5 UNet, ControlNet and VAE,
//! translated into diffusers' module names, which are the canonical names of `nets::unet`,
//! `nets::controlnet` and `nets::vae`.
//!
//! The UNet's LDM layout numbers its blocks instead of naming them:
//!
//! | LDM | diffusers |
//! |---|---|
//! | `time_embed.{0,2}` | `time_embedding.linear_{1,2}` |
//! | `input_blocks.0.0` | `conv_in` |
//! | `input_blocks.{1 + i·(L+1) + j}.0` / `.1` | `down_blocks.i.resnets.j` / `.attentions.j` |
//! | `input_blocks.{(i+1)·(L+1)}.0.op` | `down_blocks.i.downsamplers.0.conv` |
//! | `middle_block.{0,1,2}` | `mid_block.resnets.0`, `mid_block.attentions.0`, `mid_block.resnets.1` |
//! | `output_blocks.{i·(L+1) + j}.0` / `.1` | `up_blocks.i.resnets.j` / `.attentions.j` |
//! | `output_blocks.{i·(L+1) + L}.{1 or 2}.conv` | `up_blocks.i.upsamplers.0.conv` (slot 2 when the block has attention) |
//! | `out.{0,2}` | `conv_norm_out`, `conv_out` |
//! | ResNet `in_layers.{0,2}`, `emb_layers.1`, `out_layers.{0,3}`, `skip_connection` | `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut` |
//!
//! with L the ResNets per level, told by where the first downsampler sits. Transformer blocks
//! keep their names. A ControlNet adds `input_hint_block.{2k}` (the hint encoder's convs, SiLUs
//! between them), `zero_convs.{k}.0` and `middle_block_out.0`.
//!
//! The VAE: `{encoder,decoder}.{down,up}.{i}.block.{j}`, `.downsample.conv` / `.upsample.conv`,
//! `mid.block_{1,2}`, `mid.attn_1.{norm,q,k,v,proj_out}` (1×1 convolutions, reshaped here to
//! the diffusers Linear shape), `norm_out`, `nin_shortcut`; the decoder numbers its levels from
//! the bottom, diffusers from the top.

use super::super::{SourceTensor, TensorMap};

/// Renames the UNet (or ControlNet) tensors `tensors` (LDM names, prefix already removed).
/// Returns the canonical map, or the first key that fits no rule.
pub fn unet(tensors: &TensorMap<SourceTensor>) -> Result<TensorMap<SourceTensor>, String> {
    let layers = resnets_per_level(tensors)?;
    let mut out = TensorMap::new();
    for (key, t) in tensors.iter() {
        let name = unet_key(key, layers, tensors).ok_or_else(|| key.to_owned())?;
        if out.insert(name.clone(), t.clone()).is_some() {
            return Err(format!("{key} (a second tensor for `{name}`)"));
        }
    }
    Ok(out)
}

/// L: the first downsampler is `input_blocks.{L+1}.0.op`.
fn resnets_per_level(tensors: &TensorMap<SourceTensor>) -> Result<usize, String> {
    tensors
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("input_blocks.")?;
            let (n, tail) = rest.split_once('.')?;
            tail.starts_with("0.op.").then(|| n.parse::<usize>().ok())?
        })
        .min()
        .filter(|&n| n >= 2)
        .map(|n| n - 1)
        .ok_or_else(|| "no downsampler `input_blocks.N.0.op` (not an SD UNet)".to_owned())
}

fn unet_key(key: &str, layers: usize, all: &TensorMap<SourceTensor>) -> Option<String> {
    let per = layers + 1;
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    let tail = |from: usize| key.splitn(from + 1, '.').nth(from).unwrap_or_default();
    match parts.as_slice() {
        ["time_embed", "0", ..] => Some(format!("time_embedding.linear_1.{}", tail(2))),
        ["time_embed", "2", ..] => Some(format!("time_embedding.linear_2.{}", tail(2))),
        ["out", "0", ..] => Some(format!("conv_norm_out.{}", tail(2))),
        ["out", "2", ..] => Some(format!("conv_out.{}", tail(2))),
        ["input_blocks", "0", "0", rest] => Some(format!("conv_in.{rest}")),
        ["input_blocks", n, slot, rest] => {
            let n: usize = n.parse().ok()?;
            let (level, j) = ((n - 1) / per, (n - 1) % per);
            match (*slot, j == layers) {
                ("0", true) => Some(format!(
                    "down_blocks.{level}.downsamplers.0.conv.{}",
                    rest.strip_prefix("op.")?
                )),
                ("0", false) => Some(format!(
                    "down_blocks.{level}.resnets.{j}.{}",
                    resnet_key(rest)?
                )),
                ("1", false) => Some(format!("down_blocks.{level}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        ["middle_block", "0", ..] => Some(format!("mid_block.resnets.0.{}", resnet_key(tail(2))?)),
        ["middle_block", "1", ..] => Some(format!("mid_block.attentions.0.{}", tail(2))),
        ["middle_block", "2", ..] => Some(format!("mid_block.resnets.1.{}", resnet_key(tail(2))?)),
        ["output_blocks", n, slot, rest] => {
            let n: usize = n.parse().ok()?;
            let (level, j) = (n / per, n % per);
            let upsampler = |rest: &str| {
                Some(format!(
                    "up_blocks.{level}.upsamplers.0.conv.{}",
                    rest.strip_prefix("conv.")?
                ))
            };
            match *slot {
                "0" => Some(format!(
                    "up_blocks.{level}.resnets.{j}.{}",
                    resnet_key(rest)?
                )),
                "1" if rest.starts_with("conv.") => upsampler(rest),
                "1" => Some(format!("up_blocks.{level}.attentions.{j}.{rest}")),
                "2" if all.contains(&format!("output_blocks.{n}.1.norm.weight")) => upsampler(rest),
                _ => None,
            }
        }
        // ControlNet extras.
        ["input_hint_block", k, rest] => {
            let k: usize = k.parse().ok()?;
            let convs = all
                .keys()
                .filter(|k| k.starts_with("input_hint_block.") && k.ends_with(".weight"))
                .count();
            if !k.is_multiple_of(2) || convs < 2 {
                return None;
            }
            let index = k / 2;
            let module = if index == 0 {
                "conv_in".to_owned()
            } else if index == convs - 1 {
                "conv_out".to_owned()
            } else {
                format!("blocks.{}", index - 1)
            };
            Some(format!("controlnet_cond_embedding.{module}.{rest}"))
        }
        ["zero_convs", k, "0", rest] => Some(format!("controlnet_down_blocks.{k}.{rest}")),
        ["middle_block_out", "0", rest] => Some(format!("controlnet_mid_block.{rest}")),
        _ => None,
    }
}

fn resnet_key(rest: &str) -> Option<String> {
    let pairs = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    pairs
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|t| format!("{to}{t}")))
}

/// Renames VAE tensors (LDM names, `first_stage_model.` already removed). Keys of the training
/// loss (`loss.*`) and EMA copies (`model_ema.*`) that some VAE files carry are dropped.
pub fn vae(tensors: &TensorMap<SourceTensor>) -> Result<TensorMap<SourceTensor>, String> {
    let up_levels = (0..)
        .take_while(|i| tensors.scope("decoder.up").scope(i).exists())
        .count();
    let mut out = TensorMap::new();
    for (key, t) in tensors.iter() {
        if key.starts_with("loss.") || key.starts_with("model_ema.") {
            continue;
        }
        let name = vae_key(key, up_levels).ok_or_else(|| key.to_owned())?;
        let mut t = t.clone();
        // LDM's attention projections are 1×1 convolutions; diffusers' are Linear layers.
        if name.contains(".mid_block.attentions.0.to_")
            && name.ends_with(".weight")
            && t.shape.len() == 4
        {
            t = t
                .squeezed(2)
                .ok_or_else(|| format!("{key} (not a 1×1 projection)"))?;
        }
        if out.insert(name.clone(), t).is_some() {
            return Err(format!("{key} (a second tensor for `{name}`)"));
        }
    }
    Ok(out)
}

fn vae_key(key: &str, up_levels: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_owned());
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let parts: Vec<&str> = rest.split('.').collect();
    let kind = parts.last()?;
    let resnet_module = |m: &str| match m {
        "norm1" | "conv1" | "norm2" | "conv2" => Some(m.to_owned()),
        "nin_shortcut" => Some("conv_shortcut".to_owned()),
        _ => None,
    };
    let inner = match parts.as_slice() {
        ["conv_in", _] | ["conv_out", _] => parts[0].to_owned(),
        ["norm_out", _] => "conv_norm_out".to_owned(),
        ["mid", block, m, _] if block.starts_with("block_") => {
            let j: usize = block["block_".len()..].parse().ok()?;
            format!(
                "mid_block.resnets.{}.{}",
                j.checked_sub(1)?,
                resnet_module(m)?
            )
        }
        ["mid", "attn_1", m, _] => {
            let m = match *m {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return None,
            };
            format!("mid_block.attentions.0.{m}")
        }
        [group, i, "block", j, m, _] if (*group == "down") == (side == "encoder") => {
            let m = resnet_module(m)?;
            format!("{}.resnets.{j}.{m}", level(side, i, up_levels)?)
        }
        ["down", i, "downsample", "conv", _] if side == "encoder" => {
            format!("{}.downsamplers.0.conv", level(side, i, up_levels)?)
        }
        ["up", i, "upsample", "conv", _] if side == "decoder" => {
            format!("{}.upsamplers.0.conv", level(side, i, up_levels)?)
        }
        _ => return None,
    };
    Some(format!("{side}.{inner}.{kind}"))
}

/// `down_blocks.i` / `up_blocks.{n-1-i}` (diffusers numbers decoder levels from the top).
fn level(side: &str, i: &str, up_levels: usize) -> Option<String> {
    let i: usize = i.parse().ok()?;
    if side == "encoder" {
        Some(format!("down_blocks.{i}"))
    } else {
        Some(format!("up_blocks.{}", up_levels.checked_sub(i + 1)?))
    }
}
