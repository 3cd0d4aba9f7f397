//! The job parameters' defaults and ranges as a Python module, so that the Python client and
//! the editor plug-ins take them from here instead of repeating them:
//! `shared/python/tessera_client/params_table.py` is [`table`]'s output, committed;
//! `shared/tests/params_table.rs` fails when it is stale, and
//! `cargo run -p tessera-protocol --example write_params_table` rewrites it.

use super::{JobParams, LoraWeight, Region, limits};
use std::fmt::Write;
use std::ops::RangeInclusive;

/// Where the table lives, relative to the `shared/` crate.
pub const TABLE_PATH: &str = "python/tessera_client/params_table.py";

/// The command that rewrites the table.
pub const REGENERATE: &str = "cargo run -p tessera-protocol --example write_params_table";

/// The whole Python module.
pub fn table() -> String {
    let defaults = fields(&JobParams::default());
    let refiners = fields(&JobParams::refiners());
    let mut out = String::new();
    out.push_str(&format!(
        "# Generated from the Rust crate tessera-protocol (shared/src/params.rs): do not edit.\n\
         # `cargo test -p tessera-protocol --test params_table` checks it; after changing a\n\
         # default or a range there, rewrite it with\n\
         #     {REGENERATE}\n"
    ));
    out.push_str(
        "\"\"\"The job parameters' defaults and accepted ranges, as the daemon has them: the\n\
         one source for ``JobParams`` and for the plug-ins' controls.\"\"\"\n\n",
    );
    out.push_str(
        "#: ``JobParams()``: Clarity's defaults, by field, in wire order (enums by tag).\n",
    );
    out.push_str("DEFAULTS = {\n");
    for (name, value) in &defaults {
        writeln!(out, "    {}: {value},", python_str(name)).unwrap();
    }
    out.push_str("}\n\n");
    out.push_str("#: What ``JobParams.refiners()`` changes: the Refiners library's defaults.\n");
    out.push_str("REFINERS = {\n");
    for ((name, value), (_, default)) in refiners.iter().zip(&defaults) {
        if value != default {
            writeln!(out, "    {}: {value},", python_str(name)).unwrap();
        }
    }
    out.push_str("}\n\n");
    out.push_str(
        "#: The accepted values of each numeric field, inclusive: (lowest, highest). Outside\n\
         #: them the daemon refuses the job (``INVALID_PARAMS``).\n",
    );
    out.push_str("RANGES = {\n");
    let ranges = [
        ("scale", float_range(limits::SCALE)),
        ("creativity", float_range(limits::CREATIVITY)),
        ("resemblance", float_range(limits::RESEMBLANCE)),
        ("dynamic", float_range(limits::DYNAMIC)),
        ("tile_width", int_range(limits::TILE)),
        ("tile_height", int_range(limits::TILE)),
        ("steps", int_range(limits::STEPS)),
        ("decay", float_range(limits::DECAY)),
        ("multistep_factor", float_range(limits::MULTISTEP_FACTOR)),
        ("sharpen", float_range(limits::SHARPEN)),
        ("lora_weight", float_range(limits::LORA_WEIGHT)),
    ];
    for (name, range) in ranges {
        writeln!(out, "    {}: {range},", python_str(name)).unwrap();
    }
    out.push_str("}\n\n");
    out.push_str("#: Tile sides are multiples of this many latents.\n");
    writeln!(out, "TILE_MULTIPLE = {}", limits::TILE_MULTIPLE).unwrap();
    out
}

/// Every field of `params` as (name, Python literal), in wire order. Destructured, so that a
/// new field does not compile until it is written here.
fn fields(params: &JobParams) -> Vec<(&'static str, String)> {
    let JobParams {
        scale,
        upscaler,
        preset,
        creativity,
        resemblance,
        dynamic,
        tile_width,
        tile_height,
        steps,
        seed,
        prompt,
        negative_prompt,
        sampler,
        decay,
        multistep_factor,
        checkpoint,
        vae,
        controlnet,
        loras,
        sharpen,
        preview,
    } = params;
    vec![
        ("scale", float(*scale)),
        ("upscaler", optional_str(upscaler.as_deref())),
        // Fieldless enums: the discriminant is the wire tag (declaration order).
        ("preset", (*preset as u8).to_string()),
        ("creativity", float(*creativity)),
        ("resemblance", float(*resemblance)),
        ("dynamic", float(*dynamic)),
        ("tile_width", tile_width.to_string()),
        ("tile_height", tile_height.to_string()),
        ("steps", steps.to_string()),
        ("seed", seed.to_string()),
        ("prompt", python_str(prompt)),
        ("negative_prompt", python_str(negative_prompt)),
        ("sampler", (*sampler as u8).to_string()),
        ("decay", float(*decay)),
        ("multistep_factor", float(*multistep_factor)),
        ("checkpoint", optional_str(checkpoint.as_deref())),
        ("vae", optional_str(vae.as_deref())),
        ("controlnet", optional_str(controlnet.as_deref())),
        ("loras", lora_list(loras)),
        ("sharpen", float(*sharpen)),
        ("preview", region(preview.as_ref())),
    ]
}

/// The shortest decimal that reads back as the same `f32` (what the Python codec sends as
/// that `f32`), always with a point: `2.0`, `0.35`.
fn float(value: f32) -> String {
    format!("{value:?}")
}

fn float_range(range: RangeInclusive<f32>) -> String {
    format!("({}, {})", float(*range.start()), float(*range.end()))
}

fn int_range(range: RangeInclusive<u32>) -> String {
    format!("({}, {})", range.start(), range.end())
}

fn optional_str(value: Option<&str>) -> String {
    value.map_or_else(|| "None".to_owned(), python_str)
}

fn lora_list(loras: &[LoraWeight]) -> String {
    let items: Vec<String> = loras
        .iter()
        .map(|l| format!("({}, {})", python_str(&l.name), float(l.weight)))
        .collect();
    format!("[{}]", items.join(", "))
}

fn region(value: Option<&Region>) -> String {
    value.map_or_else(
        || "None".to_owned(),
        |r| format!("({}, {}, {}, {})", r.x, r.y, r.width, r.height),
    )
}

/// A double-quoted Python string literal, ASCII only.
fn python_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => write!(out, "\\U{:08x}", c as u32).unwrap(),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_in_python_as_written() {
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(0.35), "0.35");
        assert_eq!(float(0.825), "0.825");
        assert_eq!(
            python_str("a \"b\" \\ é\n😀"),
            "\"a \\\"b\\\" \\\\ \\u00e9\\u000a\\U0001f600\""
        );
        assert_eq!(optional_str(None), "None");
    }
}
