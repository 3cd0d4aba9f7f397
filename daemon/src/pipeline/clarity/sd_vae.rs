//! The SD VAE of a model set as the stage's [`Vae`]: the plain encoder and decoder kept warm,
//! and, while a tiled pass runs, short-lived sessions of the graphs it needs besides them (the
//! statistics-exporting and statistics-frozen graphs, `post_quant_conv`, the encoder cut into
//! segments for Tiled VAE's colour fix).

use std::sync::Arc;

use ndarray::{Array2, Array4, ArrayD, ArrayView4, Ix4};

use super::network_traits::{
    Carried, GroupNormStats, GroupStats, NetResult, Norms, Segmented, StageError, Vae,
};
use crate::engine::{CompiledModel, Engine, EngineError, SharedSession};
use crate::nets::ModelError;
use crate::nets::vae::segments::Segment;
use crate::nets::vae::{CompiledVae, NormStats};

fn four(a: ArrayD<f32>, what: &str) -> NetResult<Array4<f32>> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| StageError::Unexpected(format!("{what}: {e}")))
}

/// The VAE; its graphs with exported or frozen GroupNorm statistics get short-lived sessions:
/// the statistics graph's ends with its one call, the frozen graph's with the tiled pass. A
/// tiled pass also sets its side's plain session aside (the job warms it again at its end).
pub struct SdVae {
    engine: Arc<Engine>,
    compiled: CompiledVae,
    /// The plain graphs' sessions, [encoder, decoder]; a tiled pass sets its side's aside.
    plain: [Option<SharedSession>; 2],
    /// The frozen-statistics graphs' sessions while a tiled pass runs: [encoder, decoder].
    frozen: [Option<(String, SharedSession)>; 2],
    /// The cut encoder's sessions while a colour-fixed encode runs.
    segments: Vec<SegmentSession>,
    /// `post_quant_conv` while a tiled decode runs.
    post_quant: Option<(String, SharedSession)>,
}

/// One segment of the cut encoder with its session.
struct SegmentSession {
    segment: Segment,
    name: String,
    session: SharedSession,
    gives_skip: bool,
}

fn compile_error(e: ModelError) -> StageError {
    match e {
        ModelError::Runtime(e) => StageError::Runtime(e),
        other => StageError::Unexpected(other.to_string()),
    }
}

impl SdVae {
    pub fn new(engine: Arc<Engine>, compiled: CompiledVae) -> Result<SdVae, EngineError> {
        let mut vae = SdVae {
            engine,
            compiled,
            plain: Default::default(),
            frozen: Default::default(),
            segments: Vec::new(),
            post_quant: None,
        };
        vae.warm()?;
        Ok(vae)
    }

    fn plain_model(&self, decoder: bool) -> &CompiledModel {
        if decoder {
            &self.compiled.decoder
        } else {
            &self.compiled.encoder
        }
    }

    /// Creates the plain graphs' sessions that a tiled pass set aside.
    pub fn warm(&mut self) -> Result<(), EngineError> {
        for decoder in [false, true] {
            self.plain_session(decoder)?;
        }
        Ok(())
    }

    /// Whether both plain graphs' sessions are held.
    pub fn is_warm(&self) -> bool {
        self.plain.iter().all(Option::is_some)
    }

    /// The graphs and weights this VAE runs.
    pub fn compiled(&self) -> &CompiledVae {
        &self.compiled
    }

    fn plain_session(&mut self, decoder: bool) -> Result<(String, SharedSession), EngineError> {
        let slot = usize::from(decoder);
        let model = self.plain_model(decoder);
        let name = model.name.clone();
        if let Some(s) = &self.plain[slot] {
            return Ok((name, s.clone()));
        }
        let session = self.engine.session(model)?;
        self.plain[slot] = Some(session.clone());
        Ok((name, session))
    }

    /// A new session of the graph with `stats` GroupNorm statistics, outside the engine's cache.
    fn stats_session(&self, decoder: bool, stats: NormStats) -> NetResult<(String, SharedSession)> {
        let model = self
            .compiled
            .with_stats(decoder, stats)
            .map_err(compile_error)?;
        let session = self.engine.short_lived_session(&model)?;
        Ok((model.name, session))
    }

