//! ESRGAN (RRDBNet) key layouts, translated once into the canonical naming used by
//! `nets::esrgan`.
//!
//! Canonical names are BasicSR's (Real-ESRGAN's), which follow the paper's module names:
//! `conv_first`, `body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`, `conv_up{k}`, `conv_hr`,
//! `conv_last`, each with `.weight` and `.bias`. Three layouts exist in the wild (spandrel's
//! ESRGAN loader, github.com/chaiNNer-org/spandrel, and A1111's `esrgan_model.py` translate
//! the same three):
//!
//! | layout | example files | keys |
//! |---|---|---|
//! | old arch | 4x-UltraSharp.pth, 4x-ESRGAN.pth | `model.0`, `model.1.sub.{i}.RDB{j}.conv{k}.0`, `model.1.sub.{nb}`, `model.{3k}`, `model.{3n+2}`, `model.{3n+4}` |
//! | new arch | RRDB_ESRGAN_x4.pth, BSRGAN | `conv_first`, `RRDB_trunk.{i}.RDB{j}.conv{k}`, `trunk_conv`, `upconv{k}`, `HRconv`, `conv_last` |
//! | Real-ESRGAN | RealESRGAN_x4plus.pth (`params_ema`) | canonical |
//!
//! The layout says nothing about the colour order a model is fed: that is the pipeline's
//! choice (`nets::esrgan::ChannelOrder`, `docs/models.md`).

use super::{SourceFile, SourceTensor, TensorMap, WeightsError};

/// Which key layout a file used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    OldArch,
    NewArch,
    RealEsrgan,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::OldArch => "ESRGAN old-arch (model.N)",
            Layout::NewArch => "ESRGAN new-arch (RRDB_trunk)",
            Layout::RealEsrgan => "Real-ESRGAN/BasicSR (body.N.rdbN)",
        }
    }
}

/// Maps a key of the file to its canonical name (`None`: not part of the layout).
type Renamer<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Recognises the layout of `source` and renames its tensors to the canonical names.
pub fn canonicalize(
    source: &SourceFile,
) -> Result<(TensorMap<SourceTensor>, Layout), WeightsError> {
    let tensors = source.tensors();
    let unknown = |found: String| WeightsError::UnknownLayout {
        path: source.path().to_owned(),
        network: "ESRGAN",
        found,
    };
    if tensors.keys().any(|k| k.contains(".conv1x1.")) {
        return Err(WeightsError::Unsupported {
            path: source.path().to_owned(),
            reason: "ESRGAN+ models (with conv1x1 layers) are not supported".into(),
        });
    }
    let layout = if tensors.contains("model.0.weight")
        && tensors.contains("model.1.sub.0.RDB1.conv1.0.weight")
    {
        Layout::OldArch
    } else if tensors.contains("conv_first.weight")
        && tensors.contains("RRDB_trunk.0.RDB1.conv1.weight")
    {
        Layout::NewArch
    } else if tensors.contains("conv_first.weight") && tensors.contains("body.0.rdb1.conv1.weight")
    {
        Layout::RealEsrgan
    } else {
        return Err(unknown(format!(
            "no known ESRGAN key layout ({})",
            tensors.describe()
        )));
    };

    let rename: Renamer<'_> = match layout {
        Layout::OldArch => Box::new(
            old_arch_renamer(tensors).map_err(|e| unknown(format!("{e} (old-arch layout)")))?,
        ),
        Layout::NewArch => Box::new(new_arch),
        Layout::RealEsrgan => Box::new(|k: &str| Some(k.to_owned())),
    };
    let mut out = TensorMap::new();
    for (key, t) in tensors.iter() {
        let name = rename(key).ok_or_else(|| {
            unknown(format!(
                "unexpected tensor `{key}` in the {} layout",
                layout.describe()
            ))
        })?;
        if !is_canonical(&name) {
            return Err(unknown(format!(
                "unexpected tensor `{key}` in the {} layout",
                layout.describe()
            )));
        }
        if out.insert(name.clone(), t.clone()).is_some() {
            return Err(unknown(format!("two tensors map to `{name}`")));
        }
    }
    Ok((out, layout))
}

