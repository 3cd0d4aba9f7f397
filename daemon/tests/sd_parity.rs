//! The SD 1.5 UNet, ControlNet and VAE through the real loaders and ONNX Runtime, against
//! diffusers' outputs on the same files (`tests/fixtures/gen_sd.py`).

mod common;
mod sd_common;

use common::engine;
use ndarray::ArrayD;
use sd_common::*;
use tessera::nets::controlnet::{CompiledControlNet, ControlNet};
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::unet::{CompiledUnet, Unet};
use tessera::nets::vae::CompiledVae;
use tessera::weights::sd::{self, DiffusersConfig, Layout};

const TOLERANCE: f32 = 1e-4;
/// fp16 graphs against the fp32 reference, relative to the output's largest magnitude.
const FP16_RELATIVE: f32 = 3e-2;

fn options(precision: Precision, config: Option<DiffusersConfig>) -> SdOptions<'static> {
    SdOptions {
        precision,
        config,
        patch: None,
    }
}

fn unet_inputs() -> (ArrayD<f32>, ArrayD<f32>, ArrayD<f32>) {
    (
        sd_reference("unet.sample"),
        sd_reference("unet.timestep"),
        sd_reference("unet.encoder_hidden_states"),
    )
}

fn residual_inputs() -> Vec<ArrayD<f32>> {
    let mut r: Vec<ArrayD<f32>> = (0..12)
        .map(|i| sd_reference(&format!("unet.down_block_{i}_additional_residual")))
        .collect();
    r.push(sd_reference("unet.mid_block_additional_residual"));
    r
}

fn check(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, precision: Precision) {
    let err = max_abs(got, want);
    let limit = match precision {
        Precision::F32 => TOLERANCE,
        Precision::F16 => FP16_RELATIVE * max_magnitude(want).max(1.0),
    };
    eprintln!("{what}: max abs error {err:.2e} (limit {limit:.1e})");
    assert!(err <= limit, "{what}: max abs error {err} > {limit}");
}

