//! ESRGAN through the real loaders and ONNX Runtime, against PyTorch (spandrel) references
//! computed from the same files by `tests/fixtures/generate.py`.

mod common;

use common::*;
use ndarray::{Array3, Axis, s};
use tessera::Cancelled;
use tessera::nets::esrgan::{ChannelOrder, Esrgan, EsrganError, Tiling};
use tessera::weights::esrgan::Layout;

const TOLERANCE: f32 = 1e-4;

struct Case {
    file: &'static str,
    reference: &'static str,
    layout: Layout,
    scale: u32,
    nb: usize,
    unshuffle: usize,
    /// Whether the weights must be converted into the cache (else used in place).
    converted: bool,
}

const CASES: &[Case] = &[
    Case {
        file: "tiny-x4.safetensors",
        reference: "tiny-x4",
        layout: Layout::OldArch,
        scale: 4,
        nb: 2,
        unshuffle: 1,
        converted: false,
    },
    Case {
        file: "tiny-x4-new.safetensors",
        reference: "tiny-x4-new",
        layout: Layout::NewArch,
        scale: 4,
        nb: 2,
        unshuffle: 1,
        converted: false,
    },
    Case {
        file: "tiny-x4-realesrgan.safetensors",
        reference: "tiny-x4-realesrgan",
        layout: Layout::RealEsrgan,
        scale: 4,
        nb: 2,
        unshuffle: 1,
        converted: false,
    },
    Case {
        file: "tiny-x4-old.pth",
        reference: "tiny-x4-old-pth",
        layout: Layout::OldArch,
        scale: 4,
        nb: 1,
        unshuffle: 1,
        converted: true,
    },
    Case {
        file: "tiny-x4-realesrgan.pth",
        reference: "tiny-x4-realesrgan-pth",
        layout: Layout::RealEsrgan,
        scale: 4,
        nb: 1,
        unshuffle: 1,
        converted: true,
    },
    Case {
        file: "tiny-x4-fp16.safetensors",
        reference: "tiny-x4-fp16",
        layout: Layout::OldArch,
        scale: 4,
        nb: 2,
        unshuffle: 1,
        converted: true,
    },
    Case {
        file: "tiny-x4-bf16.safetensors",
        reference: "tiny-x4-bf16",
        layout: Layout::NewArch,
        scale: 4,
        nb: 1,
        unshuffle: 1,
        converted: true,
    },
    Case {
        file: "tiny-x2.safetensors",
        reference: "tiny-x2",
        layout: Layout::OldArch,
        scale: 2,
        nb: 1,
        unshuffle: 1,
        converted: false,
    },
    Case {
        file: "tiny-x2-unshuffle.safetensors",
        reference: "tiny-x2-unshuffle",
        layout: Layout::RealEsrgan,
        scale: 2,
        nb: 1,
        unshuffle: 2,
        converted: false,
    },
    Case {
        file: "tiny-x1-unshuffle.safetensors",
        reference: "tiny-x1-unshuffle",
        layout: Layout::RealEsrgan,
        scale: 1,
        nb: 1,
        unshuffle: 4,
        converted: false,
    },
];

fn no_progress() -> impl FnMut(usize, usize) -> Result<(), Cancelled> {
    |_, _| Ok(())
}

#[test]
fn every_layout_matches_pytorch() {
    let input = reference3("input");
    let mut report = Vec::new();
    for case in CASES {
        let cache = tempfile::tempdir().unwrap();
        let mut model = Esrgan::load(engine(), &fixture(case.file), cache.path())
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let config = model.config().clone();
        assert_eq!(model.scale(), case.scale, "{}", case.file);
        assert_eq!(
            (config.layout, config.nb, config.unshuffle),
            (case.layout, case.nb, case.unshuffle),
            "{}",
            case.file
        );
        assert_eq!((config.nf, config.gc), (4, 3), "{}", case.file);
        // The generator fed old- and new-arch models A1111's BGR and Real-ESRGAN ones RGB.
        let order = if case.layout == Layout::RealEsrgan {
            ChannelOrder::Rgb
        } else {
            ChannelOrder::Bgr
        };
        let cached = std::fs::read_dir(cache.path()).unwrap().count();
        assert_eq!(
            cached,
            usize::from(case.converted),
            "{}: files in the cache",
            case.file
        );

        let expected = reference3(case.reference);
        let (_, h, w) = input.dim();
        assert_eq!(
            expected.dim(),
            (3, h * case.scale as usize, w * case.scale as usize)
        );

        // The raw network output, where the input allows one pass (no unshuffle padding).
        if h % case.unshuffle == 0 && w % case.unshuffle == 0 {
            let raw = forward_in(&mut model, &input, order);
            let err = max_abs_diff(&raw, &expected);
            assert!(
                err <= TOLERANCE,
                "{}: raw output differs by {err}",
                case.file
            );
        }
        // The public path: tiling (one tile here), padding, clamping, the channel order.
        let out = model
            .upscale(input.view(), &Tiling::default(), order, &mut no_progress())
            .unwrap();
        let err = max_abs_diff(&out, &expected.mapv(|v| v.clamp(0.0, 1.0)));
        report.push(format!(
            "{:32} {:?} max |err| {err:.2e}",
            case.file, case.layout
        ));
        assert!(err <= TOLERANCE, "{}: upscale differs by {err}", case.file);
    }
    eprintln!("{}", report.join("\n"));
}

