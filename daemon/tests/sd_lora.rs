//! LoRA fusion (kohya and PEFT files) against diffusers, the cache of fused weights, and the
//! typed errors for keys and files that do not fit.

mod common;
mod sd_common;

use std::collections::HashMap;
use std::path::Path;

use common::engine;
use sd_common::*;
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::unet::{CompiledUnet, Unet};
use tessera::weights::lora::{Lora, LoraPatch, LoraTarget};
use tessera::weights::sd::{self, ModelKind};
use tessera::weights::{SourceFile, SourceTensor, TensorMap, WeightType, WeightsError};

fn unet_with_lora(file: &str, multiplier: f32, cache: &Path) -> (CompiledUnet, std::path::PathBuf) {
    let net = sd::unet(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let lora = Lora::open(&sd_fixture(file)).unwrap();
    let patch = LoraPatch::resolve(&[(&lora, multiplier)], LoraTarget::Unet, &net.tensors).unwrap();
    assert!(!patch.is_empty());
    let options = SdOptions {
        precision: Precision::F32,
        config: Some(TINY),
        patch: Some(&patch),
    };
    let compiled = CompiledUnet::compile(&net, cache, &options).unwrap();
    let file = compiled.weights.file().to_owned();
    (compiled, file)
}

#[test]
fn unet_with_kohya_and_peft_loras_matches_diffusers() {
    for (file, tag, m) in [
        ("tiny-lora-kohya.safetensors", "kohya", 0.7),
        ("tiny-lora-peft.safetensors", "peft", 1.0),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let (compiled, _) = unet_with_lora(file, m, cache.path());
        assert!(
            compiled.weights.converted(),
            "fused weights live in the cache"
        );
        let mut unet = Unet::new(compiled);
        let (x, t, c) = (
            sd_reference("unet.sample"),
            sd_reference("unet.timestep"),
            sd_reference("unet.encoder_hidden_states"),
        );
        let out = unet
            .forward(engine(), x.view(), t.view(), c.view(), None)
            .unwrap();
        let want = sd_reference(&format!("lora.{tag}.out_sample"));
        let base = sd_reference("unet.ldm.out_sample");
        let err = max_abs(&out, &want);
        eprintln!("UNet + {tag} LoRA: max abs error {err:.2e}");
        assert!(err < 1e-4, "{tag}: {err}");
        assert!(max_abs(&base, &want) > 1e-2, "the LoRA changes the output");
    }
}

/// The text encoder's canonical tensors of the tiny checkpoint (the text side's naming).
fn text_encoder(source: &SourceFile) -> TensorMap<SourceTensor> {
    source
        .tensors()
        .iter()
        .filter_map(|(k, t)| {
            Some((
                k.strip_prefix("cond_stage_model.transformer.")?.to_owned(),
                t.clone(),
            ))
        })
        .collect()
}

#[test]
fn text_encoder_fusion_matches_the_reference() {
    let source = SourceFile::open(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let canonical = text_encoder(&source);
    for (file, tag, m) in [
        ("tiny-lora-kohya.safetensors", "kohya", 0.4),
        ("tiny-lora-peft.safetensors", "peft", 0.5),
    ] {
        let lora = Lora::open(&sd_fixture(file)).unwrap();
        let patch = LoraPatch::resolve(&[(&lora, m)], LoraTarget::TextEncoder, &canonical).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let weights = tessera::weights::materialize_as(
            &source,
            &canonical,
            cache.path(),
            tessera::weights::Target {
                network: "text_encoder",
                weight_type: WeightType::F32,
                patch: Some(&patch),
            },
        )
        .unwrap();
        let bytes = std::fs::read(weights.file()).unwrap();
        let fused = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let read = |name: &str| -> Vec<f32> {
            fused
                .tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let patched: Vec<String> = patch.patched().map(str::to_owned).collect();
        assert!(!patched.is_empty());
        for name in &patched {
            let want = sd_reference(&format!("lora.{tag}.te.{name}"));
            let got = ndarray::ArrayD::from_shape_vec(want.shape().to_vec(), read(name)).unwrap();
            let err = max_abs(&got, &want);
            eprintln!("text encoder {tag} {name}: max abs error {err:.2e}");
            assert!(err < 1e-5, "{tag} {name}: {err}");
        }
        // Everything else is untouched.
        let original = std::fs::read(sd_fixture("tiny-ldm.safetensors")).unwrap();
        let original = safetensors::SafeTensors::deserialize(&original).unwrap();
        for name in canonical.keys().filter(|k| !patched.iter().any(|p| p == k)) {
            let a = original
                .tensor(&format!("cond_stage_model.transformer.{name}"))
                .unwrap();
            assert_eq!(a.data(), fused.tensor(name).unwrap().data(), "{name}");
        }
    }
}

#[test]
fn fused_weights_are_written_once_per_lora_set() {
    let cache = tempfile::tempdir().unwrap();
    let (_, first) = unet_with_lora("tiny-lora-kohya.safetensors", 0.7, cache.path());
    let written = std::fs::metadata(&first).unwrap().modified().unwrap();
    let (_, again) = unet_with_lora("tiny-lora-kohya.safetensors", 0.7, cache.path());
    assert_eq!(
        first, again,
        "the same LoRAs and multipliers reuse the cache file"
    );
    assert_eq!(
        std::fs::metadata(&again).unwrap().modified().unwrap(),
        written,
        "not rewritten"
    );
    let (_, other) = unet_with_lora("tiny-lora-kohya.safetensors", 0.5, cache.path());
    assert_ne!(first, other, "another multiplier is another file");
    let files = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(files, 2, "no temporary files are left behind");
}

fn as_refs(v: &[(String, Vec<usize>)]) -> Vec<(&str, Vec<usize>)> {
    v.iter().map(|(n, s)| (n.as_str(), s.clone())).collect()
}

/// Writes a small f32 safetensors file with these (name, shape) tensors.
fn write_file(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            let bytes = (0..numel)
                .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
                .collect();
            (n.to_string(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_lora_key_without_a_layer_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stray.safetensors");
    write_file(
        &path,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                vec![2, 4, 1, 1],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                vec![4, 2, 1, 1],
            ),
            (
                "lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight",
                vec![2, 4, 3, 3],
            ),
            (
                "lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight",
                vec![4, 2, 1, 1],
            ),
        ],
    );
    let net = sd::unet(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let lora = Lora::open(&path).unwrap();
    match LoraPatch::resolve(&[(&lora, 1.0)], LoraTarget::Unet, &net.tensors) {
        Err(e @ WeightsError::LoraMismatch { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight"),
                "{message}"
            );
        }
        Err(other) => panic!("expected LoraMismatch, got {other}"),
        Ok(_) => panic!("expected LoraMismatch, got a patch"),
    }
}

fn kind_of(result: Result<sd::NetWeights, WeightsError>) -> ModelKind {
    match result {
        Err(WeightsError::WrongKind { found, .. }) => found,
        Err(other) => panic!("expected WrongKind, got {other}"),
        Ok(_) => panic!("expected WrongKind, got weights"),
    }
}

#[test]
fn files_that_are_not_sd15_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, tensors: &[(&str, Vec<usize>)]| {
        let p = dir.path().join(name);
        write_file(&p, tensors);
        p
    };
    let unet_keys = |prefix: &str, in_ch: usize, ctx: usize| -> Vec<(String, Vec<usize>)> {
        vec![
            (
                format!("{prefix}input_blocks.0.0.weight"),
                vec![8, in_ch, 3, 3],
            ),
            (
                format!("{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
                vec![8, ctx],
            ),
            (
                format!("{prefix}input_blocks.3.0.op.weight"),
                vec![8, 8, 3, 3],
            ),
        ]
    };
    let owned = |v: &[(String, Vec<usize>)]| {
        v.iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect::<Vec<_>>()
    };

    let mut sdxl = owned(&unet_keys("model.diffusion_model.", 4, 2048));
    sdxl.push((
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(),
        vec![4],
    ));
    assert_eq!(
        kind_of(sd::unet(&file("sdxl.safetensors", &as_refs(&sdxl)))),
        ModelKind::Sdxl
    );

    let mut sd2 = owned(&unet_keys("model.diffusion_model.", 4, 1024));
    sd2.push(("cond_stage_model.model.ln_final.weight".into(), vec![4]));
    assert_eq!(
        kind_of(sd::unet(&file("sd2.safetensors", &as_refs(&sd2)))),
        ModelKind::Sd2
    );
    let sd2_unet = owned(&unet_keys("model.diffusion_model.", 4, 1024));
    assert_eq!(
        kind_of(sd::unet(&file("sd2-unet.safetensors", &as_refs(&sd2_unet)))),
        ModelKind::Sd2
    );

    let inpaint = owned(&unet_keys("model.diffusion_model.", 9, 768));
    let kind = kind_of(sd::unet(&file("inpaint.safetensors", &as_refs(&inpaint))));
    assert_eq!(kind, ModelKind::OtherInput { channels: 9 });
    assert!(kind.to_string().contains("inpainting"));

    let lora = sd_fixture("tiny-lora-kohya.safetensors");
    assert_eq!(kind_of(sd::unet(&lora)), ModelKind::Lora);
    let vae = sd_fixture("tiny-vae-bf16.safetensors");
    let err = sd::unet(&vae).unwrap_err();
    assert!(err.to_string().contains("a VAE on its own"), "{err}");
    assert_eq!(kind_of(sd::unet(&vae)), ModelKind::Vae);
    assert_eq!(
        kind_of(sd::unet(&sd_fixture("tiny-controlnet.pth"))),
        ModelKind::ControlNet
    );
    assert_eq!(
        kind_of(sd::controlnet(&sd_fixture("tiny-ldm.safetensors"))),
        ModelKind::Sd15
    );
    assert_eq!(kind_of(sd::vae(&lora)), ModelKind::Lora);
}

#[test]
fn kohya_keys_in_ldm_block_numbering_fuse_the_same() {
    // The kohya fixture's UNet modules under the LDM names (2 ResNets per level).
    let renames = [
        (
            "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "input_blocks_1_1_transformer_blocks_0_attn1_to_q",
        ),
        (
            "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
            "input_blocks_1_1_transformer_blocks_0_attn1_to_out_0",
        ),
        (
            "down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
            "input_blocks_5_1_transformer_blocks_0_attn2_to_k",
        ),
        (
            "down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_v",
            "input_blocks_5_1_transformer_blocks_0_attn2_to_v",
        ),
        (
            "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
            "middle_block_1_transformer_blocks_0_ff_net_0_proj",
        ),
        (
            "up_blocks_2_attentions_1_transformer_blocks_0_ff_net_2",
            "output_blocks_7_1_transformer_blocks_0_ff_net_2",
        ),
        (
            "up_blocks_1_attentions_0_proj_in",
            "output_blocks_3_1_proj_in",
        ),
        (
            "down_blocks_2_attentions_0_proj_out",
            "input_blocks_7_1_proj_out",
        ),
        (
            "down_blocks_0_resnets_1_conv1",
            "input_blocks_2_0_in_layers_2",
        ),
        (
            "up_blocks_0_resnets_2_conv2",
            "output_blocks_2_0_out_layers_3",
        ),
        (
            "up_blocks_3_resnets_0_conv_shortcut",
            "output_blocks_9_0_skip_connection",
        ),
        (
            "down_blocks_1_resnets_0_time_emb_proj",
            "input_blocks_4_0_emb_layers_1",
        ),
    ];
    let bytes = std::fs::read(sd_fixture("tiny-lora-kohya.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut renamed = Vec::new();
    for (name, view) in original.tensors() {
        let new = renames
            .iter()
            .find_map(|(d, l)| {
                name.strip_prefix(&format!("lora_unet_{d}."))
                    .map(|rest| format!("lora_unet_{l}.{rest}"))
            })
            .unwrap_or_else(|| name.clone());
        renamed.push((new, view));
    }
    assert_eq!(
        renamed
            .iter()
            .filter(|(n, _)| n.contains("_blocks_")
                && !n.contains("down_blocks")
                && !n.contains("up_blocks"))
            .count(),
        36
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ldm-names.safetensors");
    std::fs::write(
        &path,
        safetensors::tensor::serialize(renamed, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();

    let net = sd::unet(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let lora = Lora::open(&path).unwrap();
    let patch = LoraPatch::resolve(&[(&lora, 0.7)], LoraTarget::Unet, &net.tensors).unwrap();
    assert_eq!(patch.patched().count(), 12);
    let options = SdOptions {
        precision: Precision::F32,
        config: Some(TINY),
        patch: Some(&patch),
    };
    let compiled = CompiledUnet::compile(&net, dir.path(), &options).unwrap();
    let mut unet = Unet::new(compiled);
    let (x, t, c) = (
        sd_reference("unet.sample"),
        sd_reference("unet.timestep"),
        sd_reference("unet.encoder_hidden_states"),
    );
    let out = unet
        .forward(engine(), x.view(), t.view(), c.view(), None)
        .unwrap();
    let err = max_abs(&out, &sd_reference("lora.kohya.out_sample"));
    assert!(err < 1e-4, "{err}");
}