/// Whether `name` is a canonical RRDBNet parameter name.
fn is_canonical(name: &str) -> bool {
    let Some((module, kind)) = name.rsplit_once('.') else {
        return false;
    };
    if kind != "weight" && kind != "bias" {
        return false;
    }
    let parts: Vec<&str> = module.split('.').collect();
    match parts.as_slice() {
        ["conv_first" | "conv_body" | "conv_hr" | "conv_last"] => true,
        [up] => up.strip_prefix("conv_up").is_some_and(is_number),
        ["body", i, rdb, conv] => {
            is_number(i)
                && matches!(*rdb, "rdb1" | "rdb2" | "rdb3")
                && matches!(*conv, "conv1" | "conv2" | "conv3" | "conv4" | "conv5")
        }
        _ => false,
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() < 6 && s.bytes().all(|b| b.is_ascii_digit())
}

fn new_arch(key: &str) -> Option<String> {
    let (module, kind) = key.rsplit_once('.')?;
    let parts: Vec<&str> = module.split('.').collect();
    let module = match parts.as_slice() {
        ["conv_first"] => "conv_first".to_owned(),
        ["trunk_conv"] => "conv_body".to_owned(),
        ["HRconv"] => "conv_hr".to_owned(),
        ["conv_last"] => "conv_last".to_owned(),
        [up] if up.starts_with("upconv") => format!("conv_up{}", &up["upconv".len()..]),
        ["RRDB_trunk", i, rdb, conv] => format!("body.{i}.{}.{conv}", rdb.to_lowercase()),
        _ => return None,
    };
    Some(format!("{module}.{kind}"))
}

/// The old arch numbers its top-level modules: 0 first conv, 1 the trunk (a shortcut around
/// `sub`), then per ×2 an (upsample, conv, act) triple at 3k−1..3k+1, then HR conv, act, last
/// conv. So the upconvs are `model.3k`, the HR conv `model.{L−2}` and the last `model.L`.
fn old_arch_renamer(
    tensors: &TensorMap<SourceTensor>,
) -> Result<impl Fn(&str) -> Option<String>, String> {
    let top: Vec<usize> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("model.")?.split('.').next()?.parse().ok())
        .collect();
    let last = top.iter().copied().max().unwrap_or(0);
    if last < 4 || (last - 4) % 3 != 0 {
        return Err(format!(
            "the last layer is model.{last}, which fits no upsampling depth"
        ));
    }
    let ups = (last - 4) / 3;
    // The trunk conv is the one `model.1.sub.N` that is a plain conv rather than an RRDB.
    let trunk: Vec<usize> = tensors
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("model.1.sub.")?;
            let (n, kind) = rest.split_once('.')?;
            matches!(kind, "weight" | "bias").then(|| n.parse().ok())?
        })
        .collect();
    let Some(&trunk_index) = trunk.first() else {
        return Err("no trunk conv model.1.sub.N".into());
    };
    if trunk.iter().any(|&t| t != trunk_index) {
        return Err("more than one trunk conv".into());
    }
    Ok(move |key: &str| -> Option<String> {
        let rest = key.strip_prefix("model.")?;
        let (module, kind) = rest.rsplit_once('.')?;
        let parts: Vec<&str> = module.split('.').collect();
        let module = match parts.as_slice() {
            ["0"] => "conv_first".to_owned(),
            ["1", "sub", n] if n.parse() == Ok(trunk_index) => "conv_body".to_owned(),
            ["1", "sub", i, rdb, conv, "0"] if rdb.starts_with("RDB") => {
                format!("body.{i}.{}.{conv}", rdb.to_lowercase())
            }
            [n] => {
                let n: usize = n.parse().ok()?;
                if n == last {
                    "conv_last".to_owned()
                } else if n == last - 2 {
                    "conv_hr".to_owned()
                } else if n.is_multiple_of(3) && (1..=ups).contains(&(n / 3)) {
                    format!("conv_up{}", n / 3)
                } else {
                    return None;
                }
            }
            _ => return None,
        };
        Some(format!("{module}.{kind}"))
    })
}
