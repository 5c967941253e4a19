//! Replays every saved fuzz input (`fuzz/corpus/TARGET/`: the minimised corpus of each target's runs, and the
//! seeds) through the target's body, as `scripts/fuzz.sh` runs them under libFuzzer. A crash found by fuzzing
//! is fixed and its input kept here, so it can never come back unnoticed.

use std::path::Path;

#[test]
fn every_saved_input_replays_without_a_finding() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, body) in fuzz_cases::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
        for input in &inputs {
            body(&std::fs::read(input).unwrap());
        }
        eprintln!("{name}: {} inputs replayed", inputs.len());
    }
}

/// The seeds must take each parser's valid path, or the fuzzer starts from the first length check: a fixture
/// that stopped parsing (a format change, an expired certificate) fails here rather than silently.
#[test]
fn the_seeds_are_valid_inputs() {
    use net::proto::{Request, Response};
    let seeds = fuzz_cases::seeds::seeds();
    let of = |target: &'static str| {
        seeds
            .iter()
            .filter(move |(name, _, _)| *name == target)
            .map(|(_, _, bytes)| bytes.as_slice())
    };
    for stream in of("frames").take(12) {
        let body = &stream[5..];
        assert!(Request::parse(body).is_ok() || Response::parse(body).is_ok());
    }
    let quote = of("quote").next().unwrap();
    client::verify::checks::parse_quote(&quote[2..]).expect("the quote seed parses");
    let mut logs = of("event_logs");
    client::verify::checks::parse_event_log(logs.next().unwrap()).expect("the kernel log parses");
    tpm::tcg_log::TcgLog::parse(logs.next().unwrap()).expect("the OVMF log parses");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let anchors = client::verify::TrustAnchors::from_pem_bundle(&[
        &fixtures.join("ek-root.pem"),
        &fixtures.join("ek-issuer.pem"),
    ])
    .unwrap();
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    anchors
        .verify(of("ek_chain").next().unwrap(), now)
        .expect("the EK seed verifies against the fixture CA");
}
