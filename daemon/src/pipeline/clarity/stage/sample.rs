//! Steps 5 and 6 of a stage: the ControlNet's hint embedded for every batch of tiles, then
//! the sampler's steps, each over one MultiDiffusion evaluation, with the out-of-memory
//! retries that make a call smaller.

use ndarray::{Array3, ArrayView3};

use super::{Event, StageSetup, Work, shape};
use crate::Cancelled;
use crate::engine::{Recovery, Shrink, Shrinkable, retry_out_of_memory};
use crate::pipeline::clarity::denoise::{self, Guidance};
use crate::pipeline::clarity::network_traits::{ControlledUnet, NetResult, StageError};
use crate::pipeline::clarity::tiles::LatentTile;
use crate::pipeline::sampling::SamplerState;
use crate::pipeline::sampling::noise::{NoisePurpose, NoiseSource};
use crate::pipeline::sampling::schedule::Run;

/// Steps 5 and 6 of a stage: the hint embeddings, then the sampler's steps over
/// MultiDiffusion evaluations; returns the final latent.
///
/// Out of accelerator memory, an evaluation is done again with fewer tiles per call (the
/// result does not depend on it: the hints are embedded again for the smaller batches), then
/// with the failing network on the CPU.
#[allow(clippy::too_many_arguments)]
pub(super) fn sample(
    unet: &mut dyn ControlledUnet,
    condition: Array3<f32>,
    guidance: &Guidance<'_>,
    run: &Run,
    mut x: ndarray::ArrayD<f32>,
    dims: [usize; 4],
    setup: &StageSetup<'_>,
    noise: &mut dyn NoiseSource,
    recovery: &dyn Recovery,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> NetResult<ndarray::ArrayD<f32>> {
    let grid = guidance.tiles;
    let hint_pixels = (condition.shape()[1] * condition.shape()[2]) as f64 / grid.len() as f64;
    let mut hint_shrink = Shrink::default();
    embed_hints(
        unet,
        condition.view(),
        grid,
        guidance.batch,
        recovery,
        &mut hint_shrink,
        &mut |range| {
            report(Event {
                phase: "condition",
                step: 1,
                steps: 1,
                tile: range.end,
                tiles: grid.len(),
                work: range.len() as f64 * hint_pixels * Work::HINT_PER_PIXEL,
            })
        },
    )?;
    // The condition image is kept while a smaller batch may need its hints again (and the
    // configured one again once a network has moved to the CPU).
    let condition = (guidance.batch > 1).then_some(condition);
    let mut embedded_for = guidance.batch;

    // 6. The sampler's steps, each over one MultiDiffusion evaluation.
    let steps = run.evaluations();
    let eval_work: f64 = grid
        .iter()
        .map(|t| 2.0 * (t.w * t.h) as f64 * Work::UNET_PER_LATENT)
        .sum();
    let describe = |level: u32| {
        let b = (guidance.batch >> level).max(1);
        format!("{b} tile{} per call", if b == 1 { "" } else { "s" })
    };
    let batch_size = Shrinkable {
        levels: guidance.batch.max(1).ilog2(),
        describe: &describe,
    };
    let mut batch_shrink = Shrink::default();
    let mut state = SamplerState::new(setup.update);
    for i in 0..steps {
        let (sigma, next) = (run.sigmas[i], run.sigmas[i + 1]);
        let x4 = x
            .view()
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(shape)?;
        let mut reached = 0.0;
        let d = retry_out_of_memory(recovery, &mut batch_shrink, &batch_size, |level| {
            let g = Guidance {
                batch: (guidance.batch >> level).max(1),
                ..*guidance
            };
            if g.batch != embedded_for {
                let image = condition
                    .as_ref()
                    .ok_or_else(|| StageError::Unexpected("the condition image is gone".into()))?;
                embed_hints(
                    unet,
                    image.view(),
                    grid,
                    g.batch,
                    recovery,
                    &mut hint_shrink,
                    &mut |_| Ok(()),
                )?;
                embedded_for = g.batch;
            }
            let calls = denoise::calls_per_evaluation(&g);
            let mut done = 0;
            denoise::denoise(unet, x4, sigma, run.timesteps[i], &g, &mut || {
                done += 1;
                let fraction = done as f64 / calls as f64;
                let work = eval_work * (fraction - reached).max(0.0);
                reached = fraction.max(reached);
                report(Event {
                    phase: "denoise",
                    step: i + 1,
                    steps,
                    tile: (done * grid.len()).div_ceil(calls),
                    tiles: grid.len(),
                    work,
                })
            })
        })?;
        let xi = (setup.update.is_stochastic() && next > 0.0)
            .then(|| noise.noise(setup.index, NoisePurpose::Step(i), &dims));
        state.step(
            &mut x,
            d.into_dyn(),
            sigma,
            next,
            xi.as_ref().map(|n| n.view()),
        );
    }
    Ok(x)
}

/// Embeds the hints of `grid` in batches of `batch` tiles for the stage; `on_batch` follows
/// each batch. The hint encoder has no size to shrink: out of memory, it goes to the CPU.
#[allow(clippy::too_many_arguments)]
fn embed_hints(
    unet: &mut dyn ControlledUnet,
    condition: ArrayView3<f32>,
    grid: &[LatentTile],
    batch: usize,
    recovery: &dyn Recovery,
    shrink: &mut Shrink,
    on_batch: &mut dyn FnMut(std::ops::Range<usize>) -> Result<(), Cancelled>,
) -> NetResult<()> {
    for (index, (range, hints)) in denoise::hint_batches(condition, grid, batch).enumerate() {
        retry_out_of_memory(recovery, shrink, &Shrinkable::FIXED, |_| {
            unet.embed_hints(index, hints.view())
        })?;
        on_batch(range)?;
    }
    Ok(())
}
