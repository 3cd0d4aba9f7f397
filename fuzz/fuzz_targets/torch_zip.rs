//! Fuzz target `torch_zip`: see `tessera::fuzzing::torch_zip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::torch_zip(data));
