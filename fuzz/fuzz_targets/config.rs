//! Fuzz target `config`: the check lives in `baton::fuzzing::config`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::config(data));
