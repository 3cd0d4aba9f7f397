//! The golden vectors in `shared/golden/` freeze the wire format: each file is
//! one frame, and must decode to the message listed for it in
//! `support/golden_cases.rs` and re-encode to the same bytes. Every variant of
//! every wire enum must appear in some file.
//!
//! After a deliberate format change: bump `PROTOCOL_VERSION`, then
//! `cargo run -p tessera-protocol --example write_golden`.

#[path = "support/golden_cases.rs"]
mod golden_cases;

use bincode::config;
use golden_cases::{Case, cases};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use tessera_protocol::{
    Channels, DEFAULT_MAX_FRAME_BYTES, ErrorKind, Image, JobParams, Message, ModelKind, Preset,
    SampleFormat, Sampler, Transfer, decode, encode, read_frame, write_frame,
};

const REGENERATE: &str = "cargo run -p tessera-protocol --example write_golden";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

fn read_golden(case: &Case) -> Vec<u8> {
    let path = golden_dir().join(format!("{}.bin", case.name));
    fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); a new case needs its file: {REGENERATE}",
            path.display()
        )
    })
}

/// The wire tag and file-name stem of each `Message` variant. The match is
/// exhaustive on purpose: a new variant does not compile until it is named
/// here, and then fails `every_message_variant_has_a_golden_file` until a case
/// covers it.
fn variant(message: &Message) -> (u32, &'static str) {
    match message {
        Message::Handshake(_) => (0, "handshake"),
        Message::Submit(_) => (1, "submit"),
        Message::Accepted(_) => (2, "accepted"),
        Message::Rejected(_) => (3, "rejected"),
        Message::Progress(_) => (4, "progress"),
        Message::Done(_) => (5, "done"),
        Message::Failed(_) => (6, "failed"),
        Message::Cancel { .. } => (7, "cancel"),
        Message::GetStatus => (8, "get-status"),
        Message::Status(_) => (9, "status"),
        Message::ListModels { .. } => (10, "list-models"),
        Message::Models(_) => (11, "models"),
        Message::Shutdown => (12, "shutdown"),
        Message::ShuttingDown => (13, "shutting-down"),
        Message::Error(_) => (14, "error"),
    }
}

/// How many variants an enum has on the wire, found by decoding tag 0, 1, …
/// followed by zeros (which decode as zero numbers, empty strings and lists,
/// `None`, `false` and tag 0) until a tag is refused.
fn wire_variant_count<T: DeserializeOwned>() -> u32 {
    (0u32..)
        .find(|tag| {
            let mut bytes = tag.to_le_bytes().to_vec();
            bytes.resize(4 + 512, 0);
            bincode::serde::decode_from_slice::<T, _>(&bytes, config::legacy()).is_err()
        })
        .unwrap()
}

fn images(message: &Message) -> Vec<&Image> {
    match message {
        Message::Submit(s) => vec![&s.image],
        Message::Done(d) => vec![&d.image],
        _ => vec![],
    }
}

