//! Errors a user can see read as sentences (issue 17): no `Some(..)`, no Rust enum names such as `Q2K`,
//! `ContextExceeded` or `BadPort`, no struct dumps; each names the thing in plain words and, where there is
//! something to do, says what. Some are triggered through the `cloister` binary, others by formatting the error
//! values the runner's messages are built from.

use std::process::Command;

use client::session::ApplianceError;
use client::verify::{ClockCounters, VerifyError};
use model::quant::GgmlType;
use model::transformer::ModelError;
use net::proto::ErrorCode;

const CLOISTER: &str = env!("CARGO_BIN_EXE_cloister");

/// Debug forms that must never reach a user.
const DEBUG_FORMS: [&str; 13] = [
    "Some(",
    "None",
    "Q2K",
    "IQ4XS",
    "ContextExceeded",
    "TpmFailure",
    "BadPort",
    "OutOfRange",
    "TooLarge {",
    "ClockCounters {",
    "BadPcr",
    "Malformed",
    "[0x",
];

fn assert_reads_well(text: &str) {
    for form in DEBUG_FORMS {
        assert!(!text.contains(form), "{form:?} in {text:?}");
    }
}

/// Offset of the u32 type field of tensor `name` in a GGUF header: the name as a GGUF string (u64 length, bytes),
/// then n_dims (u32) and the dimensions (u64 each) come before it (GGUF's tensor info layout).
fn type_field_offset(blob: &[u8], name: &str) -> usize {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(name.as_bytes());
    let at = blob
        .windows(pattern.len())
        .position(|window| window == pattern)
        .unwrap_or_else(|| panic!("{name} is not in the blob"));
    let dims_at = at + pattern.len();
    let n_dims = u32::from_le_bytes(blob[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

#[test]
fn a_tensor_of_a_type_the_engine_cannot_run_is_named_with_its_ggml_type() {
    let mut blob = model::tiny::generate(&model::tiny::TinySpec::llama(), 1);
    // blk.0.attn_v.weight is Q8_0; IQ4_NL has the same block length and fewer bytes, so the file still parses, but
    // the engine has no dot product for it.
    let at = type_field_offset(&blob, "blk.0.attn_v.weight");
    assert_eq!(
        u32::from_le_bytes(blob[at..at + 4].try_into().unwrap()),
        GgmlType::Q8_0 as u32
    );
    blob[at..at + 4].copy_from_slice(&(GgmlType::IQ4NL as u32).to_le_bytes());
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("iq4_nl.gguf");
    std::fs::write(&path, &blob).unwrap();
    let output = Command::new(CLOISTER)
        .args(["generate", "--max-tokens", "1", "--model"])
        .arg(&path)
        .arg("hello")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "tensor blk.0.attn_v.weight has type IQ4_NL, which this engine cannot multiply"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("use a model quantized to"), "{stderr}");
    assert_reads_well(&stderr);
}

#[test]
fn a_prompt_that_does_not_fit_says_what_to_lower() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("tiny.gguf");
    std::fs::write(
        &path,
        model::tiny::generate(&model::tiny::TinySpec::llama(), 1),
    )
    .unwrap();
    let output = Command::new(CLOISTER)
        .args(["generate", "--max-tokens", "100000", "--model"])
        .arg(&path)
        .arg("hello")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plus --max-tokens 100000"), "{stderr}");
    assert!(stderr.contains("the model's context is 512"), "{stderr}");
    assert_reads_well(&stderr);
}

#[test]
fn error_values_read_as_sentences() {
    let bad_tensor = ModelError::BadTensor {
        role: "attn_q.weight",
        layer: Some(0),
        ggml_type: GgmlType::IQ4XS,
    }
    .to_string();
    assert!(
        bad_tensor.starts_with("tensor blk.0.attn_q.weight has type IQ4_XS"),
        "{bad_tensor}"
    );
    let wrong_shape = ModelError::BadTensor {
        role: "output.weight",
        layer: None,
        ggml_type: GgmlType::Q6K,
    }
    .to_string();
    assert!(
        wrong_shape.starts_with("tensor output.weight (type Q6_K) does not have the shape"),
        "{wrong_shape}"
    );

    let busy = ApplianceError(ErrorCode::ContextExceeded).to_string();
    assert!(busy.contains("lower --max-tokens"), "{busy}");
    assert!(
        busy.ends_with("(appliance error: context exceeded)"),
        "{busy}"
    );

    let rollback = VerifyError::ClockRollback {
        previous: ClockCounters {
            clock: 9000,
            reset_count: 3,
            restart_count: 0,
        },
        quoted: ClockCounters {
            clock: 100,
            reset_count: 2,
            restart_count: 0,
        },
    }
    .to_string();
    assert!(
        rollback.contains("clock 9000 ms, resetCount 3, restartCount 0"),
        "{rollback}"
    );
    let refused = VerifyError::CredentialRefused(ErrorCode::TpmFailure).to_string();
    assert!(
        refused.contains("(appliance error: TPM failure)"),
        "{refused}"
    );
    let log = VerifyError::FirmwareLogMalformed(tpm::tcg_log::TcgLogError::BadPcr(31)).to_string();
    assert!(log.contains("names PCR 31"), "{log}");

    let port = net::serving::ApplianceConfig::from_cmdline("ip=dhcp port=99999")
        .unwrap_err()
        .to_string();
    assert_eq!(port, "port= is not a number from 1 to 65535");
    let ctx = net::serving::ApplianceConfig::from_cmdline("ip=dhcp ctx=1")
        .unwrap_err()
        .to_string();
    assert!(ctx.starts_with("ctx= is not a number from 16"), "{ctx}");
    let frame = net::frame::parse_header(u32::MAX.to_be_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        frame.contains("larger than the 65536-byte limit"),
        "{frame}"
    );
    let decode = net::proto::Response::parse(&[0xff, 0xff])
        .unwrap_err()
        .to_string();
    assert_eq!(decode, "the message does not decode");

    for text in [
        &bad_tensor,
        &wrong_shape,
        &busy,
        &rollback,
        &refused,
        &log,
        &port,
        &ctx,
        &frame,
        &decode,
    ] {
        assert_reads_well(text);
    }
}

#[test]
fn chat_arguments_out_of_range_are_a_usage_error() {
    let output = Command::new(CLOISTER)
        .args([
            "chat",
            "--json",
            "--manifest",
            "/nonexistent/manifest.json",
            "--top-p",
            "0",
            "hi",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--top-p must be in (0, 1]"), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (line["kind"].as_str(), line["exit_code"].as_u64()),
        (Some("usage"), Some(2))
    );
}
