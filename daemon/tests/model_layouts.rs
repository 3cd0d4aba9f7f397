//! The default model files as they really are, in tiny form (`tests/fixtures/layouts/`,
//! written by `gen_layouts.py`; what each real file holds is in `docs/models.md`): every file
//! loads and its networks compile and run; the tensors no network uses are skipped and counted;
//! a missing tensor or a foreign pickle global is an error that names it.

mod common;
mod sd_common;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4};
use sd_common::{TINY, sd_fixture};
use tessera::nets::ModelError;
use tessera::nets::clip::{self, ClipOptions, TextEncoder};
use tessera::nets::controlnet::CompiledControlNet;
use tessera::nets::sd::{Precision, SdOptions};
use tessera::nets::unet::CompiledUnet;
use tessera::nets::vae::CompiledVae;
use tessera::pipeline::clarity::model_set::SdVae;
use tessera::pipeline::clarity::network_traits::{Norms, Vae};
use tessera::weights::lora::{Lora, LoraPatch, LoraTarget};
use tessera::weights::sd;
use tessera::weights::{SourceFile, WeightsError};

/// An engine to share (`SdVae` holds one).
fn engine() -> std::sync::Arc<tessera::engine::Engine> {
    static ENGINE: std::sync::OnceLock<std::sync::Arc<tessera::engine::Engine>> =
        std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut options = tessera::engine::EngineOptions::new(std::env::temp_dir());
            options.ort_lib = Some(common::ort_lib());
            options.intra_threads = Some(1);
            std::sync::Arc::new(tessera::engine::Engine::new(options).unwrap())
        })
        .clone()
}

fn layout(name: &str) -> PathBuf {
    common::repo_root()
        .join("tests/fixtures/layouts")
        .join(name)
}

fn options() -> SdOptions<'static> {
    SdOptions {
        precision: Precision::F32,
        config: Some(TINY),
        patch: None,
    }
}

