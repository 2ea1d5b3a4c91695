//! Fuzz target `chunk_parse`: the check lives in `baton::fuzzing::chunk_parse`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::chunk_parse(data));
