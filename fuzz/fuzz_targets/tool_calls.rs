//! Fuzz target `tool_calls`: the check lives in `baton::fuzzing::tool_calls`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::tool_calls(data));
