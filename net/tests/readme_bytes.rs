//! The protocol bytes README.md shows are the bytes this crate encodes: each example message is encoded here and
//! its hex must appear, exactly as written, in README.md's "Protocol" section (docs/ARCHITECTURE.md §5: pin the final bytes in
//! README.md and in tests).

use net::proto::{
    Done, ErrorCode, FinishReason, GenerateRequest, Prompt, Request, Response, Sampling, Token,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn protocol_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the workspace root");
    let start = readme
        .find("## Protocol")
        .expect("README.md has a Protocol section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |end| end);
    rest[..end].to_string()
}

#[test]
fn readme_examples_are_the_encoded_bytes() {
    let section = protocol_section();
    let mut examples: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut frame = Vec::new();
    Request::ModelInfo.emit(&mut frame).unwrap();
    examples.push(("ModelInfo request", frame));
    let mut frame = Vec::new();
    Request::Generate(GenerateRequest {
        prompt: Prompt::Text("Hi".into()),
        max_tokens: 8,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    })
    .emit(&mut frame)
    .unwrap();
    examples.push(("Generate", frame));
    let mut frame = Vec::new();
    Request::Cancel.emit(&mut frame).unwrap();
    examples.push(("Cancel", frame));
    let mut frame = Vec::new();
    Response::Token(Token {
        id: 28,
        text: "Hi".into(),
    })
    .emit(&mut frame)
    .unwrap();
    examples.push(("Token", frame));
    let mut frame = Vec::new();
    Response::Done(Done {
        reason: FinishReason::Length,
        prompt_tokens: 3,
        generated_tokens: 8,
        prefill_us: 1000,
        decode_us: 300,
    })
    .emit(&mut frame)
    .unwrap();
    examples.push(("Done", frame));
    let mut frame = Vec::new();
    Response::Error(ErrorCode::Busy).emit(&mut frame).unwrap();
    examples.push(("Error(Busy)", frame));

    for (what, frame) in &examples {
        let text = format!("`{}`", hex(frame));
        assert!(
            section.contains(&text),
            "README.md's Protocol section does not show the {what} frame as {text}"
        );
    }
    // The abbreviated examples: their visible prefix and suffix.
    let mut frame = Vec::new();
    Request::Attest {
        nonce: [7; 32],
        pcr_mask: 0x7000,
    }
    .emit(&mut frame)
    .unwrap();
    let shown = format!(
        "`{} … {}`",
        hex(&frame[..6]),
        hex(&frame[frame.len() - 4..])
    );
    assert!(
        section.contains(&shown),
        "Attest example {shown} not in README.md"
    );
}
