//! Fuzz target `sse_decoder`: the check lives in `baton::fuzzing::sse_decoder`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::sse_decoder(data));
