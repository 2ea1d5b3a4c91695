//! Fuzz target `overlap`: the check lives in `baton::fuzzing::overlap`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::overlap(data));
