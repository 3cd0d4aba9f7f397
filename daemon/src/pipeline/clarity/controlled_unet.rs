//! The UNet with the ControlNet tile as a stage runs them: everything a stage fixes (the text
//! contexts, the residual scales, each batch of tiles' hint embedding) is placed where the
//! networks compute once per stage, and an evaluation uploads the latents and the timestep,
//! runs the ControlNet body into resident residuals (scaled inside its graph), feeds them to
//! the UNet, and downloads the predicted noise. Nothing else crosses between host and device
//! (`crate::engine::binding`); [`SdUnet::traffic`] counts what did.

use std::sync::Arc;

use ndarray::{Array1, Array3, Array4, ArrayView2, ArrayView4, Axis};

use super::model_set::four;
use super::network_traits::{ControlledUnet, NetResult, Prompts, StageConditioning, StageError};
use crate::engine::Engine;
use crate::engine::binding::{Resident, Traffic};
use crate::nets::controlnet::{BodyInputs, ControlNet, SCALES};
use crate::nets::unet::Unet;

/// What a stage keeps with the networks.
struct Stage {
    cond: ndarray::Array2<f32>,
    uncond: ndarray::Array2<f32>,
    scales: Resident,
    /// The text context of each call shape a stage has used: (samples, prompts).
    contexts: Vec<((usize, Prompts), Resident)>,
    /// The hint embedding of each batch of tiles.
    embeddings: Vec<Option<Resident>>,
}

/// The UNet with the ControlNet tile (see the module docs).
pub struct SdUnet {
    engine: Arc<Engine>,
    unet: Unet,
    controlnet: ControlNet,
    stage: Option<Stage>,
    traffic: Traffic,
}

impl SdUnet {
    pub fn new(engine: Arc<Engine>, unet: Unet, controlnet: ControlNet) -> SdUnet {
        SdUnet {
            engine,
            unet,
            controlnet,
            stage: None,
            traffic: Traffic::default(),
        }
    }

    /// What crossed between host and device for this network pair so far (every upload of a
    /// stage's conditioning, every evaluation's latents).
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn stage(&mut self) -> NetResult<&mut Stage> {
        self.stage
            .as_mut()
            .ok_or_else(|| StageError::Unexpected("no stage was begun".into()))
    }

    /// The resident context `[n, L, C]` for `n` samples taking `prompts`, uploaded on first use.
    fn context(&mut self, n: usize, prompts: Prompts) -> NetResult<usize> {
        let stage = self.stage.as_ref().expect("checked by the caller");
        if let Some(i) = stage.contexts.iter().position(|(k, _)| *k == (n, prompts)) {
            return Ok(i);
        }
        let half = n / 2;
        let rows: Vec<ArrayView2<f32>> = (0..n)
            .map(|i| match prompts {
                Prompts::Cond => stage.cond.view(),
                Prompts::Uncond => stage.uncond.view(),
                Prompts::Both if i < half => stage.cond.view(),
                Prompts::Both => stage.uncond.view(),
            })
            .collect();
        let (l, c) = rows[0].dim();
        if rows.iter().any(|r| r.dim() != (l, c)) {
            return Err(StageError::Unexpected(
                "cond and uncond of different lengths cannot share a call".into(),
            ));
        }
        let mut context = Array3::<f32>::zeros((n, l, c));
        for (i, r) in rows.iter().enumerate() {
            context.index_axis_mut(Axis(0), i).assign(r);
        }
        let (resident, traffic) = self
            .controlnet
            .upload("encoder_hidden_states", context.view().into_dyn())?;
        self.traffic += traffic;
        let stage = self.stage()?;
        stage.contexts.push(((n, prompts), resident));
        Ok(stage.contexts.len() - 1)
    }
}

impl ControlledUnet for SdUnet {
    fn begin_stage(&mut self, conditioning: &StageConditioning<'_>) -> NetResult<()> {
        let scales = Array1::from(conditioning.scales.to_vec()).into_dyn();
        let (scales, traffic) = self.controlnet.upload(SCALES, scales.view())?;
        self.traffic += traffic;
        self.stage = Some(Stage {
            cond: conditioning.cond.to_owned(),
            uncond: conditioning.uncond.to_owned(),
            scales,
            contexts: Vec::new(),
            embeddings: Vec::new(),
        });
        Ok(())
    }

    fn embed_hints(&mut self, batch: usize, hints: ArrayView4<f32>) -> NetResult<()> {
        self.stage()?;
        let hints = hints.as_standard_layout();
        let (embedding, traffic) = self
            .controlnet
            .embed_hint_resident(hints.view().into_dyn())?;
        self.traffic += traffic;
        let stage = self.stage()?;
        if stage.embeddings.len() <= batch {
            stage.embeddings.resize_with(batch + 1, || None);
        }
        stage.embeddings[batch] = Some(embedding);
        Ok(())
    }

    fn predict(
        &mut self,
        batch: usize,
        sample: ArrayView4<f32>,
        timestep: f32,
        prompts: Prompts,
    ) -> NetResult<Array4<f32>> {
        self.stage()?;
        let n = sample.len_of(Axis(0));
        let context = self.context(n, prompts)?;
        let sample = sample.as_standard_layout();
        let (sample, up_sample) = self.controlnet.upload("sample", sample.view().into_dyn())?;
        let t = Array1::from_elem(n, timestep).into_dyn();
        let (timestep, up_timestep) = self.controlnet.upload("timestep", t.view())?;
        let stage = self.stage.as_ref().expect("checked above");
        let embedding = stage
            .embeddings
            .get(batch)
            .and_then(Option::as_ref)
            .ok_or_else(|| StageError::Unexpected(format!("batch {batch} has no hints")))?;
        let (residuals, body) = self.controlnet.residuals_resident(&BodyInputs {
            sample: &sample,
            timestep: &timestep,
            context: &stage.contexts[context].1,
            embedding,
            scales: &stage.scales,
        })?;
        let (eps, unet) = self.unet.forward_resident(
            &self.engine,
            &sample,
            &timestep,
            &stage.contexts[context].1,
            &residuals,
        )?;
        for t in [up_sample, up_timestep, body, unet] {
            self.traffic += t;
        }
        four(eps, "UNet output")
    }

    fn end_stage(&mut self) {
        self.stage = None;
    }
}
