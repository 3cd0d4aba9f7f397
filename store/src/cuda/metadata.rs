//! What an onnxruntime wheel says about the CUDA libraries it needs: the `nvidia-*`
//! requirements of its `*.dist-info/METADATA` (`Requires-Dist`, unconditional or under the
//! extras `cuda` and `cudnn`), the CUDA major version those name, and the platform tags of the
//! wheel, which the NVIDIA wheels must fit too.

/// The extras of the onnxruntime-gpu wheel that pull in the CUDA and cuDNN runtime wheels
/// (`pip install onnxruntime-gpu[cuda,cudnn]`).
const EXTRAS: [&str; 2] = ["cuda", "cudnn"];

/// The `nvidia-*` requirements of a wheel's METADATA, as pip takes them (`nvidia-cublas~=13.0`),
/// without their markers. A requirement under another extra (`tensorrt`, say) is left out.
pub fn requirements(metadata: &str) -> Vec<String> {
    let mut found = Vec::new();
    // The headers end at the first empty line; the description follows.
    for line in metadata.lines().take_while(|l| !l.trim().is_empty()) {
        let Some(value) = line.strip_prefix("Requires-Dist:") else {
            continue;
        };
        let (spec, marker) = value.split_once(';').unwrap_or((value, ""));
        let spec = spec.trim();
        if !normalise(requirement_name(spec)).starts_with("nvidia-") || !selected(marker) {
            continue;
        }
        if !found.iter().any(|f| f == spec) {
            found.push(spec.to_owned());
        }
    }
    found
}

/// The distribution name at the start of a requirement (`nvidia-cublas` of `nvidia-cublas~=13.0`).
pub fn requirement_name(spec: &str) -> &str {
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(spec.len());
    &spec[..end]
}

/// A distribution name as indexes compare them: lower case, runs of `-_.` as one `-`.
pub fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// True when a requirement's marker applies to the install we make: no `extra` condition, or
/// one naming an extra of [`EXTRAS`]. Other conditions (platform, Python version) are pip's.
fn selected(marker: &str) -> bool {
    let extras: Vec<String> = marker
        .split("extra")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix("==")?.trim_start();
            let quote = rest.chars().next().filter(|c| matches!(c, '"' | '\''))?;
            let value = &rest[1..];
            Some(normalise(&value[..value.find(quote)?]))
        })
        .collect();
    extras.is_empty() || extras.iter().any(|e| EXTRAS.contains(&e.as_str()))
}

/// The CUDA major version the requirements name: the version asked of the CUDA runtime package
/// (`nvidia-cuda-runtime~=13.0`, `nvidia-cuda-runtime-cu12~=12.0`), else a `-cuNN` suffix
/// (`nvidia-cudnn-cu13`). `None` when they say nothing about it.
pub fn cuda_major(requirements: &[String]) -> Option<u32> {
    let runtime = requirements.iter().find_map(|spec| {
        let name = normalise(requirement_name(spec));
        if name != "nvidia-cuda-runtime" && !name.starts_with("nvidia-cuda-runtime-cu") {
            return None;
        }
        let version = &spec[requirement_name(spec).len()..];
        let digits: String = version
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    });
    runtime.or_else(|| {
        requirements.iter().find_map(|spec| {
            let name = normalise(requirement_name(spec));
            let (_, suffix) = name.rsplit_once("-cu")?;
            suffix.parse().ok()
        })
    })
}

/// The parts of a wheel file name: `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    /// Normalised (`nvidia-cublas`).
    pub name: String,
    pub version: String,
    /// The platform tags (`manylinux_2_27_x86_64`, `manylinux_2_28_x86_64`; `win_amd64`; `any`).
    pub platforms: Vec<String>,
}

