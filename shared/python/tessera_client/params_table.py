# Generated from the Rust crate tessera-protocol (shared/src/params.rs): do not edit.
# `cargo test -p tessera-protocol --test params_table` checks it; after changing a
# default or a range there, rewrite it with
#     cargo run -p tessera-protocol --example write_params_table
"""The job parameters' defaults and accepted ranges, as the daemon has them: the
one source for ``JobParams`` and for the plug-ins' controls."""

#: ``JobParams()``: Clarity's defaults, by field, in wire order (enums by tag).
DEFAULTS = {
    "scale": 2.0,
    "upscaler": None,
    "preset": 0,
    "creativity": 0.35,
    "resemblance": 0.6,
    "dynamic": 6.0,
    "tile_width": 112,
    "tile_height": 144,
    "steps": 18,
    "seed": 1337,
    "prompt": "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>",
    "negative_prompt": "(worst quality, low quality, normal quality:2) JuggernautNegative-neg",
    "sampler": 0,
    "decay": 0.825,
    "multistep_factor": 0.8,
    "checkpoint": None,
    "vae": None,
    "controlnet": None,
    "loras": [],
    "sharpen": 0.0,
    "preview": None,
}

#: What ``JobParams.refiners()`` changes: the Refiners library's defaults.
REFINERS = {
    "preset": 1,
    "seed": 42,
    "prompt": "masterpiece, best quality, highres",
    "negative_prompt": "worst quality, low quality, normal quality",
    "sampler": 2,
}

#: The accepted values of each numeric field, inclusive: (lowest, highest). Outside
#: them the daemon refuses the job (``INVALID_PARAMS``).
RANGES = {
    "scale": (1.0, 16.0),
    "creativity": (0.0, 1.0),
    "resemblance": (0.0, 3.0),
    "dynamic": (1.0, 50.0),
    "tile_width": (16, 256),
    "tile_height": (16, 256),
    "steps": (1, 100),
    "decay": (0.0, 1.0),
    "multistep_factor": (0.0, 2.0),
    "sharpen": (0.0, 10.0),
    "lora_weight": (-10.0, 10.0),
}

#: Tile sides are multiples of this many latents.
TILE_MULTIPLE = 8