fn run_unet(
    path: &str,
    declared: Option<DiffusersConfig>,
    precision: Precision,
    residuals: bool,
) -> ArrayD<f32> {
    let net = sd::unet(&sd_fixture(path)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let compiled =
        CompiledUnet::compile(&net, cache.path(), &options(precision, declared)).unwrap();
    let mut unet = Unet::new(compiled);
    let (x, t, c) = unet_inputs();
    let r = residuals.then(residual_inputs);
    unet.forward(engine(), x.view(), t.view(), c.view(), r.as_deref())
        .unwrap()
}

#[test]
fn unet_from_a_single_file_checkpoint_matches_diffusers() {
    for precision in [Precision::F32, Precision::F16] {
        let out = run_unet("tiny-ldm.safetensors", Some(TINY), precision, false);
        check(
            &format!("UNet LDM {precision:?}"),
            &out,
            &sd_reference("unet.ldm.out_sample"),
            precision,
        );
        let out = run_unet("tiny-ldm.safetensors", Some(TINY), precision, true);
        check(
            &format!("UNet LDM + residuals {precision:?}"),
            &out,
            &sd_reference("unet.ldm.out_sample_residuals"),
            precision,
        );
    }
}

#[test]
fn unet_from_a_diffusers_folder_reads_its_config() {
    let net = sd::unet(&sd_fixture("tiny-diffusers")).unwrap();
    assert_eq!(net.layout, Layout::Diffusers);
    assert_eq!(
        net.config,
        Some(TINY),
        "heads and groups from unet/config.json"
    );
    let out = run_unet("tiny-diffusers", None, Precision::F32, false);
    check(
        "UNet diffusers fp16 file",
        &out,
        &sd_reference("unet.diffusers-fp16.out_sample"),
        Precision::F32,
    );
}

#[test]
fn vae_in_every_layout_matches_diffusers() {
    let image = sd_reference("vae.image");
    let latent = sd_reference("vae.latent");
    for (path, tag, declared) in [
        ("tiny-ldm.safetensors", "ldm", Some(TINY)),
        ("tiny-diffusers", "diffusers", None),
        ("tiny-vae-bf16.safetensors", "bf16", Some(TINY)),
    ] {
        for precision in [Precision::F32, Precision::F16] {
            let net = sd::vae(&sd_fixture(path)).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let vae =
                CompiledVae::compile(&net, cache.path(), &options(precision, declared)).unwrap();
            let enc = engine().session(&vae.encoder).unwrap();
            let out = tessera::nets::sd::run(
                &enc,
                "enc",
                &[("sample", image.view())],
                &["latent_mean", "latent_logvar"],
            )
            .unwrap();
            check(
                &format!("VAE {tag} mean {precision:?}"),
                &out[0],
                &sd_reference(&format!("vae.{tag}.mean")),
                precision,
            );
            check(
                &format!("VAE {tag} logvar {precision:?}"),
                &out[1],
                &sd_reference(&format!("vae.{tag}.logvar")),
                precision,
            );
            let dec = engine().session(&vae.decoder).unwrap();
            let out = tessera::nets::sd::run(
                &dec,
                "dec",
                &[("latent_sample", latent.view())],
                &["sample"],
            )
            .unwrap();
            check(
                &format!("VAE {tag} decode {precision:?}"),
                &out[0],
                &sd_reference(&format!("vae.{tag}.decoded")),
                precision,
            );
        }
    }
}

#[test]
fn controlnet_in_both_layouts_full_and_split_matches_diffusers() {
    let (x, t, c) = unet_inputs();
    let hint = hint_image(2, 64, 128);
    for (path, tag, declared) in [
        ("tiny-controlnet.pth", "ldm", Some(TINY)),
        ("tiny-controlnet-fp16.safetensors", "fp16", Some(TINY)),
        ("tiny-controlnet-diffusers", "fp16", None),
    ] {
        for precision in [Precision::F32, Precision::F16] {
            let net = sd::controlnet(&sd_fixture(path)).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let compiled =
                CompiledControlNet::compile(&net, cache.path(), &options(precision, declared))
                    .unwrap();
            let names = compiled.output_names();
            let mut cn = ControlNet::new(engine(), compiled).unwrap();
            let emb = cn.embed_hint(hint.view()).unwrap();
            let split = cn
                .residuals(x.view(), t.view(), c.view(), emb.view())
                .unwrap();
            let full = cn
                .residuals_full(engine(), x.view(), t.view(), c.view(), hint.view())
                .unwrap();
            for (i, name) in names.iter().enumerate() {
                let want = sd_reference(&format!("controlnet.{tag}.{name}"));
                check(
                    &format!("ControlNet {path} split {name} {precision:?}"),
                    &split[i],
                    &want,
                    precision,
                );
                check(
                    &format!("ControlNet {path} full {name} {precision:?}"),
                    &full[i],
                    &want,
                    precision,
                );
            }
        }
    }
}

#[test]
fn vae_with_frozen_group_norm_statistics() {
    let net = sd::vae(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let vae =
        CompiledVae::compile(&net, cache.path(), &options(Precision::F32, Some(TINY))).unwrap();
    let image = sd_reference("vae.image");
    let other = image.mapv(|v| 0.5 * v + 0.2);
    let run = |model: &tessera::engine::CompiledModel,
               inputs: &[(&str, ndarray::ArrayViewD<f32>)],
               outputs: &[&str]| {
        let session = engine().session(model).unwrap();
        tessera::nets::sd::run(&session, &model.name, inputs, outputs).unwrap()
    };
    use tessera::nets::vae::NormStats;
    // Encoder: statistics of `image`, exported, then fed back: the same output as the live graph.
    let export = vae.with_stats(false, NormStats::Export).unwrap();
    let frozen = vae.with_stats(false, NormStats::Frozen).unwrap();
    let norms = tessera::onnx::decode(&export.onnx)
        .unwrap()
        .graph
        .unwrap()
        .output
        .len()
        - 2;
    // 8 ResNets (2 norms each) + 2 in the mid block, its attention, the output norm.
    assert_eq!(norms, 2 * (2 * 8 + 2 * 2 + 1 + 1));
    let names: Vec<String> = (0..norms / 2)
        .flat_map(|k| [format!("groupnorm_{k}_mean"), format!("groupnorm_{k}_var")])
        .collect();
    let mut outputs = vec!["latent_mean"];
    outputs.extend(names.iter().map(String::as_str));
    let exported = run(&export, &[("sample", image.view())], &outputs);
    check(
        "VAE encoder, exporting statistics",
        &exported[0],
        &sd_reference("vae.ldm.mean"),
        Precision::F32,
    );
    let mut inputs: Vec<(&str, ndarray::ArrayViewD<f32>)> = vec![("sample", image.view())];
    inputs.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(exported[1..].iter().map(|a| a.view())),
    );
    let same = run(&frozen, &inputs, &["latent_mean"]);
    check(
        "VAE encoder, own statistics frozen",
        &same[0],
        &sd_reference("vae.ldm.mean"),
        Precision::F32,
    );
    // Another image normalised with `image`'s statistics differs from its live encoding.
    inputs[0] = ("sample", other.view());
    let borrowed = run(&frozen, &inputs, &["latent_mean"]);
    let live = run(&vae.encoder, &[("sample", other.view())], &["latent_mean"]);
    assert!(
        max_abs(&borrowed[0], &live[0]) > 1e-2,
        "the frozen statistics are used"
    );

    // Decoder: the same round trip.
    let latent = sd_reference("vae.latent");
    let export = vae.with_stats(true, NormStats::Export).unwrap();
    let frozen = vae.with_stats(true, NormStats::Frozen).unwrap();
    let norms = tessera::onnx::decode(&export.onnx)
        .unwrap()
        .graph
        .unwrap()
        .output
        .len()
        - 1;
    let names: Vec<String> = (0..norms / 2)
        .flat_map(|k| [format!("groupnorm_{k}_mean"), format!("groupnorm_{k}_var")])
        .collect();
    let mut outputs = vec!["sample"];
    outputs.extend(names.iter().map(String::as_str));
    // The exporting decoder starts behind post_quant_conv, where Tiled VAE takes its proxy.
    let post_quant = vae.post_quant().unwrap();
    let decoder_input = run(
        &post_quant,
        &[("latent_sample", latent.view())],
        &["decoder_input"],
    );
    let exported = run(
        &export,
        &[("decoder_input", decoder_input[0].view())],
        &outputs,
    );
    check(
        "VAE decoder from post_quant_conv, exporting statistics",
        &exported[0],
        &sd_reference("vae.ldm.decoded"),
        Precision::F32,
    );
    let mut inputs: Vec<(&str, ndarray::ArrayViewD<f32>)> = vec![("latent_sample", latent.view())];
    inputs.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(exported[1..].iter().map(|a| a.view())),
    );
    let same = run(&frozen, &inputs, &["sample"]);
    check(
        "VAE decoder, own statistics frozen",
        &same[0],
        &sd_reference("vae.ldm.decoded"),
        Precision::F32,
    );
    // The fp16 graph folds the same f32 statistics into its scale and shift.
    let vae16 =
        CompiledVae::compile(&net, cache.path(), &options(Precision::F16, Some(TINY))).unwrap();
    let frozen16 = vae16.with_stats(true, NormStats::Frozen).unwrap();
    let same16 = run(&frozen16, &inputs, &["sample"]);
    check(
        "VAE decoder fp16, own statistics frozen",
        &same16[0],
        &sd_reference("vae.ldm.decoded"),
        Precision::F16,
    );
}
