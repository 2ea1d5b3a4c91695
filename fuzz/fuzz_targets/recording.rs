//! Fuzz target `recording`: the check lives in `baton::fuzzing::recording`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::recording(data));
