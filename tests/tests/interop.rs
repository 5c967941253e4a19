//! Interop with tools nobody here wrote (issue 5 "Tests"; STYLE 8): `openssl s_client -tls1_3` completes a
//! handshake with the appliance's port, and `tpm2_checkquote` verifies the evidence `cloister verify
//! --export-evidence DIR` exports, and rejects it once a byte of it is changed. One release appliance with the
//! tiny llama model under QEMU TCG + swtpm serves both tests.
//!
//! runner/tests/verify_e2e.rs runs tpm2_checkquote too, through the library's `verify_appliance` on an image
//! whose "model" is random bytes; this file does it through the `cloister verify` command's entry point on an
//! appliance that serves a real model, and adds the tampered cases.
//!
//! Needs `openssl` (Debian package openssl) and `tpm2_checkquote` (tpm2-tools): a missing tool fails the test.

mod support;

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use client::verify::CheckquoteCommand;
use runner::verify::VerifyArgs;
use support::*;

const CMDLINE: &str = "ip=dhcp port=7000 sessions=2 ctx=128";

/// How long `openssl s_client` may take for one handshake under TCG.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    run_suite(
        CMDLINE,
        &[
            (
                "openssl_s_client_completes_a_tls13_handshake",
                openssl_s_client_completes_a_tls13_handshake,
            ),
            (
                "tpm2_checkquote_verifies_exported_evidence",
                tpm2_checkquote_verifies_exported_evidence,
            ),
        ],
    )
}

/// Runs `command` to its end, killing it after `limit`; returns (exit success, stdout + stderr, time).
fn run_bounded(mut command: Command, limit: Duration) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let mut errors = String::new();
        let _ = stderr.read_to_string(&mut errors);
        text + &errors
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {limit:?}: {}",
                command.get_program(),
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    (status.success(), reader.join().expect("output"), took)
}

fn openssl_s_client_completes_a_tls13_handshake(fixture: &Fixture) {
    require_tool("openssl", "openssl");
    let endpoint = fixture.endpoint();
    let mut command = Command::new("openssl");
    command.args([
        "s_client",
        "-tls1_3",
        "-connect",
        &endpoint.to_string(),
        "-servername",
        "cloister.invalid",
    ]);
    // stdin is /dev/null: s_client completes the handshake, prints the session and closes on EOF.
    let (success, output, took) = run_bounded(command, HANDSHAKE_LIMIT);
    assert!(success, "openssl s_client failed:\n{output}");
    // "New, <protocol>, Cipher is <suite>" follows the handshake. (The "Protocol  :" line of the session
    // block appears only with a session ticket, and the appliance issues none.)
    let (protocol, cipher) = output
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("New, ")?;
            let (protocol, cipher) = rest.split_once(", Cipher is ")?;
            Some((protocol.to_string(), cipher.trim().to_string()))
        })
        .unwrap_or_else(|| panic!("no handshake summary in openssl s_client's output:\n{output}"));
    assert_eq!(protocol, "TLSv1.3", "openssl s_client output:\n{output}");
    assert!(
        cipher.starts_with("TLS_") && cipher != "(NONE)",
        "no TLS 1.3 cipher suite negotiated:\n{output}"
    );
    eprintln!("  openssl s_client: TLSv1.3 with {cipher} in {took:.2?} (process start to exit)");
    // Each cipher suite the appliance offers works with openssl.
    for suite in ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"] {
        let mut command = Command::new("openssl");
        command.args([
            "s_client",
            "-tls1_3",
            "-ciphersuites",
            suite,
            "-connect",
            &endpoint.to_string(),
        ]);
        let (success, output, took) = run_bounded(command, HANDSHAKE_LIMIT);
        assert!(
            success && output.contains(&format!("Cipher is {suite}")),
            "openssl s_client with {suite} only:\n{output}"
        );
        eprintln!("  openssl s_client -ciphersuites {suite}: handshake in {took:.2?}");
    }
    // TLS 1.2 is refused.
    let mut command = Command::new("openssl");
    command.args(["s_client", "-tls1_2", "-connect", &endpoint.to_string()]);
    let (success, output, _) = run_bounded(command, HANDSHAKE_LIMIT);
    assert!(
        !success || !output.contains("New, TLSv1.2"),
        "the appliance accepted TLS 1.2:\n{output}"
    );
    fixture.assert_serves_correct_client();
}