/// fp16 graphs (f16 weights, every op in f16) against PyTorch in fp32, on the CPU execution
/// provider: the largest error over the output, which lies in about 0..1. f16 keeps 11
/// significant bits (a relative step of 4.9e-4); the 1–2 RRDB blocks of the fixtures add up
/// some dozens of such roundings, measured at most 7.8e-4 here, so 5e-3 leaves room without
/// hiding a wrong graph (a flipped channel order or a missing residual errs by 1e-1 and more).
const FP16_TOLERANCE: f32 = 5e-3;

#[test]
fn every_layout_in_fp16_stays_near_pytorch_in_fp32() {
    use tessera::nets::Precision;
    let input = reference3("input");
    let mut report = Vec::new();
    for case in CASES {
        let cache = tempfile::tempdir().unwrap();
        let mut model =
            Esrgan::load_as(engine(), &fixture(case.file), cache.path(), Precision::F16)
                .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        assert!(model.compiled().name.ends_with("(fp16)"));
        let expected = reference3(case.reference).mapv(|v| v.clamp(0.0, 1.0));
        // The order the generator fed each layout (see the fp32 test above).
        let order = if model.config().layout == Layout::RealEsrgan {
            ChannelOrder::Rgb
        } else {
            ChannelOrder::Bgr
        };
        let out = model
            .upscale(input.view(), &Tiling::default(), order, &mut no_progress())
            .unwrap();
        let err = max_abs_diff(&out, &expected);
        report.push(format!("{:32} fp16 max |err| {err:.2e}", case.file));
        assert!(
            err <= FP16_TOLERANCE,
            "{}: fp16 upscale differs by {err}",
            case.file
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn tiled_with_enough_context_equals_the_whole_image() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x4.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let image = procedural_image(120, 136);
    // The reference fed this old-arch model A1111's BGR.
    let whole = forward_in(&mut model, &image, ChannelOrder::Bgr).mapv(|v| v.clamp(0.0, 1.0));
    let torch = reference3("tiny-x4.procedural-120x136.every9").mapv(|v| v.clamp(0.0, 1.0));

    // 96/80: (80 − 8) / 2 = 36 pixels of context ≥ the 33-pixel receptive radius of this
    // 2-block RRDBNet, so the tiles are exact by construction. 48/24 keeps only 8 pixels of
    // context, which is still within 1e-4 here because far pixels contribute little; it is
    // the sensitive case (blending across the whole overlap instead makes it fail by 3e-2).
    for (tile, overlap, tiles) in [(96, 80, 3 * 4), (48, 24, 4 * 5)] {
        let mut calls = Vec::new();
        let tiled = model
            .upscale(
                image.view(),
                &Tiling::a1111(tile, overlap),
                ChannelOrder::Bgr,
                &mut |done, total| {
                    calls.push((done, total));
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(calls.len(), tiles, "{tile}/{overlap}: {calls:?}");
        assert!(
            calls
                .iter()
                .enumerate()
                .all(|(i, &(d, t))| d == i + 1 && t == tiles)
        );

        let err = max_abs_diff(&tiled, &whole);
        eprintln!("tiled ({tile}/{overlap}) vs whole image: max |err| {err:.2e}");
        assert!(
            err <= TOLERANCE,
            "{tile}/{overlap}: tiled result differs from the whole image by {err}"
        );

        let sub = tiled.slice(s![.., 4usize..;9, 4usize..;9]).to_owned();
        let err = max_abs_diff(&sub, &torch);
        eprintln!(
            "tiled ({tile}/{overlap}) vs PyTorch whole image, every 9th pixel: max |err| {err:.2e}"
        );
        assert!(
            err <= TOLERANCE,
            "{tile}/{overlap}: tiled result differs from PyTorch by {err}"
        );
    }
}

#[test]
fn default_tiling_is_sane() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x4.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let image = procedural_image(120, 136);
    let whole = forward_in(&mut model, &image, ChannelOrder::Rgb).mapv(|v| v.clamp(0.0, 1.0));
    // Small tiles with the default 8-pixel overlap: 4 × 5 tiles, seams with little context.
    let tiled = model
        .upscale(
            image.view(),
            &Tiling::a1111(40, 8),
            ChannelOrder::Rgb,
            &mut no_progress(),
        )
        .unwrap();
    assert!(
        tiled
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
    );
    let mean = (&tiled - &whole).mapv(f32::abs).mean().unwrap();
    let max = max_abs_diff(&tiled, &whole);
    eprintln!("default-overlap tiles (40/8) vs whole image: mean |err| {mean:.2e}, max {max:.2e}");
    assert!(mean < 0.01 && max < 0.25, "mean {mean}, max {max}");
    // Far from every seam the tiles agree with the whole image closely.
    let centre = tiled.slice(s![.., 60..100, 60..100]).to_owned();
    assert!(max_abs_diff(&centre, &whole.slice(s![.., 60..100, 60..100]).to_owned()) < 0.05);
}

#[test]
fn odd_sizes_and_unshuffle_tiling_match() {
    // A ×2 Real-ESRGAN (pixel-unshuffle by 2) model on an odd-sized image, tiled with odd
    // tile sizes: tiles must stay aligned to the 2×2 blocks and padding must reflect.
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x2-unshuffle.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let image = procedural_image(61, 75);
    let whole = model
        .upscale(
            image.view(),
            &Tiling::a1111(512, 8),
            ChannelOrder::Rgb,
            &mut no_progress(),
        )
        .unwrap();
    assert_eq!(whole.dim(), (3, 122, 150));
    let tiled = model
        .upscale(
            image.view(),
            &Tiling::a1111(47, 45),
            ChannelOrder::Rgb,
            &mut no_progress(),
        )
        .unwrap();
    let err = max_abs_diff(&tiled, &whole);
    eprintln!("unshuffle ×2, tiled (47/45) vs whole: max |err| {err:.2e}");
    assert!(err <= TOLERANCE, "{err}");
}

#[test]
fn cancelling_stops_after_the_current_tile() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x4.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let image = procedural_image(64, 64);
    let mut calls = 0;
    let result = model.upscale(
        image.view(),
        &Tiling::a1111(24, 8),
        ChannelOrder::Rgb,
        &mut |done, total| {
            calls += 1;
            assert!(total > 2);
            if done == 2 { Err(Cancelled) } else { Ok(()) }
        },
    );
    assert!(matches!(result, Err(EsrganError::Cancelled)), "{result:?}");
    assert_eq!(calls, 2);
}

#[test]
fn sessions_and_conversions_are_reused() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.pth");
    std::fs::copy(fixture("tiny-x4-old.pth"), &file).unwrap();

    let first = Esrgan::load(engine(), &file, cache.path()).unwrap();
    let sessions = engine().cached_sessions();
    let converted: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(converted.len(), 1);
    let mtime = std::fs::metadata(&converted[0])
        .unwrap()
        .modified()
        .unwrap();

    let second = Esrgan::load(engine(), &file, cache.path()).unwrap();
    assert_eq!(
        engine().cached_sessions(),
        sessions,
        "the warm session is reused"
    );
    assert_eq!(
        std::fs::metadata(&converted[0])
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "no second conversion"
    );
    assert_eq!(first.compiled().onnx, second.compiled().onnx);

    // A changed source file gets a fresh conversion.
    std::fs::copy(fixture("tiny-x4-realesrgan.pth"), &file).unwrap();
    let third = Esrgan::load(engine(), &file, cache.path()).unwrap();
    assert_eq!(third.config().layout, Layout::RealEsrgan);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
}

#[test]
fn engine_describes_itself() {
    let e = engine();
    assert!(
        e.runtime_description().starts_with("ONNX Runtime 1."),
        "{}",
        e.runtime_description()
    );
    assert!(e.runtime_description().contains("onnxruntime"));
    assert_eq!(e.device_description(), "CPU (2 threads)");
    eprintln!("{} on {}", e.runtime_description(), e.device_description());
}

#[test]
fn bad_inputs_are_errors() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x2.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let gray = Array3::<f32>::zeros((1, 8, 8));
    assert!(matches!(
        model.upscale(
            gray.view(),
            &Tiling::default(),
            ChannelOrder::Rgb,
            &mut no_progress()
        ),
        Err(EsrganError::InvalidInput(_))
    ));
    let empty = Array3::<f32>::zeros((3, 0, 8));
    assert!(
        model
            .upscale(
                empty.view(),
                &Tiling::default(),
                ChannelOrder::Rgb,
                &mut no_progress()
            )
            .is_err()
    );
    // A one-pixel image still works.
    let dot = Array3::<f32>::from_elem((3, 1, 1), 0.5);
    let out = model
        .upscale(
            dot.view(),
            &Tiling::default(),
            ChannelOrder::Rgb,
            &mut no_progress(),
        )
        .unwrap();
    assert_eq!(out.dim(), (3, 2, 2));
}

