//! The VRAM budget the warm sessions are held to: what a session is estimated to hold (its
//! weights, read from the graph, at their stored precision, plus an allowance), the default
//! budget (the device's free memory less a margin for activations), the `engine.vram_budget`
//! setting, and which cached sessions to set aside when a new one would not fit.
//! `docs/gpu.md` has the arithmetic for the default Clarity job on an 8 GB card.

use crate::onnx::proto::TensorProto;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Held by every session besides its weights: cuDNN and cuBLAS handles and workspaces, kernels
/// and the arena's rounding.
pub const SESSION_OVERHEAD: u64 = 64 * MIB;

/// Bytes of the weights a graph's initializers hold (external data by its `length`, embedded
/// data by its size), at the precision they are stored in. A graph that does not decode
/// counts as none.
pub fn weight_bytes(onnx: &[u8]) -> u64 {
    let Ok(model) = crate::onnx::decode(onnx) else {
        return 0;
    };
    model
        .graph
        .map_or(0, |g| g.initializer.iter().map(tensor_bytes).sum())
}

fn tensor_bytes(t: &TensorProto) -> u64 {
    if let Some(length) = t
        .external_data
        .iter()
        .find(|e| e.key == "length")
        .and_then(|e| e.value.parse().ok())
    {
        return length;
    }
    let elements: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    let element = match t.data_type {
        10 | 16 | 4 | 5 => 2, // f16, bf16, u16, i16
        2 | 3 | 9 => 1,       // u8, i8, bool
        7 | 11 | 13 => 8,     // i64, f64, u64
        _ => 4,
    };
    (t.raw_data.len() as u64).max(elements * element)
}

/// What a session of `onnx` is estimated to hold on its device: its weights, 1/20 on top for
/// what the runtime adds to them (prepacked copies, alignment), and [`SESSION_OVERHEAD`].
pub fn session_bytes(onnx: &[u8]) -> u64 {
    let weights = weight_bytes(onnx);
    weights + weights / 20 + SESSION_OVERHEAD
}

/// What the default budget leaves free on the device for the activations of the largest call
/// and the runtime's own memory: 1.5 GiB, or a tenth of a large device.
pub fn margin(total: u64) -> u64 {
    (3 * GIB / 2).max(total / 10)
}

/// The default budget: the device's free memory (measured after the probe, so the runtime's
/// context is already counted) less [`margin`].
pub fn default_budget(free: u64, total: u64) -> u64 {
    free.saturating_sub(margin(total))
}

/// `engine.vram_budget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BudgetSetting {
    /// The device's free memory less a margin on an accelerator; no budget on the CPU.
    #[default]
    Auto,
    /// No budget, on any device.
    Unlimited,
    /// This many bytes.
    Bytes(u64),
}

impl std::str::FromStr for BudgetSetting {
    type Err = String;

    /// `auto`, `none`, or a size: `6 GiB`, `6144 MiB`, `6.5 GB`, `6442450944`.
    fn from_str(text: &str) -> Result<BudgetSetting, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "auto" => return Ok(BudgetSetting::Auto),
            "none" | "unlimited" => return Ok(BudgetSetting::Unlimited),
            _ => {}
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (e.g. \"6 GiB\", \"auto\", \"none\")"))?;
        let unit = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            "kib" => 1 << 10,
            "mib" => MIB,
            "gib" => GIB,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?} (B, MB, GB, MiB, GiB)"
                ));
            }
        };
        let bytes = (number * unit as f64) as u64;
        if bytes < 256 * MIB {
            return Err(format!(
                "{text:?} is too small for any network (256 MiB at least)"
            ));
        }
        Ok(BudgetSetting::Bytes(bytes))
    }
}

impl BudgetSetting {
    /// The budget in force: `free_total` is the accelerator's (free, total) memory when the
    /// engine runs on one whose driver says.
    pub fn resolve(self, free_total: Option<(u64, u64)>) -> Option<u64> {
        match (self, free_total) {
            (BudgetSetting::Bytes(b), _) => Some(b),
            (BudgetSetting::Auto, Some((free, total))) => Some(default_budget(free, total)),
            _ => None,
        }
    }
}

/// One cached session, oldest use first, for [`set_aside`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    pub bytes: u64,
    /// Held by a network besides the cache (then it cannot go).
    pub in_use: bool,
}

