//! Fuzz target `safetensors_header`: see `tessera::fuzzing::safetensors_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::safetensors_header(data));
