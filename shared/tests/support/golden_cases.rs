//! The one list of messages behind the golden vectors in `shared/golden/`.
//!
//! `examples/write_golden.rs` writes each case as `<name>.bin` (one whole
//! frame: the `u32` length prefix and the payload), and `tests/golden.rs`
//! checks that every file decodes to its case and re-encodes byte for byte.
//! The Python tests (`python/tests/test_golden.py`) hold an independent,
//! hand-written mirror of this list: change both together.
//!
//! Names are `<tag>-<variant>[-<detail>]`, the tag being the `Message`
//! variant's two-digit wire tag, so that a listing reads in protocol order.
//! Images are tiny (one or two pixels) and every sample value is exact in its
//! format, so that the Python mirror can spell them out.

use half::f16;
use tessera_protocol::{
    Accepted, Channels, DeviceMemory, Done, ErrorInfo, ErrorKind, Failed, Handshake, Image,
    JobParams, LoraWeight, Message, ModelEntry, ModelKind, ModelList, PROTOCOL_VERSION, Progress,
    Region, Rejected, SampleFormat, Sampler, StageTiming, Status, Submit, Transfer, WarmUp,
};

/// One golden vector: the file `<name>.bin` holds `message` as a frame.
pub struct Case {
    pub name: String,
    pub message: Message,
}

fn case(name: impl Into<String>, message: Message) -> Case {
    Case {
        name: name.into(),
        message,
    }
}