/// One pass of `model` over `image` (`[3, H, W]` RGB) fed in `order`, returned as RGB.
fn forward_in(model: &mut Esrgan, image: &Array3<f32>, order: ChannelOrder) -> Array3<f32> {
    let flip = |a: ndarray::ArrayView3<f32>| match order {
        ChannelOrder::Rgb => a.to_owned(),
        ChannelOrder::Bgr => a.slice(s![..;-1, .., ..]).to_owned(),
    };
    let fed = flip(image.view());
    let out = model.forward(fed.view().insert_axis(Axis(0))).unwrap();
    flip(out.index_axis(Axis(0), 0))
}

#[test]
fn the_channel_order_is_fed_and_read_back() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x4.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let image = procedural_image(12, 10);
    let tiling = Tiling::default();
    let run = |model: &mut Esrgan, x: &Array3<f32>, order| {
        model
            .upscale(x.view(), &tiling, order, &mut no_progress())
            .unwrap()
    };
    let rgb = run(&mut model, &image, ChannelOrder::Rgb);
    let bgr = run(&mut model, &image, ChannelOrder::Bgr);
    // BGR is RGB fed the flipped image and flipped back; and it is not the same result.
    let flipped = image.slice(s![..;-1, .., ..]).to_owned();
    let via_rgb = run(&mut model, &flipped, ChannelOrder::Rgb);
    let back = via_rgb.slice(s![..;-1, .., ..]).to_owned();
    assert!(max_abs_diff(&bgr, &back) <= 1e-6);
    let differ = max_abs_diff(&rgb, &bgr);
    assert!(differ > 1e-3, "{differ}");
}