#[test]
fn every_golden_file_decodes_to_its_case_and_re_encodes_byte_for_byte() {
    for case in cases() {
        let file = read_golden(&case);
        let name = &case.name;
        assert!(file.len() >= 4, "{name}: shorter than a length prefix");
        let prefix = u32::from_le_bytes(file[..4].try_into().unwrap());
        assert_eq!(
            prefix as usize,
            file.len() - 4,
            "{name}: the length prefix disagrees with the file size"
        );

        let mut reader = file.as_slice();
        let decoded = read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(reader.is_empty(), "{name}: bytes after the frame");
        assert_eq!(decoded, case.message, "{name}: decodes to another message");
        assert_eq!(decode(&file[4..]).unwrap(), case.message, "{name}");

        assert_eq!(
            encode(&case.message),
            &file[4..],
            "{name}: the payload changed; if on purpose, bump PROTOCOL_VERSION and run {REGENERATE}"
        );
        let mut written = Vec::new();
        write_frame(&mut written, &case.message).unwrap();
        assert_eq!(written, file, "{name}: the frame changed");

        for image in images(&case.message) {
            image
                .validate(u64::MAX)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn the_golden_folder_holds_exactly_the_listed_files() {
    let listed: BTreeSet<String> = cases().iter().map(|c| format!("{}.bin", c.name)).collect();
    assert_eq!(listed.len(), cases().len(), "two cases share a name");
    let present: BTreeSet<String> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    assert_eq!(
        present, listed,
        "the golden folder and the case list differ: {REGENERATE}"
    );
}

#[test]
fn every_file_is_named_after_its_variant_tag() {
    for case in cases() {
        let (tag, stem) = variant(&case.message);
        let expected = format!("{tag:02}-{stem}");
        assert!(
            case.name == expected || case.name.starts_with(&format!("{expected}-")),
            "{} should be named {expected}[-detail]",
            case.name
        );
        assert_eq!(&encode(&case.message)[..4], &tag.to_le_bytes());
    }
}

#[test]
fn every_message_variant_has_a_golden_file() {
    let count = wire_variant_count::<Message>();
    assert_eq!(count, 15, "Message changed: bump PROTOCOL_VERSION");
    let covered: BTreeSet<u32> = cases().iter().map(|c| variant(&c.message).0).collect();
    assert_eq!(covered, (0..count).collect());
}

#[test]
fn every_error_kind_has_a_golden_file() {
    let count = wire_variant_count::<ErrorKind>();
    let covered: BTreeSet<u32> = cases()
        .iter()
        .filter_map(|c| match &c.message {
            Message::Error(info) => Some(info.kind as u32),
            _ => None,
        })
        .collect();
    assert_eq!(covered, (0..count).collect());
}

#[test]
fn every_image_layout_and_model_kind_appears() {
    let all = cases();
    let images: Vec<&Image> = all.iter().flat_map(|c| images(&c.message)).collect();
    let channels: BTreeSet<u32> = images.iter().map(|i| i.channels as u32).collect();
    let samples: BTreeSet<u32> = images.iter().map(|i| i.sample as u32).collect();
    let transfers: BTreeSet<u32> = images.iter().map(|i| i.transfer as u32).collect();
    assert_eq!(channels, (0..wire_variant_count::<Channels>()).collect());
    assert_eq!(samples, (0..wire_variant_count::<SampleFormat>()).collect());
    assert_eq!(transfers, (0..wire_variant_count::<Transfer>()).collect());
    for c in 0..wire_variant_count::<Channels>() {
        let layouts: BTreeSet<(u32, u32)> = images
            .iter()
            .filter(|i| i.channels as u32 == c)
            .map(|i| (i.sample as u32, i.transfer as u32))
            .collect();
        assert!(layouts.len() >= 2, "channels {c}: fewer than two layouts");
    }

    let kinds: BTreeSet<ModelKind> = all
        .iter()
        .flat_map(|c| match &c.message {
            Message::Models(list) => list.models.iter().map(|m| m.kind).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(kinds, ModelKind::ALL.into_iter().collect());
    assert_eq!(
        wire_variant_count::<ModelKind>() as usize,
        ModelKind::ALL.len()
    );
}

#[test]
fn every_preset_and_sampler_appears() {
    let all = cases();
    let params: Vec<&JobParams> = all
        .iter()
        .filter_map(|c| match &c.message {
            Message::Submit(s) => Some(&s.params),
            _ => None,
        })
        .collect();
    let presets: BTreeSet<u32> = params.iter().map(|p| p.preset as u32).collect();
    let samplers: BTreeSet<u32> = params.iter().map(|p| p.sampler as u32).collect();
    assert_eq!(presets, (0..wire_variant_count::<Preset>()).collect());
    assert_eq!(samplers, (0..wire_variant_count::<Sampler>()).collect());
    assert!(params.iter().any(|p| p.loras.len() > 1));
    assert!(params.iter().any(|p| *p == &JobParams::default()));
}

#[test]
fn options_booleans_and_non_ascii_strings_appear() {
    let all = cases();
    let names: BTreeSet<&str> = all.iter().map(|c| c.name.as_str()).collect();
    for name in [
        "00-handshake-unicode",  // 2-, 3- and 4-byte UTF-8
        "01-submit",             // upscaler: None, Clarity's defaults
        "01-submit-upscaler",    // upscaler: Some
        "04-progress",           // eta_seconds: Some
        "04-progress-no-eta",    // eta_seconds: None
        "09-status",             // running: Some
        "09-status-idle",        // running: None
        "10-list-models",        // false
        "10-list-models-hashes", // true
        "11-models",             // sha256 Some and None
        "11-models-empty",       // empty sequence
    ] {
        assert!(names.contains(name), "{name} is missing");
    }
    assert!(
        all.iter()
            .any(|c| matches!(&c.message, Message::Handshake(h) if h.agent.contains('🎨')))
    );
}

#[test]
fn every_truncation_of_every_golden_payload_is_refused() {
    for case in cases() {
        let file = read_golden(&case);
        let payload = &file[4..];
        for cut in 0..payload.len() {
            assert!(
                decode(&payload[..cut]).is_err(),
                "{}: {cut} bytes decoded",
                case.name
            );
        }
    }
}

#[test]
fn a_corrupted_payload_is_refused_or_re_encodes_to_itself() {
    // Deterministic xorshift, so that a failure reproduces.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let payloads: Vec<Vec<u8>> = cases()
        .iter()
        .map(|c| read_golden(c)[4..].to_vec())
        .collect();
    for _ in 0..3000 {
        let mut payload = payloads[next() as usize % payloads.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = next() as usize % payload.len();
            payload[at] = next() as u8;
        }
        if let Ok(message) = decode(&payload) {
            assert_eq!(encode(&message), payload);
        }
    }
}