fn u16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f16s(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn image(
    width: u32,
    height: u32,
    channels: Channels,
    sample: SampleFormat,
    transfer: Transfer,
    data: Vec<u8>,
) -> Image {
    Image {
        width,
        height,
        channels,
        sample,
        transfer,
        data,
    }
}

/// The 2×1 RGBA 8-bit sRGB image of `01-submit.bin` (the worked example in
/// `docs/protocol.md`): an opaque red pixel and a quarter-opaque azure one.
fn rgba8() -> Image {
    image(
        2,
        1,
        Channels::Rgba,
        SampleFormat::U8,
        Transfer::Srgb,
        vec![255, 0, 0, 255, 0, 128, 255, 64],
    )
}

/// One image per channel layout, each with two sample formats and transfers
/// between them, every sample format and transfer appearing at least twice.
fn layouts() -> Vec<(&'static str, Image)> {
    use Channels::*;
    use SampleFormat::*;
    use Transfer::*;
    vec![
        ("gray-u8-srgb", image(2, 1, Gray, U8, Srgb, vec![0, 255])),
        (
            "gray-f32-linear",
            image(2, 1, Gray, F32, Linear, f32s(&[0.0, 1.0])),
        ),
        (
            "grayalpha-u8-srgb",
            image(2, 1, GrayAlpha, U8, Srgb, vec![10, 255, 200, 0]),
        ),
        (
            "grayalpha-u16-linear",
            image(2, 1, GrayAlpha, U16, Linear, u16s(&[0, 65535, 32768, 1])),
        ),
        (
            "rgb-u8-srgb",
            image(2, 1, Rgb, U8, Srgb, vec![1, 2, 3, 4, 5, 6]),
        ),
        (
            // One column, two rows: the only image here that is taller than wide.
            "rgb-f16-linear",
            image(
                1,
                2,
                Rgb,
                F16,
                Linear,
                f16s(&[0.0, 0.5, 1.0, -0.25, 2.0, 65504.0]),
            ),
        ),
        (
            "rgba-u16-srgb",
            image(
                2,
                1,
                Rgba,
                U16,
                Srgb,
                u16s(&[65535, 0, 0, 65535, 0x0102, 0x0304, 0x0506, 0x8000]),
            ),
        ),
        (
            "rgba-f32-linear",
            image(
                2,
                1,
                Rgba,
                F32,
                Linear,
                f32s(&[0.25, 0.5, 0.75, 1.0, 1.5, -0.0, 0.0, 0.5]),
            ),
        ),
        (
            "bgra-u8-srgb",
            image(2, 1, Bgra, U8, Srgb, vec![0, 0, 255, 255, 255, 128, 0, 64]),
        ),
        (
            "bgra-u16-srgb",
            image(
                2,
                1,
                Bgra,
                U16,
                Srgb,
                u16s(&[0, 0, 65535, 65535, 65535, 32768, 0, 16384]),
            ),
        ),
    ]
}

/// One sentence per error kind, as a daemon might send it.
fn error_examples() -> Vec<(ErrorKind, &'static str)> {
    use ErrorKind::*;
    vec![
        (Protocol, "malformed message: unexpected end of the frame"),
        (
            VersionMismatch,
            "the daemon speaks protocol version 1 and this client version 2; update Tessera",
        ),
        (
            FrameTooLarge,
            "a frame of 2147483648 bytes exceeds the maximum of 1073741824 bytes",
        ),
        (
            InvalidImage,
            "a 3×2 Rgba U16 image needs 48 bytes but 47 were sent",
        ),
        (InvalidParams, "the scale must be between 1 and 16, not 32"),
        (
            ModelNotFound,
            "no upscaler named “4x-Foo” in models/upscalers/",
        ),
        (
            ModelInvalid,
            "models/upscalers/4x-Foo.pth is truncated (812 of 67 040 bytes)",
        ),
        (
            Runtime,
            "ONNX Runtime 1.16 is too old; Tessera needs 1.22 or newer",
        ),
        (Cancelled, "the job was cancelled"),
        (UnknownJob, "there is no job 99 to cancel"),
        (QueueFull, "the queue is full (16 jobs); try again later"),
        (TooManyJobs, "this client already has 4 jobs queued"),
        (
            ImageTooLarge,
            "the result would have 1 073 741 824 pixels, more than the maximum of 268 435 456",
        ),
        (ShuttingDown, "the daemon is shutting down"),
        (Io, "cannot write cache/unet.onnx: no space left on device"),
        (
            Internal,
            "internal error: the tile plan is empty; see the log",
        ),
        (
            TooManyConnections,
            "the daemon already serves 32 connections (limits.max_connections); close another client",
        ),
    ]
}

fn sha(byte: char) -> Option<String> {
    Some(std::iter::repeat_n(byte, 64).collect())
}

pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "00-handshake",
            Message::Handshake(Handshake {
                protocol_version: PROTOCOL_VERSION,
                agent: "tessera 0.1.0".into(),
            }),
        ),
        case(
            // Two-, three- and four-byte UTF-8 sequences.
            "00-handshake-unicode",
            Message::Handshake(Handshake {
                protocol_version: PROTOCOL_VERSION,
                agent: "krita-plugin 0.1.0 (Zoë’s ✓ 🎨)".into(),
            }),
        ),
        case(
            "01-submit",
            Message::Submit(Submit {
                request: 1,
                image: rgba8(),
                params: JobParams::default(),
            }),
        ),
        case(
            "01-submit-upscaler",
            Message::Submit(Submit {
                request: 2,
                image: rgba8(),
                params: JobParams::upscaler_only(2.5, Some("4x-UltraSharp".into())),
            }),
        ),
        case(
            "01-submit-refiners",
            Message::Submit(Submit {
                request: 3,
                image: rgba8(),
                params: JobParams::refiners(),
            }),
        ),
        case(
            // Every optional model named, LoRAs, the other samplers' tags, extreme numbers.
            "01-submit-clarity-models",
            Message::Submit(Submit {
                request: 4,
                image: rgba8(),
                params: JobParams {
                    scale: 16.0,
                    upscaler: Some("4x-UltraSharp".into()),
                    creativity: 1.0,
                    resemblance: 3.0,
                    dynamic: 50.0,
                    tile_width: 16,
                    tile_height: 256,
                    steps: 100,
                    seed: u64::MAX,
                    prompt: "a façade, (ivy:1.3) <lora:détail:0.25>".into(),
                    negative_prompt: String::new(),
                    sampler: Sampler::DpmPp2mKarras,
                    decay: 1.0,
                    multistep_factor: 2.0,
                    checkpoint: Some("juggernaut_reborn".into()),
                    vae: Some("vae-ft-mse-840000-ema-pruned".into()),
                    controlnet: Some("control_v11f1e_sd15_tile".into()),
                    loras: vec![
                        LoraWeight {
                            name: "more_details".into(),
                            weight: 0.5,
                        },
                        LoraWeight {
                            name: "SDXLrender_v2.0".into(),
                            weight: -1.0,
                        },
                    ],
                    sharpen: 10.0,
                    preview: Some(Region {
                        x: 0,
                        y: 1,
                        width: u32::MAX,
                        height: 512,
                    }),
                    ..JobParams::default()
                },
            }),
        ),
        case(
            "01-submit-ddim",
            Message::Submit(Submit {
                request: 5,
                image: rgba8(),
                params: JobParams {
                    sampler: Sampler::Ddim,
                    decay: 1.0,
                    ..JobParams::refiners()
                },
            }),
        ),
    ];
    for (index, (layout, image)) in layouts().into_iter().enumerate() {
        cases.push(case(
            format!("01-submit-{layout}"),
            Message::Submit(Submit {
                request: 100 + index as u64,
                image,
                params: JobParams::upscaler_only(2.0, None),
            }),
        ));
    }
    cases.extend([
        case(
            "02-accepted",
            Message::Accepted(Accepted {
                request: 1,
                job: 42,
                position: 0,
            }),
        ),
        case(
            // Every integer at a width where byte order and size show.
            "02-accepted-extremes",
            Message::Accepted(Accepted {
                request: u64::MAX,
                job: 0x0123_4567_89ab_cdef,
                position: 0xfedc_ba98,
            }),
        ),
        case(
            "03-rejected",
            Message::Rejected(Rejected {
                request: 2,
                error: ErrorInfo::new(
                    ErrorKind::QueueFull,
                    "the queue is full (16 jobs); try again later",
                ),
            }),
        ),
        case(
            "04-progress",
            Message::Progress(Progress {
                job: 42,
                stage: 1,
                stages: 2,
                phase: "denoise".into(),
                step: 3,
                steps: 10,
                tile: 2,
                tiles: 4,
                fraction: 0.625,
                eta_seconds: Some(12.5),
                warnings: vec![
                    "UNet+ControlNet juggernaut_reborn.safetensors ran out of GPU memory; it runs with 1 tile per call".into(),
                ],
            }),
        ),
        case(
            "04-progress-no-eta",
            Message::Progress(Progress {
                job: 42,
                stage: 0,
                stages: 1,
                phase: "load".into(),
                step: 0,
                steps: 1,
                tile: 0,
                tiles: 1,
                fraction: 0.0,
                eta_seconds: None,
                warnings: vec![],
            }),
        ),
        case(
            "05-done",
            Message::Done(Done {
                job: 42,
                image: image(
                    2,
                    1,
                    Channels::Rgba,
                    SampleFormat::U8,
                    Transfer::Srgb,
                    vec![250, 3, 4, 255, 2, 126, 252, 64],
                ),
                timings: vec![
                    StageTiming {
                        name: "upscale".into(),
                        seconds: 0.5,
                    },
                    StageTiming {
                        name: "denoise".into(),
                        seconds: 12.25,
                    },
                    StageTiming {
                        name: "decode".into(),
                        seconds: 0.1,
                    },
                ],
                warnings: vec![
                    "VAE decoder could not be prepared on CUDA (CUDNN_STATUS_NOT_INITIALIZED); it runs on the CPU".into(),
                    "ESRGAN RealESRGAN_x4plus.pth ran out of GPU memory; it runs with 96-pixel tiles".into(),
                ],
            }),
        ),
        case(
            "05-done-no-timings",
            Message::Done(Done {
                job: 7,
                image: image(
                    1,
                    1,
                    Channels::Gray,
                    SampleFormat::U8,
                    Transfer::Srgb,
                    vec![128],
                ),
                timings: vec![],
                warnings: vec![],
            }),
        ),
        case(
            "06-failed",
            Message::Failed(Failed {
                job: 42,
                error: ErrorInfo::new(ErrorKind::Cancelled, "the job was cancelled"),
            }),
        ),
        case("07-cancel", Message::Cancel { job: 42 }),
        case("08-get-status", Message::GetStatus),
        case(
            "09-status",
            Message::Status(Status {
                daemon_version: "0.1.0".into(),
                runtime: "1.22.0 (/home/ana/.local/share/tessera/runtime/libonnxruntime.so.1.22.0)"
                    .into(),
                device: "CUDA (NVIDIA H100 80GB HBM3)".into(),
                running: Some(42),
                running_fraction: 0.5,
                queued: 2,
                clients: 3,
                data_dir: "/home/ana/.local/share/tessera".into(),
                sessions: vec![
                    "UNet+ControlNet juggernaut_reborn.safetensors".into(),
                    "VAE decoder vae-ft-mse-840000-ema-pruned.safetensors".into(),
                ],
                resident_bytes: 5_368_709_120,
                warnings: vec!["DirectML was dropped: its probe gave wrong numbers (error 0.5)".into()],
                device_memory: Some(DeviceMemory {
                    device: "NVIDIA H100 80GB HBM3".into(),
                    total_bytes: 85_520_809_984,
                    free_bytes: 79_456_894_976,
                }),
                session_budget_bytes: Some(78_382_960_640),
                session_bytes: 3_288_334_336,
                warm_up: Some(WarmUp {
                    loading: String::new(),
                    done: 6,
                    parts: 6,
                    seconds: 27.5,
                    error: String::new(),
                }),
                running_eta_seconds: Some(42.5),
            }),
        ),
        case(
            "09-status-idle",
            Message::Status(Status {
                daemon_version: "0.1.0".into(),
                runtime:
                    r"1.22.0 (C:\Users\Jürgen\AppData\Roaming\Tessera\data\runtime\onnxruntime.dll)"
                        .into(),
                device: "CPU".into(),
                running: None,
                running_fraction: 0.0,
                queued: 0,
                clients: 1,
                data_dir: r"C:\Users\Jürgen\AppData\Roaming\Tessera\data".into(),
                sessions: vec![],
                resident_bytes: 0,
                                warnings: vec![],
                device_memory: None,
                session_budget_bytes: None,
                session_bytes: 0,
                warm_up: None,
                running_eta_seconds: None,
            }),
        ),
        case(
            "09-status-warming",
            Message::Status(Status {
                daemon_version: "0.1.0".into(),
                runtime: "1.32.0 (/opt/onnxruntime/libonnxruntime.so.1.32.0)".into(),
                device: "CPU".into(),
                running: None,
                running_fraction: 0.0,
                queued: 0,
                clients: 1,
                data_dir: "/home/ana/.local/share/tessera".into(),
                sessions: vec!["ESRGAN RealESRGAN_x4plus.pth".into()],
                resident_bytes: 734_003_200,
                warnings: vec![],
                device_memory: None,
                session_budget_bytes: None,
                session_bytes: 0,
                warm_up: Some(WarmUp {
                    loading: "UNet juggernaut_reborn.safetensors".into(),
                    done: 1,
                    parts: 6,
                    seconds: 3.25,
                    error: String::new(),
                }),
                running_eta_seconds: None,
            }),
        ),
        case("10-list-models", Message::ListModels { hashes: false }),
        case(
            "10-list-models-hashes",
            Message::ListModels { hashes: true },
        ),
        case(
            "11-models",
            Message::Models(ModelList {
                models: vec![
                    ModelEntry {
                        kind: ModelKind::Checkpoint,
                        name: "juggernaut_reborn".into(),
                        file: "checkpoints/juggernaut_reborn.safetensors".into(),
                        size: 2_132_625_894,
                        sha256: sha('a'),
                    },
                    ModelEntry {
                        kind: ModelKind::Vae,
                        name: "vae-ft-mse-840000".into(),
                        file: "vae/vae-ft-mse-840000.safetensors".into(),
                        size: 334_643_268,
                        sha256: None,
                    },
                    ModelEntry {
                        kind: ModelKind::ControlNet,
                        name: "control_v11f1e_sd15_tile".into(),
                        file: "controlnet/control_v11f1e_sd15_tile".into(),
                        size: 1_445_157_120,
                        sha256: sha('0'),
                    },
                    ModelEntry {
                        kind: ModelKind::Upscaler,
                        name: "4x-UltraSharp".into(),
                        file: "upscalers/4x-UltraSharp.pth".into(),
                        size: 66_961_958,
                        sha256: None,
                    },
                    ModelEntry {
                        kind: ModelKind::Lora,
                        name: "détails_ñ".into(),
                        file: "loras/détails_ñ.safetensors".into(),
                        size: 0,
                        sha256: sha('f'),
                    },
                    ModelEntry {
                        kind: ModelKind::Embedding,
                        name: "JuggernautNegative-neg".into(),
                        file: "embeddings/JuggernautNegative-neg.pt".into(),
                        size: u64::MAX,
                        sha256: None,
                    },
                ],
            }),
        ),
        case(
            "11-models-empty",
            Message::Models(ModelList { models: vec![] }),
        ),
        case("12-shutdown", Message::Shutdown),
        case("13-shutting-down", Message::ShuttingDown),
    ]);
    for (kind, sentence) in error_examples() {
        cases.push(case(
            format!("14-error-{:02}-{}", kind as u32, kind.name()),
            Message::Error(ErrorInfo::new(kind, sentence)),
        ));
    }
    cases
}
