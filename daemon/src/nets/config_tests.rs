//! The network configs read from the tiny fixtures (`tests/fixtures/`) against what their
//! generators declared (a diffusers or transformers `config.json` where there is one), and the
//! typed errors of weights whose shapes do not fit.

use std::path::PathBuf;

use serde_json::Value as Json;

use super::clip::{self, Activation, ClipConfig};
use super::controlnet::ControlNetConfig;
use super::esrgan::EsrganConfig;
use super::unet::UnetConfig;
use super::vae::VaeConfig;
use crate::weights::sd::{self, DiffusersConfig};
use crate::weights::{self, SourceFile, SourceTensor, TensorMap, WeightsError};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

fn config_json(path: &str) -> Json {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn usize_of(json: &Json, key: &str) -> usize {
    json[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

fn usizes_of(json: &Json, key: &str) -> Vec<usize> {
    let items = json[key].as_array().unwrap_or_else(|| panic!("{key}"));
    items.iter().map(|v| v.as_u64().unwrap() as usize).collect()
}

/// Whether each block type of `key` is a cross-attention one.
fn attends(json: &Json, key: &str) -> Vec<bool> {
    let items = json[key].as_array().unwrap_or_else(|| panic!("{key}"));
    items
        .iter()
        .map(|t| t.as_str().unwrap().starts_with("CrossAttn"))
        .collect()
}

/// `tensors` with `name`'s shape replaced by `shape`.
fn reshaped(
    tensors: &TensorMap<SourceTensor>,
    name: &str,
    shape: &[usize],
) -> TensorMap<SourceTensor> {
    let mut out = tensors.clone();
    let mut t = tensors.get(name).unwrap().clone();
    t.shape = shape.to_vec();
    out.insert(name, t);
    out
}

/// The name of the tensor a `BadShape` error blames.
fn blamed(e: WeightsError) -> String {
    match e {
        WeightsError::BadShape { name, .. } => name,
        other => panic!("expected a BadShape error, got {other:?}"),
    }
}

#[test]
fn unet_config_from_the_tiny_diffusers_unet_is_its_config_json() {
    let net = sd::unet(&fixture("sd/tiny-diffusers")).unwrap();
    let config = UnetConfig::from_weights(&net.tensors, &net.declared(None)).unwrap();
    let json = config_json("sd/tiny-diffusers/unet/config.json");
    assert_eq!(config.in_channels, usize_of(&json, "in_channels"));
    assert_eq!(config.out_channels, usize_of(&json, "out_channels"));
    assert_eq!(
        config.block_channels,
        usizes_of(&json, "block_out_channels")
    );
    assert_eq!(config.layers_per_block, usize_of(&json, "layers_per_block"));
    assert_eq!(config.attention, attends(&json, "down_block_types"));
    assert_eq!(config.up_attention, attends(&json, "up_block_types"));
    assert_eq!(config.context_dim, usize_of(&json, "cross_attention_dim"));
    assert_eq!(config.norm_groups, usize_of(&json, "norm_num_groups"));
    assert_eq!(
        config.norm_eps as f64,
        json["norm_eps"].as_f64().unwrap() as f32 as f64
    );
    let t = &config.transformer;
    // diffusers' SD 1.x configs hold the head count in `attention_head_dim`.
    assert_eq!(t.heads, usize_of(&json, "attention_head_dim"));
    assert_eq!(t.layers, usize_of(&json, "transformer_layers_per_block"));
    assert_eq!(
        t.linear_projection,
        json["use_linear_projection"].as_bool().unwrap()
    );
    assert!(!t.attention_bias);

    // The single-file checkpoint holds the same UNet under LDM names; only the heads and
    // groups need declaring.
    let ldm = sd::unet(&fixture("sd/tiny-ldm.safetensors")).unwrap();
    let declared = DiffusersConfig {
        attention_heads: Some(2),
        norm_groups: Some(2),
    };
    let from_ldm = UnetConfig::from_weights(&ldm.tensors, &declared).unwrap();
    assert_eq!(from_ldm, config);
}

#[test]
fn vae_config_from_the_tiny_diffusers_vae_is_its_config_json() {
    let net = sd::vae(&fixture("sd/tiny-diffusers")).unwrap();
    let config = VaeConfig::from_weights(&net.tensors, &net.declared(None)).unwrap();
    let json = config_json("sd/tiny-diffusers/vae/config.json");
    assert_eq!(config.image_channels, usize_of(&json, "in_channels"));
    assert_eq!(config.latent_channels, usize_of(&json, "latent_channels"));
    assert_eq!(
        config.block_channels,
        usizes_of(&json, "block_out_channels")
    );
    assert_eq!(config.layers_per_block, usize_of(&json, "layers_per_block"));
    assert_eq!(
        config.mid_attention,
        json["mid_block_add_attention"].as_bool().unwrap()
    );
    assert_eq!(config.norm_groups, usize_of(&json, "norm_num_groups"));
    assert_eq!(
        config.scaling_factor,
        json["scaling_factor"].as_f64().unwrap() as f32
    );
    assert_eq!(config.downscale(), 8);
}

#[test]
fn controlnet_config_from_the_tiny_diffusers_controlnet_is_its_config_json() {
    let net = sd::controlnet(&fixture("sd/tiny-controlnet-diffusers")).unwrap();
    let config = ControlNetConfig::from_weights(&net.tensors, &net.declared(None)).unwrap();
    let json = config_json("sd/tiny-controlnet-diffusers/config.json");
    assert_eq!(
        config.hint_channels,
        usize_of(&json, "conditioning_channels")
    );
    assert_eq!(
        config.hint_widths,
        usizes_of(&json, "conditioning_embedding_out_channels")
    );
    let unet = &config.unet;
    assert_eq!(unet.block_channels, usizes_of(&json, "block_out_channels"));
    assert_eq!(unet.attention, attends(&json, "down_block_types"));
    assert_eq!((unet.out_channels, unet.up_attention.len()), (0, 0));
    assert_eq!(
        unet.transformer.heads,
        usize_of(&json, "attention_head_dim")
    );
    assert_eq!(unet.norm_groups, usize_of(&json, "norm_num_groups"));
    // The LDM `.pth` ControlNet is the same network.
    let ldm = sd::controlnet(&fixture("sd/tiny-controlnet.pth")).unwrap();
    let declared = DiffusersConfig {
        attention_heads: Some(2),
        norm_groups: Some(2),
    };
    assert_eq!(
        ControlNetConfig::from_weights(&ldm.tensors, &declared).unwrap(),
        config
    );
}

#[test]
fn clip_config_from_the_tiny_text_encoder_is_its_config_json() {
    let (_, _, config) = clip::open(&fixture("sd/tiny-diffusers")).unwrap();
    let json = config_json("sd/tiny-diffusers/text_encoder/config.json");
    assert_eq!(config.vocab_size, usize_of(&json, "vocab_size"));
    assert_eq!(config.hidden, usize_of(&json, "hidden_size"));
    assert_eq!(config.positions, usize_of(&json, "max_position_embeddings"));
    assert_eq!(config.layers, usize_of(&json, "num_hidden_layers"));
    assert_eq!(config.intermediate, usize_of(&json, "intermediate_size"));
    assert_eq!(config.heads, usize_of(&json, "num_attention_heads"));
    assert_eq!(config.activation, Activation::QuickGelu);
    assert_eq!(config.eos_id(), json["eos_token_id"].as_i64().unwrap());
    assert_eq!(config.bos_id(), json["bos_token_id"].as_i64().unwrap());
}

#[test]
fn esrgan_config_from_the_tiny_models_is_what_their_generator_made() {
    // tests/fixtures/generate.py (`make_canonical`): nf=4, gc=GC=3, nb and the ×2 stages per
    // file; the unshuffle models take 12 and 48 channels (pixel-unshuffle by 2 and 4).
    for (file, nb, upsamples, unshuffle, scale) in [
        ("tiny-x4.safetensors", 2, 2, 1, 4),
        ("tiny-x4-realesrgan.pth", 1, 2, 1, 4),
        ("tiny-x2.safetensors", 1, 1, 1, 2),
        ("tiny-x2-unshuffle.safetensors", 1, 2, 2, 2),
        ("tiny-x1-unshuffle.safetensors", 1, 2, 4, 1),
    ] {
        let source = SourceFile::open(&fixture(&format!("esrgan/{file}"))).unwrap();
        let (canonical, layout) = weights::esrgan::canonicalize(&source).unwrap();
        let config = EsrganConfig::from_weights(&canonical, layout).unwrap();
        let (nf, gc) = (config.nf, config.gc);
        assert_eq!((nf, config.nb, gc), (4, nb, 3), "{file}");
        assert_eq!((config.upsamples, config.unshuffle), (upsamples, unshuffle));
        assert_eq!(config.scale(), scale, "{file}");
    }
}

#[test]
fn reference_configs_are_the_published_models() {
    let unet = UnetConfig::default();
    assert_eq!(unet.residuals().len(), 12);
    assert_eq!(unet.mid(), (1280, 8));
    assert_eq!(UnetConfig::default(), UnetConfig::sd15());
    let vae = VaeConfig::default();
    assert_eq!((vae.downscale(), vae.scaling_factor), (8, 0.18215));
    let cn = ControlNetConfig::default();
    assert_eq!(cn.unet.residuals(), unet.residuals());
    let clip = ClipConfig::default();
    assert_eq!((clip.bos_id(), clip.eos_id()), (49406, 49407));
    assert_eq!(clip.hidden / clip.heads, 64);
    assert_eq!(EsrganConfig::default().scale(), 4);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_in_the_error() {
    let declared = DiffusersConfig {
        attention_heads: Some(2),
        norm_groups: Some(2),
    };
    let unet = sd::unet(&fixture("sd/tiny-ldm.safetensors")).unwrap();
    let flat = reshaped(&unet.tensors, "conv_in.weight", &[4, 4, 9]);
    let e = UnetConfig::from_weights(&flat, &declared).unwrap_err();
    assert_eq!(blamed(e), "conv_in.weight");
    // Widths that do not split into the declared groups or heads name the first tensor that
    // would be split.
    let three_groups = DiffusersConfig {
        norm_groups: Some(3),
        ..declared
    };
    let e = UnetConfig::from_weights(&unet.tensors, &three_groups).unwrap_err();
    assert_eq!(blamed(e), "down_blocks.0.resnets.0.norm2.weight");
    let three_heads = DiffusersConfig {
        attention_heads: Some(3),
        ..declared
    };
    let e = UnetConfig::from_weights(&unet.tensors, &three_heads).unwrap_err();
    assert_eq!(
        blamed(e),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    );

    let vae = sd::vae(&fixture("sd/tiny-ldm.safetensors")).unwrap();
    let e = VaeConfig::from_weights(&vae.tensors, &three_groups).unwrap_err();
    assert_eq!(blamed(e), "encoder.down_blocks.0.resnets.0.norm2.weight");

    let (_, canonical, _) = clip::open(&fixture("sd/tiny-diffusers")).unwrap();
    let fc2 = "text_model.encoder.layers.0.mlp.fc2.weight";
    let wrong = reshaped(&canonical, fc2, &[64, 32]);
    let layout = crate::weights::clip_keys::Layout::Transformers;
    let e = ClipConfig::from_weights(&wrong, layout, None).unwrap_err();
    assert_eq!(blamed(e), fc2);

    let source = SourceFile::open(&fixture("esrgan/tiny-x4-realesrgan.safetensors")).unwrap();
    let (canonical, layout) = weights::esrgan::canonicalize(&source).unwrap();
    let wrong = reshaped(&canonical, "body.1.rdb2.conv3.weight", &[3, 11, 3, 3]);
    let e = EsrganConfig::from_weights(&wrong, layout).unwrap_err();
    assert_eq!(blamed(e), "body.1.rdb2.conv3.weight");
}