    /// The cut encoder's sessions, created on first use.
    fn segment_sessions(&mut self) -> NetResult<&[SegmentSession]> {
        if self.segments.is_empty() {
            for segment in Segment::all(&self.compiled.config) {
                let model = self
                    .compiled
                    .segment(segment, NormStats::Frozen)
                    .map_err(compile_error)?;
                let session = self.engine.short_lived_session(&model)?;
                self.segments.push(SegmentSession {
                    segment,
                    name: model.name,
                    session,
                    gives_skip: segment.gives_skip(&self.compiled.config),
                });
            }
        }
        Ok(&self.segments)
    }

    fn frozen(&mut self, decoder: bool) -> NetResult<(String, SharedSession)> {
        let slot = usize::from(decoder);
        if self.frozen[slot].is_none() {
            self.frozen[slot] = Some(self.stats_session(decoder, NormStats::Frozen)?);
        }
        Ok(self.frozen[slot].clone().expect("set above"))
    }

    /// Runs `session` and returns every output by name.
    fn run(
        session: &SharedSession,
        name: &str,
        inputs: Vec<(String, ArrayD<f32>)>,
    ) -> NetResult<Vec<(String, ArrayD<f32>)>> {
        let views: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            inputs.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
        SdVae::run_views(session, name, &views)
    }

    fn run_views(
        session: &SharedSession,
        name: &str,
        views: &[(&str, ndarray::ArrayViewD<'_, f32>)],
    ) -> NetResult<Vec<(String, ArrayD<f32>)>> {
        let outputs: Vec<String> = {
            let s = session.lock().unwrap_or_else(|e| e.into_inner());
            s.outputs().iter().map(|o| o.name().to_owned()).collect()
        };
        let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let values = crate::nets::sd::run(session, name, views, &names)?;
        Ok(outputs.into_iter().zip(values).collect())
    }

    fn stats_of(outputs: &[(String, ArrayD<f32>)]) -> GroupNormStats {
        let mut layers = Vec::new();
        for k in 0.. {
            let get = |suffix: &str| {
                let name = format!("groupnorm_{k}_{suffix}");
                outputs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, a)| a.iter().copied().collect())
            };
            match (get("mean"), get("var")) {
                (Some(mean), Some(var)) => layers.push(GroupStats { mean, var }),
                _ => break,
            }
        }
        GroupNormStats { layers }
    }

    fn stats_inputs(stats: &GroupNormStats) -> Vec<(String, ArrayD<f32>)> {
        let mut inputs = Vec::new();
        for (k, layer) in stats.layers.iter().enumerate() {
            let g = layer.mean.len();
            for (suffix, values) in [("mean", &layer.mean), ("var", &layer.var)] {
                let a = Array2::from_shape_vec((1, g), values.clone()).expect("one row of g");
                inputs.push((format!("groupnorm_{k}_{suffix}"), a.into_dyn()));
            }
        }
        inputs
    }

    fn take(outputs: &mut Vec<(String, ArrayD<f32>)>, name: &str) -> NetResult<Array4<f32>> {
        let i = outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| StageError::Unexpected(format!("the VAE graph has no `{name}`")))?;
        four(outputs.swap_remove(i).1, name)
    }
}

impl Vae for SdVae {
    fn encode(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> NetResult<(Array4<f32>, Array4<f32>)> {
        let mut inputs = vec![("sample".to_owned(), image.to_owned().into_dyn())];
        let (name, session) = match norms {
            Norms::Own => self.plain_session(false)?,
            Norms::Frozen(stats) => {
                inputs.extend(SdVae::stats_inputs(stats));
                self.frozen(false)?
            }
        };
        let mut out = SdVae::run(&session, &name, inputs)?;
        Ok((
            SdVae::take(&mut out, "latent_mean")?,
            SdVae::take(&mut out, "latent_logvar")?,
        ))
    }

    fn encoder_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        let (name, session) = self.stats_session(false, NormStats::Export)?;
        let out = SdVae::run(
            &session,
            &name,
            vec![("sample".to_owned(), image.to_owned().into_dyn())],
        )?;
        Ok(SdVae::stats_of(&out))
    }

    fn decode(&mut self, latent: ArrayView4<f32>, norms: Norms<'_>) -> NetResult<Array4<f32>> {
        let mut inputs = vec![("latent_sample".to_owned(), latent.to_owned().into_dyn())];
        let (name, session) = match norms {
            Norms::Own => self.plain_session(true)?,
            Norms::Frozen(stats) => {
                inputs.extend(SdVae::stats_inputs(stats));
                self.frozen(true)?
            }
        };
        let mut out = SdVae::run(&session, &name, inputs)?;
        SdVae::take(&mut out, "sample")
    }