#[test]
fn the_default_tiling_takes_the_fewest_tiles_and_keeps_the_seams_close_to_the_whole_image() {
    let mut model = Esrgan::load(
        engine(),
        &fixture("tiny-x4.safetensors"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let whole_of = |model: &mut Esrgan, image: &Array3<f32>| {
        let whole = model.forward(image.view().insert_axis(Axis(0))).unwrap();
        whole.index_axis(Axis(0), 0).mapv(|v| v.clamp(0.0, 1.0))
    };
    let count = |model: &mut Esrgan, image: &Array3<f32>, tiling: Tiling| {
        let mut calls = 0;
        let out = model
            .upscale(image.view(), &tiling, ChannelOrder::Rgb, &mut |_, _| {
                calls += 1;
                Ok(())
            })
            .unwrap();
        (out, calls)
    };
    // A 256² input is one tile: the whole-image result, bit for bit.
    let small = procedural_image(256, 256);
    let (tiled, calls) = count(&mut model, &small, Tiling::DEFAULT);
    assert_eq!(calls, 1);
    assert_eq!(tiled, whole_of(&mut model, &small));
    // 400 × 360 takes 2 × 2 tiles (A1111's placement: 3 × 2 of 192).
    let large = procedural_image(400, 360);
    let whole = whole_of(&mut model, &large);
    let (fewest, calls) = count(&mut model, &large, Tiling::DEFAULT);
    assert_eq!(calls, 4);
    let (a1111, calls) = count(&mut model, &large, Tiling::CLARITY);
    assert_eq!(calls, 6);
    let max = max_abs_diff(&fewest, &whole);
    let mean = (&fewest - &whole).mapv(f32::abs).mean().unwrap();
    let a1111_max = max_abs_diff(&a1111, &whole);
    eprintln!(
        "default tiles vs whole: max {max:.2e}, mean {mean:.2e}; A1111's: max {a1111_max:.2e}"
    );
    assert!(max <= TOLERANCE && mean < 1e-6, "max {max}, mean {mean}");
    assert!(max < a1111_max, "12 pixels of context beat none");
    // With an overlap of twice the receptive radius (33 pixels here) plus the ramp, the seams
    // change nothing: the tiled result is the whole-image result.
    let (exact, calls) = count(&mut model, &large, Tiling::fewest(256, 80));
    assert_eq!(calls, 4);
    let err = max_abs_diff(&exact, &whole);
    assert!(err <= TOLERANCE, "{err}");
}
