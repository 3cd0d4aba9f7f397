//! Fuzz target `frames`: see `tessera::fuzzing::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::frames(data));