    fn post_quant(&mut self, latent: ArrayView4<f32>) -> NetResult<Array4<f32>> {
        if self.post_quant.is_none() {
            let model = self.compiled.post_quant().map_err(compile_error)?;
            let session = self.engine.short_lived_session(&model)?;
            self.post_quant = Some((model.name, session));
        }
        let (name, session) = self.post_quant.clone().expect("set above");
        let latent = latent.as_standard_layout();
        let mut out = SdVae::run_views(
            &session,
            &name,
            &[("latent_sample", latent.view().into_dyn())],
        )?;
        SdVae::take(&mut out, "decoder_input")
    }

    fn decoder_stats(&mut self, input: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        let (name, session) = self.stats_session(true, NormStats::Export)?;
        let input = input.as_standard_layout();
        let out = SdVae::run_views(
            &session,
            &name,
            &[("decoder_input", input.view().into_dyn())],
        )?;
        Ok(SdVae::stats_of(&out))
    }

    fn encoder_segments(&mut self) -> NetResult<usize> {
        Ok(Segment::all(&self.compiled.config).len())
    }

    fn encoder_head_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        let model = self
            .compiled
            .segment(Segment::Head, NormStats::Export)
            .map_err(compile_error)?;
        let session = self.engine.short_lived_session(&model)?;
        let image = image.as_standard_layout();
        let out = SdVae::run_views(
            &session,
            &model.name,
            &[("sample", image.view().into_dyn())],
        )?;
        Ok(SdVae::stats_of(&out))
    }

    fn encoder_segment(
        &mut self,
        index: usize,
        input: Carried,
        stats: &GroupNormStats,
    ) -> NetResult<Segmented> {
        let sessions = self.segment_sessions()?;
        let s = sessions
            .get(index)
            .ok_or_else(|| StageError::Unexpected(format!("the encoder has no segment {index}")))?;
        let (segment, name, session, gives_skip) =
            (s.segment, s.name.clone(), s.session.clone(), s.gives_skip);
        let mut named: Vec<(String, ArrayD<f32>)> = SdVae::stats_inputs(stats);
        if segment != Segment::Head {
            named.truncate(2);
        }
        let mut views: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            named.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
        let x_name = if segment == Segment::Head {
            "sample"
        } else {
            "x"
        };
        views.push((x_name, input.x.view().into_dyn()));
        if segment.takes_skip() {
            let skip = input.skip.as_ref().ok_or_else(|| {
                StageError::Unexpected(format!("segment {segment:?} needs the residual"))
            })?;
            views.push(("skip", skip.view().into_dyn()));
        }
        let mut out = SdVae::run_views(&session, &name, &views)?;
        drop(views);
        if segment == Segment::Output {
            return Ok(Segmented::Posterior(
                SdVae::take(&mut out, "latent_mean")?,
                SdVae::take(&mut out, "latent_logvar")?,
            ));
        }
        let x = SdVae::take(&mut out, "next_x")?;
        let skip = match segment {
            Segment::ResnetIn { .. } if gives_skip => Some(SdVae::take(&mut out, "next_skip")?),
            // The block's residual is its input.
            Segment::ResnetIn { .. } => Some(input.x),
            _ => None,
        };
        let get = |out: &[(String, ArrayD<f32>)], n: &str| -> NetResult<Vec<f32>> {
            out.iter()
                .find(|(name, _)| name == n)
                .map(|(_, a)| a.iter().copied().collect())
                .ok_or_else(|| StageError::Unexpected(format!("segment {segment:?} has no `{n}`")))
        };
        let next = GroupStats {
            mean: get(&out, "next_mean")?,
            var: get(&out, "next_var")?,
        };
        Ok(Segmented::State(Carried { x, skip }, next))
    }

    fn begin_tiles(&mut self, decoder: bool) {
        if self.plain[usize::from(decoder)].take().is_some() {
            self.engine.forget(self.plain_model(decoder));
        }
    }

    fn end_tiles(&mut self) {
        self.frozen = Default::default();
        self.segments.clear();
        self.post_quant = None;
    }
}