/// Which cached sessions (indexes into `cached`, least recently used first) to set aside so
/// that `held + new` fits `budget`, `held` being every session alive now. Sessions in use stay;
/// when even setting aside all the others is not enough, they go all the same (the new
/// session will be built over budget, and an out-of-memory is then retried).
pub fn set_aside(cached: &[Cached], held: u64, new: u64, budget: u64) -> Vec<usize> {
    let mut total = held + new;
    let mut out = Vec::new();
    for (i, c) in cached.iter().enumerate() {
        if total <= budget {
            break;
        }
        if !c.in_use {
            total = total.saturating_sub(c.bytes);
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{Dim, ElemType, ExternalTensor, Graph};

    #[test]
    fn weights_are_counted_at_their_stored_precision() {
        let mut g = Graph::new("w");
        let x = g.input("x", ElemType::F32, &[Dim::from(4)]);
        let w16 = g.external(&ExternalTensor {
            name: "w16".into(),
            elem_type: ElemType::F16,
            dims: vec![1000, 1000],
            location: "weights.safetensors".into(),
            offset: 0,
            length: 2_000_000,
        });
        let w32 = g.external(&ExternalTensor {
            name: "w32".into(),
            elem_type: ElemType::F32,
            dims: vec![10],
            location: "weights.safetensors".into(),
            offset: 2_000_000,
            length: 40,
        });
        let c = g.constant_f32(&[4], &[1.0; 4]);
        let y = g.add(&x, &c);
        let y = g.add(&y, &w16);
        let y = g.add(&y, &w32);
        g.output("y", &y, ElemType::F32, None);
        let onnx = g.to_bytes();
        assert_eq!(weight_bytes(&onnx), 2_000_000 + 40 + 16);
        assert_eq!(
            session_bytes(&onnx),
            2_000_056 + 2_000_056 / 20 + SESSION_OVERHEAD
        );
        assert_eq!(weight_bytes(b"not a graph"), 0);
    }

    #[test]
    fn the_default_budget_leaves_room_for_activations() {
        // An 8 GB card with 7.4 GiB free after the runtime started: 5.9 GiB for sessions.
        let (free, total) = (7 * GIB + 4 * GIB / 10, 8 * GIB);
        assert_eq!(default_budget(free, total), free - 3 * GIB / 2);
        // An 80 GB card keeps a tenth.
        assert_eq!(default_budget(79 * GIB, 80 * GIB), 71 * GIB);
        assert_eq!(default_budget(GIB, 8 * GIB), 0);
    }

    #[test]
    fn the_setting_reads_sizes_and_words() {
        let parse = |s: &str| s.parse::<BudgetSetting>();
        assert_eq!(parse("auto"), Ok(BudgetSetting::Auto));
        assert_eq!(parse("None"), Ok(BudgetSetting::Unlimited));
        assert_eq!(parse("6 GiB"), Ok(BudgetSetting::Bytes(6 * GIB)));
        assert_eq!(parse("6.5GB"), Ok(BudgetSetting::Bytes(6_500_000_000)));
        assert_eq!(parse("1073741824"), Ok(BudgetSetting::Bytes(GIB)));
        assert!(parse("6 GiBs").unwrap_err().contains("unknown unit"));
        assert!(parse("lots").is_err());
        assert!(parse("1 MiB").unwrap_err().contains("too small"));
        assert_eq!(
            BudgetSetting::Auto.resolve(None),
            None,
            "no budget on the CPU"
        );
        assert_eq!(
            BudgetSetting::Auto.resolve(Some((7 * GIB, 8 * GIB))),
            Some(7 * GIB - 3 * GIB / 2)
        );
        assert_eq!(
            BudgetSetting::Unlimited.resolve(Some((7 * GIB, 8 * GIB))),
            None
        );
        assert_eq!(BudgetSetting::Bytes(GIB).resolve(None), Some(GIB));
    }

    #[test]
    fn the_least_recently_used_idle_sessions_go_first() {
        let c = |bytes, in_use| Cached { bytes, in_use };
        let cached = [c(100, false), c(300, true), c(200, false), c(50, false)];
        // Held 650 (all alive), a new 200, budget 750: 100 must go, the oldest idle one does.
        assert_eq!(set_aside(&cached, 650, 200, 750), [0]);
        // Budget 700: 150 must go; the one in use stays, the next idle one follows.
        assert_eq!(set_aside(&cached, 650, 200, 700), [0, 2]);
        // Budget 500: 350 must go; the one in use stays, so the next idle ones follow.
        assert_eq!(set_aside(&cached, 650, 200, 500), [0, 2, 3]);
        // It fits: nothing goes.
        assert!(set_aside(&cached, 650, 200, 1000).is_empty());
    }
}
