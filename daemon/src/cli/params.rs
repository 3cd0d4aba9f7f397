//! The job flags of `tessera upscale`: Clarity's parameter names in kebab-case, each one
//! optional so that `--preset` supplies every value the user does not give.

use clap::{Args, ValueEnum};
use tessera_protocol::{JobParams, LoraWeight, Region, Sampler};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// The Clarity upscaler's pipeline and defaults
    Clarity,
    /// The Refiners library's MultiUpscaler: one pass, DPM-Solver++ 2M, its tile rule, no prompt emphasis
    Refiners,
    /// The upscaler alone (ESRGAN, then Lanczos): no diffusion, no SD models needed
    Upscaler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// DPM++ 3M SDE Karras (Clarity's default)
    #[value(name = "dpmpp-3m-sde-karras")]
    DpmPp3mSdeKarras,
    /// DPM++ 2M Karras (A1111)
    #[value(name = "dpmpp-2m-karras")]
    DpmPp2mKarras,
    /// DPM-Solver++ 2M on linear timesteps (Refiners' default)
    #[value(name = "dpmpp-2m")]
    DpmPp2m,
    /// DDIM (the Refiners Space's default)
    Ddim,
}

/// Job parameters on the command line.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Pipeline and defaults for every flag not given
    #[arg(long, value_enum, default_value = "clarity")]
    pub preset: PresetArg,
    /// Output size ÷ input size, 1 to 16 [default: 2]
    #[arg(long)]
    pub scale: Option<f32>,
    /// Denoising strength, 0 to 1; 0 runs the upscaler alone [default: 0.35]
    #[arg(long)]
    pub creativity: Option<f32>,
    /// ControlNet tile weight, 0 to 3 [default: 0.6]
    #[arg(long)]
    pub resemblance: Option<f32>,
    /// Classifier-free guidance scale, 1 to 50 [default: 6]
    #[arg(long)]
    pub dynamic: Option<f32>,
    /// Diffusion tile width in latents (8 px), 16 to 256, a multiple of 8 [default: 112]
    #[arg(long)]
    pub tile_width: Option<u32>,
    /// Diffusion tile height in latents (8 px), 16 to 256, a multiple of 8 [default: 144]
    #[arg(long)]
    pub tile_height: Option<u32>,
    /// Sampler steps of a full denoise, 1 to 100 [default: 18]
    #[arg(long)]
    pub steps: Option<u32>,
    /// Noise seed [default: 1337; refiners: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompt, in A1111 syntax with <lora:name:weight> tags [default: Clarity's]
    #[arg(long)]
    pub prompt: Option<String>,
    /// Negative prompt [default: Clarity's]
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Sampler [default: dpmpp-3m-sde-karras; refiners: dpmpp-2m]
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// ControlNet residual decay per block, 0 to 1 [default: 0.825]
    #[arg(long)]
    pub decay: Option<f32>,
    /// Creativity multiplier per extra ×2 stage, 0 to 2 [default: 0.8]
    #[arg(long)]
    pub multistep_factor: Option<f32>,
    /// Checkpoint in models/checkpoints/ [default: the daemon's]
    #[arg(long, value_name = "NAME")]
    pub checkpoint: Option<String>,
    /// VAE in models/vae/, or `checkpoint` for the checkpoint's own [default: the daemon's]
    #[arg(long, value_name = "NAME")]
    pub vae: Option<String>,
    /// ControlNet in models/controlnet/ [default: the daemon's]
    #[arg(long, value_name = "NAME")]
    pub controlnet: Option<String>,
    /// Upscaler in models/upscalers/, with or without extension [default: the daemon's]
    #[arg(long, alias = "model", value_name = "NAME")]
    pub upscaler: Option<String>,
    /// A LoRA in models/loras/ besides the prompt's tags; repeatable
    #[arg(long, value_name = "NAME:WEIGHT", value_parser = parse_lora)]
    pub lora: Vec<LoraWeight>,
    /// Sharpening of the result, 0 to 10 [default: 0]
    #[arg(long)]
    pub sharpen: Option<f32>,
    /// Only this rectangle of the result (pixels of the result: left, top, width, height),
    /// computed from the part of the input around it: a quick look before the whole job
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_region)]
    pub preview: Option<Region>,
}

/// `X,Y,W,H` in pixels of the result.
pub fn parse_region(text: &str) -> Result<Region, String> {
    let numbers: Vec<u32> = text
        .split(',')
        .map(|v| v.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("“{text}” is not four whole numbers; write X,Y,W,H"))?;
    let [x, y, width, height] = numbers[..] else {
        return Err(format!("“{text}” is not four numbers; write X,Y,W,H"));
    };
    if width == 0 || height == 0 {
        return Err("the preview's width and height must be at least 1".into());
    }
    Ok(Region {
        x,
        y,
        width,
        height,
    })
}