impl WheelName {
    pub fn parse(file_name: &str) -> Option<WheelName> {
        let stem = file_name.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        if !(5..=6).contains(&parts.len()) {
            return None;
        }
        Some(WheelName {
            name: normalise(parts[0]),
            version: parts[1].to_owned(),
            platforms: parts[parts.len() - 1]
                .split('.')
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// The `--platform` tags that let pip pick NVIDIA wheels for the platform of an onnxruntime
/// wheel: each manylinux tag with every older glibc down to 2.5, under both spellings
/// (`manylinux_2_17_x86_64` and `manylinux2014_x86_64`), since pip matches the tags given
/// literally. `win_amd64` and the like stay as they are; `any` gives none (this machine's).
pub fn platform_tags(wheel_platforms: &[String]) -> Vec<String> {
    // The newest glibc named per architecture (a wheel may carry 2_27 and 2_28 at once).
    let mut newest: Vec<(&str, u32)> = Vec::new();
    let mut tags = Vec::new();
    for platform in wheel_platforms {
        match manylinux(platform) {
            Some((minor, arch)) => match newest.iter_mut().find(|(a, _)| *a == arch) {
                Some((_, known)) => *known = (*known).max(minor),
                None => newest.push((arch, minor)),
            },
            None if platform == "any" => {}
            None => {
                if !tags.contains(platform) {
                    tags.push(platform.clone());
                }
            }
        }
    }
    for (arch, newest_minor) in newest {
        for minor in (5..=newest_minor).rev() {
            tags.push(format!("manylinux_2_{minor}_{arch}"));
            let legacy = match minor {
                17 => Some("manylinux2014"),
                12 => Some("manylinux2010"),
                5 => Some("manylinux1"),
                _ => None,
            };
            if let Some(legacy) = legacy {
                tags.push(format!("{legacy}_{arch}"));
            }
        }
    }
    tags
}

/// `(glibc minor, arch)` of a manylinux tag in either spelling.
fn manylinux(tag: &str) -> Option<(u32, &str)> {
    for (legacy, minor) in [
        ("manylinux2014_", 17),
        ("manylinux2010_", 12),
        ("manylinux1_", 5),
    ] {
        if let Some(arch) = tag.strip_prefix(legacy) {
            return Some((minor, arch));
        }
    }
    let rest = tag.strip_prefix("manylinux_2_")?;
    let (minor, arch) = rest.split_once('_')?;
    Some((minor.parse().ok()?, arch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requirement headers of onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl.
    const GPU_1_31_1: &str = "Metadata-Version: 2.4\nName: onnxruntime-gpu\nVersion: 1.31.1\n\
        Requires-Python: >=3.11\nRequires-Dist: flatbuffers\nRequires-Dist: numpy>=1.21.6\n\
        Requires-Dist: packaging\nRequires-Dist: protobuf>=4.25.8\nProvides-Extra: symbolic\n\
        Requires-Dist: sympy; extra == \"symbolic\"\nProvides-Extra: quantization\n\
        Requires-Dist: ml_dtypes; extra == \"quantization\"\nProvides-Extra: cuda\n\
        Requires-Dist: nvidia-cuda-nvrtc~=13.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-cuda-runtime~=13.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-cufft~=12.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-curand~=10.0; extra == \"cuda\"\nProvides-Extra: cudnn\n\
        Requires-Dist: nvidia-cudnn-cu13~=9.0; extra == \"cudnn\"\nDynamic: author\n\n\
        ONNX Runtime\n============\nRequires-Dist: nvidia-not-a-header\n";

    /// The requirements of onnxruntime-gpu 1.23.2 (CUDA 12), as pip reports them.
    const GPU_1_23_2: &str = "Name: onnxruntime-gpu\nVersion: 1.23.2\nRequires-Dist: coloredlogs\n\
        Requires-Dist: nvidia-cuda-nvrtc-cu12~=12.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-cuda-runtime-cu12~=12.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-cufft-cu12~=11.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-curand-cu12~=10.0; extra == \"cuda\"\n\
        Requires-Dist: nvidia-cudnn-cu12~=9.0; extra == 'cudnn'\n\
        Requires-Dist: nvidia-tensorrt; extra == \"tensorrt\"\n";

    #[test]
    fn the_nvidia_requirements_of_the_cuda_extras_are_read() {
        assert_eq!(
            requirements(GPU_1_31_1),
            [
                "nvidia-cuda-nvrtc~=13.0",
                "nvidia-cuda-runtime~=13.0",
                "nvidia-cufft~=12.0",
                "nvidia-curand~=10.0",
                "nvidia-cudnn-cu13~=9.0"
            ]
        );
        assert_eq!(
            requirements(GPU_1_23_2),
            [
                "nvidia-cuda-nvrtc-cu12~=12.0",
                "nvidia-cuda-runtime-cu12~=12.0",
                "nvidia-cufft-cu12~=11.0",
                "nvidia-curand-cu12~=10.0",
                "nvidia-cudnn-cu12~=9.0"
            ]
        );
        // onnxruntime-gpu 1.20.0 names none: it relies on the system's CUDA.
        assert!(requirements("Name: onnxruntime-gpu\nRequires-Dist: numpy>=1.21.6\n").is_empty());
        assert_eq!(
            requirements("Requires-Dist: NVIDIA_CuBLAS (>=13.0)\n"),
            ["NVIDIA_CuBLAS (>=13.0)"]
        );
    }

    #[test]
    fn the_cuda_major_comes_from_the_names_never_a_default() {
        assert_eq!(cuda_major(&requirements(GPU_1_31_1)), Some(13));
        assert_eq!(cuda_major(&requirements(GPU_1_23_2)), Some(12));
        assert_eq!(cuda_major(&["nvidia-cudnn-cu11~=8.0".into()]), Some(11));
        assert_eq!(cuda_major(&["nvidia-cublas".into()]), None);
        assert_eq!(cuda_major(&[]), None);
    }

    #[test]
    fn wheel_names_are_taken_apart() {
        let wheel = WheelName::parse(
            "onnxruntime_gpu-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        )
        .unwrap();
        assert_eq!(wheel.name, "onnxruntime-gpu");
        assert_eq!(wheel.version, "1.23.2");
        assert_eq!(
            wheel.platforms,
            ["manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]
        );
        let build = WheelName::parse("nvidia_cublas-13.1.0.3-1-py3-none-win_amd64.whl").unwrap();
        assert_eq!(
            (build.name.as_str(), build.platforms[0].as_str()),
            ("nvidia-cublas", "win_amd64")
        );
        assert_eq!(WheelName::parse("notes.txt"), None);
        assert_eq!(WheelName::parse("a-1.whl"), None);
    }

    #[test]
    fn platform_tags_reach_down_to_older_glibc_in_both_spellings() {
        let tags = platform_tags(&[
            "manylinux_2_27_x86_64".into(),
            "manylinux_2_28_x86_64".into(),
        ]);
        assert_eq!(
            tags[..2],
            ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64"]
        );
        for tag in [
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "manylinux2010_x86_64",
            "manylinux1_x86_64",
            "manylinux_2_5_x86_64",
        ] {
            assert!(tags.contains(&tag.to_owned()), "{tag}: {tags:?}");
        }
        assert_eq!(
            tags.len(),
            24 + 3,
            "2.28 down to 2.5, and the three old names"
        );
        assert_eq!(platform_tags(&["win_amd64".into()]), ["win_amd64"]);
        assert!(platform_tags(&["any".into()]).is_empty());
        assert_eq!(
            platform_tags(&["manylinux2014_aarch64".into()])[..2],
            ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
        );
    }
}
