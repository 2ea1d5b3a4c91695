//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! the same checks the fuzz targets run (`baton::fuzzing`), as an ordinary test.
//!
//! The corpora hold the seeds and the inputs that once found a bug, so this is
//! the regression test for every fuzz finding. Running the fuzzers themselves
//! for longer is documented in the README ("Fuzzing"). The checks are behind
//! the `fuzzing` feature (Cargo.toml's `required-features` for this test):
//! `cargo test --features fuzzing`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one target's corpus; a failing file is named in the panic message.
fn replay(target: &str) {
    let files = corpus_files(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for file in files {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| baton::fuzzing::run(target, &data));
        match outcome {
            Ok(known) => assert!(known, "no fuzz check named {target}"),
            Err(_) => panic!("{target}: {} breaks an invariant (see the panic above)", file.display()),
        }
    }
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = baton::fuzzing::TARGETS.iter().map(|t| t.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn chunk_parse_corpus() {
    replay("chunk_parse");
}

#[test]
fn overlap_corpus() {
    replay("overlap");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn recording_corpus() {
    replay("recording");
}

#[test]
fn sse_decoder_corpus() {
    replay("sse_decoder");
}

#[test]
fn tool_calls_corpus() {
    replay("tool_calls");
}

#[test]
fn the_overlap_reference_follows_the_documented_rule() {
    use baton::fuzzing::overlap_reference;
    use baton::policy::overlap::{Evidence, OverlapMode};
    let auto = Evidence::default();
    let seen = Evidence {
        seen_echoing: true,
        ..auto
    };
    let off = Evidence {
        setting: OverlapMode::Off,
        ..auto
    };
    let rule = |p: &str, c: &str| overlap_reference(p, c, auto);
    assert_eq!(rule("the quick brown", "quick brown fox"), " fox");
    assert_eq!(rule("the quick bro", "quick brown fox"), "wn fox");
    assert_eq!(rule("and I said no", " no, never"), " no, never");
    assert_eq!(rule("hello ", " world"), "world");
    assert_eq!(rule("", "  anything"), "  anything");
    // A genuine repeat is kept; an ambiguous one too, until the route is seen echoing.
    assert_eq!(rule("nickel violet", " violet raven"), " violet raven");
    assert_eq!(rule("nickel violet ", "violet raven"), "violet raven");
    assert_eq!(
        overlap_reference("nickel violet ", "violet violet raven", seen),
        "violet raven"
    );
    // A restart, whatever its length; nothing with `off`.
    assert_eq!(rule("R", "Réponse"), "éponse");
    assert_eq!(overlap_reference("R", "Réponse", off), "Réponse");
    // Indentation after a line break is text.
    assert_eq!(rule("x = 1;\n", "    y = 2;"), "    y = 2;");
}