/// Runs tpm2_checkquote with the exported files in `dir` and the qualification `qualification` (hex).
fn checkquote(dir: &std::path::Path, qualification: &str) -> (bool, String) {
    let command = CheckquoteCommand::for_exported(dir, qualification).command();
    let (success, output, _) = run_bounded(command, Duration::from_secs(30));
    (success, output)
}

fn tpm2_checkquote_verifies_exported_evidence(fixture: &Fixture) {
    require_tool("tpm2_checkquote", "tpm2-tools");
    let scratch = tempfile::tempdir().expect("temp dir");
    let manifest_path = scratch.path().join("manifest.json");
    fixture
        .manifest
        .write(&manifest_path)
        .expect("write manifest");
    let export = scratch.path().join("evidence");
    // `cloister verify --endpoint E --manifest M --export-evidence DIR`, through the command's own entry point
    // (the test crate cannot run the runner binary, which another package builds). With no --ek-ca it
    // trusts the runner's CA in its cache, the one that provisioned this appliance's swtpm.
    let args = VerifyArgs {
        endpoint: fixture.endpoint().to_string(),
        manifest: manifest_path,
        json: false,
        export_evidence: Some(export.clone()),
        ek_ca: Vec::new(),
        timeout: 60,
        observations: Some(scratch.path().join("observations.json")),
        trust_host: true,
        allow_debug_image: false,
    };
    let ((), took) = timed(|| {
        runner::verify::run(args).unwrap_or_else(|error| panic!("cloister verify: {error:#}"))
    });
    eprintln!("  cloister verify (handshake, attest, activate, checks, export) in {took:.2?}");

    let qualification = std::fs::read_to_string(export.join("qualification.hex"))
        .expect("qualification.hex")
        .trim()
        .to_string();
    assert_eq!(qualification.len(), 64, "{qualification}");
    let (success, output) = checkquote(&export, &qualification);
    assert!(
        success,
        "tpm2_checkquote rejected the appliance's quote:\n{output}"
    );
    // The command line cloister verify wrote for people runs too.
    let line = std::fs::read_to_string(export.join("checkquote.txt")).expect("checkquote.txt");
    let (success, output, _) = run_bounded(
        {
            let mut command = Command::new("sh");
            command.arg("-c").arg(line.trim()).current_dir(&export);
            command
        },
        Duration::from_secs(30),
    );
    assert!(success, "`{}` failed:\n{output}", line.trim());

    // tpm2_checkquote really checks: another qualification, a changed PCR value, a changed quote.
    let mut other = qualification.clone().into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let (success, _) = checkquote(&export, std::str::from_utf8(&other).expect("hex"));
    assert!(!success, "tpm2_checkquote accepted another qualification");
    for (file, offset) in [("pcrs.bin", None), ("quote.msg", Some(40))] {
        let path = export.join(file);
        let original = std::fs::read(&path).expect("exported file");
        let mut changed = original.clone();
        // pcrs.bin: the first byte of the first PCR digest, after the count, 16 selections and the list
        // header; quote.msg: a byte inside the TPMS_ATTEST.
        let at = offset.unwrap_or(4 + 16 * 8 + 4 + 4 + 2);
        changed[at] ^= 0x01;
        std::fs::write(&path, &changed).expect("write");
        let (success, _) = checkquote(&export, &qualification);
        assert!(!success, "tpm2_checkquote accepted a changed {file}");
        std::fs::write(&path, &original).expect("restore");
    }
    fixture.assert_serves_correct_client();
}