const SCHEDULE: [&str; 12] = [
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "betas",
    "log_one_minus_alphas_cumprod",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_pruned_fp16_checkpoint_loads_and_skips_its_buffers() {
    let path = layout("sd15-pruned-fp16.safetensors");
    let source = SourceFile::open(&path).unwrap();
    // 0-dimensional EMA counters, int32 and float16, and the int64 position_ids read fine.
    assert_eq!(
        source.tensors().get("model_ema.decay").unwrap().shape,
        [0usize; 0]
    );
    let mut expected: Vec<String> = SCHEDULE.iter().map(|s| s.to_string()).collect();
    expected.extend([
        "cond_stage_model.transformer.text_model.embeddings.position_ids".to_owned(),
        "model_ema.decay".to_owned(),
        "model_ema.num_updates".to_owned(),
    ]);
    let expected = sorted(expected);

    let cache = tempfile::tempdir().unwrap();
    let unet = sd::unet(&path).unwrap();
    assert_eq!(sorted(unet.unused.clone()), expected);
    unet.log_unused("checkpoint");
    // The UNet is tiny-ldm's, halved: the same tensors under the same canonical names.
    let plain = sd::unet(&sd_fixture("tiny-ldm.safetensors")).unwrap();
    assert_eq!(
        unet.tensors.keys().collect::<Vec<_>>(),
        plain.tensors.keys().collect::<Vec<_>>()
    );
    CompiledUnet::compile(&unet, cache.path(), &options()).unwrap();

    let vae = sd::vae(&path).unwrap();
    assert_eq!(sorted(vae.unused.clone()), expected);
    let compiled = CompiledVae::compile(&vae, cache.path(), &options()).unwrap();
    let mut vae = SdVae::new(engine(), compiled).unwrap();
    let latent = Array4::from_shape_fn((1, 4, 4, 6), |(_, c, y, x)| (c + y + x) as f32 * 0.1);
    let image = vae.decode(latent.view(), Norms::Own).unwrap();
    assert!(image.iter().all(|v| v.is_finite()));

    // SD 1.5's twelve text-encoder layers, read past the float16 buffers around them.
    let (_, canonical, config) = clip::open(&path).unwrap();
    assert_eq!(config.layers, 12);
    assert!(!canonical.contains("text_model.embeddings.position_ids"));
    let compiled = clip::compile(&path, &[], &ClipOptions::default(), cache.path()).unwrap();
    let mut text = TextEncoder::from_compiled(&engine(), compiled).unwrap();
    let ids = Array2::from_shape_fn((1, 77), |(_, i)| (i % 90) as i64);
    let out = text.encode(ids.view()).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn a_standalone_vae_skips_its_ema_counters() {
    let path = layout("vae-ema-pruned.safetensors");
    let vae = sd::vae(&path).unwrap();
    assert_eq!(
        sorted(vae.unused.clone()),
        ["model_ema.decay", "model_ema.num_updates"]
    );
    let cache = tempfile::tempdir().unwrap();
    CompiledVae::compile(&vae, cache.path(), &options()).unwrap();
}

#[test]
fn kohya_loras_with_and_without_alpha_reach_every_module() {
    let path = layout("sd15-pruned-fp16.safetensors");
    let unet = sd::unet(&path).unwrap();
    let (_, te, _) = clip::open(&path).unwrap();
    for file in ["lora-kohya.safetensors", "lora-kohya-no-alpha.safetensors"] {
        let lora = Lora::open(&layout(file)).unwrap();
        // Every transformer block's Linear layers and proj_in/out of the UNet (3 levels down,
        // 1 mid, 3 up, as SD 1.5), and six layers in each of the 12 text-encoder layers.
        let unet_modules = lora.module_count(LoraTarget::Unet);
        assert_eq!(lora.module_count(LoraTarget::TextEncoder), 12 * 6, "{file}");
        let patch = LoraPatch::resolve(&[(&lora, 0.5)], LoraTarget::Unet, &unet.tensors).unwrap();
        assert_eq!(patch.patched().count(), unet_modules, "{file}");
        let cache = tempfile::tempdir().unwrap();
        let with = SdOptions {
            patch: Some(&patch),
            ..options()
        };
        CompiledUnet::compile(&unet, cache.path(), &with).unwrap();
        let patch = LoraPatch::resolve(&[(&lora, 0.5)], LoraTarget::TextEncoder, &te).unwrap();
        assert_eq!(patch.patched().count(), 12 * 6, "{file}");
    }
}

#[test]
fn a_controlnet_state_dict_as_torch_save_writes_it_loads() {
    let net = sd::controlnet(&layout("control-v11-state-dict.pth")).unwrap();
    assert!(net.unused.is_empty());
    let plain = sd::controlnet(&sd_fixture("tiny-controlnet.pth")).unwrap();
    assert_eq!(
        net.tensors.keys().collect::<Vec<_>>(),
        plain.tensors.keys().collect::<Vec<_>>()
    );
    let cache = tempfile::tempdir().unwrap();
    CompiledControlNet::compile(&net, cache.path(), &options()).unwrap();
}

/// `file` with `drop` removed, as a safetensors file in `dir`.
fn without(file: &Path, drop: &str, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != drop)
        .collect();
    assert_eq!(views.len() + 1, st.len(), "`{drop}` is in the file");
    let out = dir.join(file.file_name().unwrap());
    safetensors::serialize_to_file(views, None, &out).unwrap();
    out
}

#[test]
fn a_missing_tensor_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let path = layout("sd15-pruned-fp16.safetensors");
    let name = "model.diffusion_model.out.2.weight";
    let broken = without(&path, name, dir.path());
    let error = sd::unet(&broken)
        .map_err(ModelError::from)
        .and_then(|net| CompiledUnet::compile(&net, cache.path(), &options()).map(|_| ()))
        .unwrap_err()
        .to_string();
    // The UNet's output convolution, under its canonical name.
    assert!(error.contains("conv_out.weight"), "{error}");
    let name = "first_stage_model.decoder.conv_out.bias";
    let broken = without(&path, name, dir.path());
    let error = sd::vae(&broken)
        .map_err(ModelError::from)
        .and_then(|net| CompiledVae::compile(&net, cache.path(), &options()).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("decoder.conv_out.bias"), "{error}");
}

#[test]
fn a_foreign_pickle_global_is_an_error_that_names_it() {
    for load in [sd::controlnet, sd::vae, sd::unet] {
        match load(&common::fixture("foreign-global.pth")) {
            Err(WeightsError::ForeignGlobal { global, .. }) => assert_eq!(global, "posix.system"),
            other => panic!("expected ForeignGlobal, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn the_other_default_formats_load_with_what_they_skip_named() {
    // RealESRGAN_x4plus.pth: BasicSR's {"params", "params_ema"}; the EMA weights are used and
    // the raw ones are named as skipped.
    let esrgan = common::fixture("tiny-x4-realesrgan.pth");
    let source = SourceFile::open(&esrgan).unwrap();
    assert_eq!(source.skipped(), ["params"]);
    let cache = tempfile::tempdir().unwrap();
    tessera::nets::esrgan::Esrgan::compile(&esrgan, cache.path()).unwrap();
    // A state dict with nothing beside it skips nothing.
    let plain = SourceFile::open(&common::fixture("tiny-x4-old.pth")).unwrap();
    assert!(plain.skipped().is_empty());
    // JuggernautNegative-neg.pt: every entry A1111's `Embedding.save` writes; the vectors are
    // read, the bookkeeping entries (name, step, checkpoint hash and name) are not tensors.
    let neg = common::repo_root().join("tests/fixtures/clip/tiny-neg.pt");
    let ti = tessera::weights::embedding::TextualInversion::load(&neg).unwrap();
    assert_eq!((ti.len(), ti.width()), (3, 64));
}
