//! Seed inputs for each target (written by `cargo run -p fuzz-cases --example seeds`): well-formed examples of
//! what each parser expects, so that fuzzing starts from the valid paths rather than from the first length
//! check.

use net::proto::{
    ChatMessage, Done, ErrorCode, Evidence, FinishReason, GenerateRequest, ModelInfo, Prompt,
    Request, Response, Role, Sampling, Token,
};
use tpm::eventlog::{self, Event, EventKind, EventLog};

/// (target, seed name, bytes) for every seed.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (index, stream) in frame_streams().into_iter().enumerate() {
        let mut input = vec![index as u8 * 13];
        input.extend(stream);
        seeds.push(("frames", format!("seed-{index:02}"), input));
    }
    let mut hello = vec![1];
    hello.extend(crate::tls_server::client_hello());
    seeds.push(("tls_server", "seed-client-hello".into(), hello));
    seeds.push((
        "tls_server",
        "seed-plaintext-frame".into(),
        plaintext_model_info(),
    ));
    for (index, input) in tpm_responses().into_iter().enumerate() {
        seeds.push(("tpm_responses", format!("seed-{index:02}"), input));
    }
    seeds.push(("quote", "seed-quote".into(), quote()));
    seeds.push(("event_logs", "seed-kernel-log".into(), kernel_log()));
    let ovmf = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/ovmf-tcg2-eventlog.bin");
    seeds.push((
        "event_logs",
        "seed-ovmf-log".into(),
        std::fs::read(ovmf).expect("the OVMF log fixture"),
    ));
    let certificate =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ek-certificate.der");
    seeds.push((
        "ek_chain",
        "seed-swtpm-ek".into(),
        std::fs::read(certificate).expect("the EK fixture"),
    ));
    seeds
}

fn frame_of(message: &impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out);
    out
}

/// Streams of one or more frames: each request kind, and each response kind.
fn frame_streams() -> Vec<Vec<u8>> {
    let generate = Request::Generate(GenerateRequest {
        prompt: Prompt::Chat(vec![
            ChatMessage {
                role: Role::System,
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "What is the capital of France?".into(),
            },
        ]),
        max_tokens: 32,
        sampling: Sampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            seed: 7,
        },
        stop: vec!["\n\n".into()],
    });
    let requests = [
        Request::ModelInfo,
        Request::Attest {
            nonce: [9; 32],
            pcr_mask: 0x70ff,
        },
        Request::ActivateCredential {
            credential_blob: vec![1; 68],
            secret: vec![2; 256],
        },
        generate,
        Request::Generate(GenerateRequest {
            prompt: Prompt::Tokens(vec![1, 2, 3, 50_000]),
            max_tokens: 1,
            sampling: Sampling::GREEDY,
            stop: Vec::new(),
        }),
        Request::Cancel,
    ];
    let responses = [
        Response::ModelInfo(ModelInfo {
            length: 98_362_432,
            sha256: [0x5a; 32],
        }),
        Response::Error(ErrorCode::Busy),
        Response::Evidence(Evidence {
            attest: quote()[2..].to_vec(),
            signature: vec![0, 0x18, 0, 0x0b, 0, 32, 1, 0, 32, 2],
            ak_public: vec![0, 0x23, 0, 0x0b],
            ek_public: vec![0, 1, 0, 0x0b],
            ek_certificate: vec![0x30, 0x82, 0, 4, 1, 2, 3, 4],
            pcr_values: vec![[0; 32]; 3],
            event_log: kernel_log(),
            firmware_log: vec![0; 8],
        }),
        Response::Credential(vec![7; 32]),
        Response::Token(Token {
            id: 42,
            text: "Paris".into(),
        }),
        Response::Done(Done {
            reason: FinishReason::Stop,
            prompt_tokens: 47,
            generated_tokens: 24,
            prefill_us: 1000,
            decode_us: 2000,
        }),
    ];
    let mut streams: Vec<Vec<u8>> = requests
        .iter()
        .map(|request| frame_of(&|out: &mut Vec<u8>| request.emit(out).unwrap()))
        .collect();
    streams.extend(
        responses
            .iter()
            .map(|response| frame_of(&|out: &mut Vec<u8>| response.emit(out).unwrap())),
    );
    streams.push(streams.concat());
    streams
}

