//! Fuzz target `pickle`: see `tessera::fuzzing::pickle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::pickle(data));