/// `NAME:WEIGHT`, the weight after the last colon; `NAME` alone means weight 1.
pub fn parse_lora(text: &str) -> Result<LoraWeight, String> {
    let (name, weight) = match text.rsplit_once(':') {
        Some((name, weight)) => {
            let weight: f32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("“{weight}” is not a number; write NAME:WEIGHT"))?;
            (name, weight)
        }
        None => (text, 1.0),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("the LoRA name is empty; write NAME:WEIGHT".into());
    }
    Ok(LoraWeight {
        name: name.to_owned(),
        weight,
    })
}

impl JobArgs {
    /// The preset's parameters with every given flag applied.
    pub fn to_params(&self) -> JobParams {
        let base = match self.preset {
            PresetArg::Clarity => JobParams::default(),
            PresetArg::Refiners => JobParams::refiners(),
            PresetArg::Upscaler => JobParams::upscaler_only(2.0, None),
        };
        let sampler = self.sampler.map(|s| match s {
            SamplerArg::DpmPp3mSdeKarras => Sampler::DpmPp3mSdeKarras,
            SamplerArg::DpmPp2mKarras => Sampler::DpmPp2mKarras,
            SamplerArg::DpmPp2m => Sampler::DpmPp2m,
            SamplerArg::Ddim => Sampler::Ddim,
        });
        let mut loras = base.loras.clone();
        loras.extend(self.lora.iter().cloned());
        JobParams {
            scale: self.scale.unwrap_or(base.scale),
            upscaler: self.upscaler.clone().or(base.upscaler),
            preset: base.preset,
            creativity: self.creativity.unwrap_or(base.creativity),
            resemblance: self.resemblance.unwrap_or(base.resemblance),
            dynamic: self.dynamic.unwrap_or(base.dynamic),
            tile_width: self.tile_width.unwrap_or(base.tile_width),
            tile_height: self.tile_height.unwrap_or(base.tile_height),
            steps: self.steps.unwrap_or(base.steps),
            seed: self.seed.unwrap_or(base.seed),
            prompt: self.prompt.clone().unwrap_or(base.prompt),
            negative_prompt: self.negative_prompt.clone().unwrap_or(base.negative_prompt),
            sampler: sampler.unwrap_or(base.sampler),
            decay: self.decay.unwrap_or(base.decay),
            multistep_factor: self.multistep_factor.unwrap_or(base.multistep_factor),
            checkpoint: self.checkpoint.clone().or(base.checkpoint),
            vae: self.vae.clone().or(base.vae),
            controlnet: self.controlnet.clone().or(base.controlnet),
            loras,
            sharpen: self.sharpen.unwrap_or(base.sharpen),
            preview: self.preview.or(base.preview),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tessera_protocol::Preset;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        job: JobArgs,
    }

    fn params(args: &[&str]) -> JobParams {
        let mut argv = vec!["tessera"];
        argv.extend(args);
        Cli::try_parse_from(argv).unwrap().job.to_params()
    }

    #[test]
    fn no_flags_are_clarity_defaults() {
        assert_eq!(params(&[]), JobParams::default());
        assert_eq!(params(&["--preset", "refiners"]), JobParams::refiners());
        assert_eq!(params(&["--preset", "upscaler"]).preset, Preset::Upscaler);
    }

    #[test]
    fn flags_override_the_preset() {
        let p = params(&[
            "--preset",
            "refiners",
            "--scale",
            "3",
            "--creativity",
            "0.5",
            "--tile-width",
            "64",
            "--sampler",
            "ddim",
            "--lora",
            "more_details:0.5",
            "--lora",
            "a:b:-1",
            "--model",
            "4x-UltraSharp",
            "--negative-prompt",
            "",
        ]);
        assert_eq!(p.preset, Preset::Refiners);
        assert_eq!((p.scale, p.creativity, p.tile_width), (3.0, 0.5, 64));
        assert_eq!(p.tile_height, 144);
        assert_eq!(p.sampler, Sampler::Ddim);
        assert_eq!(p.upscaler.as_deref(), Some("4x-UltraSharp"));
        assert_eq!(p.negative_prompt, "");
        assert_eq!(
            p.loras,
            [
                LoraWeight {
                    name: "more_details".into(),
                    weight: 0.5
                },
                LoraWeight {
                    name: "a:b".into(),
                    weight: -1.0
                }
            ]
        );
    }

    #[test]
    fn a_preview_is_four_numbers() {
        assert_eq!(
            params(&["--preview", "10, 20,30,40"]).preview,
            Some(Region {
                x: 10,
                y: 20,
                width: 30,
                height: 40
            })
        );
        assert!(parse_region("1,2,3").is_err());
        assert!(parse_region("1,2,0,4").is_err());
        assert!(parse_region("a,b,c,d").unwrap_err().contains("X,Y,W,H"));
    }

    #[test]
    fn bad_lora_flags_say_how_to_write_them() {
        assert!(parse_lora("x:heavy").unwrap_err().contains("NAME:WEIGHT"));
        assert!(parse_lora(":1").is_err());
        assert_eq!(parse_lora("plain").unwrap().weight, 1.0);
    }
}
