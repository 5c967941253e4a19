//! Replays every file in `tests/fixtures/fuzz/` (inputs the fuzzers found interesting or that once crashed, see
//! `scripts/fuzz.sh`) through the same code the fuzz targets run (`model/fuzz/src/exercise.rs`, included below):
//! parse, metadata/tensor walk, tokenizer build + encode/decode, model load, bounded forward steps. Each must end in
//! a typed error or success; a panic (or a violated reader invariant) fails the test and names the file.

#[path = "../fuzz/src/exercise.rs"]
mod exercise;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use exercise::Outcome;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_fixture_ends_in_a_typed_result() {
    let files = fixtures();
    assert!(
        files.len() >= 10,
        "expected the fixture corpus, found {} files",
        files.len()
    );
    let mut panicked = Vec::new();
    let (mut parse_errors, mut refused, mut loaded, mut ran) = (0, 0, 0, 0);
    for path in &files {
        let bytes = std::fs::read(path).expect("fixture readable");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match panic::catch_unwind(AssertUnwindSafe(|| exercise::run(&bytes))) {
            Ok(outcome) => {
                eprintln!("{name}: {outcome:?}");
                match outcome {
                    Outcome::Parse(_) => parse_errors += 1,
                    Outcome::Refused(..) => refused += 1,
                    Outcome::Loaded { model, .. } => {
                        loaded += 1;
                        ran += usize::from(model.is_ok());
                    }
                }
            }
            Err(_) => panicked.push(name),
        }
    }
    assert!(panicked.is_empty(), "these fixtures panicked: {panicked:?}");
    // The corpus must reach past the reader: some files parse, and at least one loads and runs forward steps.
    eprintln!("{parse_errors} parse errors, {refused} refused by both loaders, {loaded} parsed and built, {ran} ran");
    assert!(parse_errors > 0 && loaded > 0 && ran > 0);
}