/// A plaintext ModelInfo frame sent to the TLS port (a client that skips TLS).
fn plaintext_model_info() -> Vec<u8> {
    let mut input = vec![0];
    Request::ModelInfo.emit(&mut input).unwrap();
    input
}

/// Success responses (tag TPM_ST_NO_SESSIONS or TPM_ST_SESSIONS, code 0) with plausible parameter areas, one
/// for each command the target runs, and an error response.
fn tpm_responses() -> Vec<Vec<u8>> {
    let carve = |bodies: &[Vec<u8>]| {
        let mut input = Vec::new();
        for body in bodies {
            input.extend_from_slice(&(body.len() as u16).to_be_bytes());
            input.extend_from_slice(body);
        }
        input
    };
    let response = |tag: u16, code: u32, parameters: &[u8]| {
        let mut body = tag.to_be_bytes().to_vec();
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(parameters);
        body
    };
    let mut random = vec![0, 32];
    random.extend([0x11; 32]);
    let mut pcr_read = vec![
        0, 0, 0, 1, 0, 0, 0, 1, 0, 0x0b, 3, 0x91, 0x70, 0, 0, 0, 0, 6,
    ];
    for _ in 0..6 {
        pcr_read.extend([0, 32]);
        pcr_read.extend([0x22; 32]);
    }
    let bodies = vec![
        response(0x8001, 0, &[]),
        response(0x8001, 0, &random),
        response(0x8002, 0, &[0, 0, 0, 5, 0, 0, 1, 0, 0]),
        response(0x8001, 0, &pcr_read),
        response(0x8002, 0x0000_0101, &[]),
        response(0x8001, 0x0000_0922, &[]),
    ];
    (0..12u8)
        .map(|first| {
            let mut input = vec![first];
            input.extend(carve(&bodies));
            input
        })
        .collect()
}

/// A TPMS_ATTEST for a quote over PCRs 0-7 and 12-14 (Part 2 §10.12.12), with two leading split bytes that
/// put the whole of it in the attest part.
fn quote() -> Vec<u8> {
    let mut attest = 0xff54_4347u32.to_be_bytes().to_vec();
    attest.extend(0x8018u16.to_be_bytes());
    attest.extend([0, 34, 0, 0x0b]);
    attest.extend([0x33; 32]);
    attest.extend([0, 32]);
    attest.extend([0x44; 32]);
    attest.extend(123_456u64.to_be_bytes());
    attest.extend(3u32.to_be_bytes());
    attest.extend(0u32.to_be_bytes());
    attest.push(1);
    attest.extend(0x2023_0000u64.to_be_bytes());
    attest.extend([0, 0, 0, 1, 0, 0x0b, 3, 0xff, 0x70, 0]);
    attest.extend([0, 32]);
    attest.extend([0x55; 32]);
    let mut input = vec![attest.len() as u8, 0];
    input.extend(attest);
    input
}

/// The kernel's own log with its five kinds of event.
fn kernel_log() -> Vec<u8> {
    let mut log = EventLog::default();
    for (pcr, kind, text) in [
        (12, EventKind::KernelImage, "kernel text and rodata"),
        (13, EventKind::Model, "model"),
        (13, EventKind::ServingParameters, "serving parameters"),
        (14, EventKind::CommandLine, "command line"),
    ] {
        log.push(Event::new(pcr, kind, eventlog::sha256(text.as_bytes()), text).unwrap())
            .unwrap();
    }
    let mut out = vec![0; log.buffer_len()];
    let len = log.emit(&mut out).unwrap();
    out.truncate(len);
    out
}
