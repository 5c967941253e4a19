//! The appliance's request handler and its TPM procedures (`kernel::appliance`, `kernel::boot_tpm`)
//! against a real swtpm that each test starts itself, with a generated tiny model: the measured
//! boot, attestation, credential activation, and every error answer.
//!
//! They are library unit tests, not `kernel/tests/`, because an integration test would link the
//! freestanding binary with the std-enabled `tpm` dev-dependency.
//! These tests fail, not skip, when swtpm is missing: the message names the Debian packages.

use super::support::{Socket, Swtpm, TempDir};
use crate::appliance::Appliance;
use crate::boot_tpm;
use crate::generations::Generations;
use model::gguf::Gguf;
use model::session::Engine;
use model::tiny::{generate, TinySpec};
use net::proto::{
    ChannelBinding, ErrorCode, GenerateRequest, ModelInfo, Prompt, Request, Response, Sampling,
};
use net::serving::ApplianceConfig;
use net::{Handler, Reply};
use tpm::attest::QuoteInfo;
use tpm::commands::PcrSelection;
use tpm::eventlog::EventLog;
use tpm::measurement::BootDigests;

pub(super) const CMDLINE: &str = "ip=10.0.2.15/24 gw=10.0.2.2 port=7001 ctx=64 sessions=1";
const KERNEL_DIGEST: [u8; 32] = [0x4b; 32];
const MODEL_DIGEST: [u8; 32] = [0x6d; 32];
pub(super) const BINDING: ChannelBinding = ChannelBinding {
    spki_sha256: [1; 32],
    exporter: [2; 32],
};
/// PCRs 12-14.
pub(super) const BOOT_PCRS: u32 = 0x7000;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A fixed nonce source standing in for the kernel's DRBG.
pub(super) fn random(buffer: &mut [u8]) -> bool {
    buffer.fill(0x5a);
    true
}

/// A clock that advances a second on every reading, so the TPM's rate limit (at most one request per
/// `TPM_MIN_GAP_US`) never holds these tests back; `tpm_rate_limits` uses a clock of its own.
fn now_us() -> u64 {
    thread_local! {
        // Per test (each runs on a thread of its own), so other tests' readings do not stretch the gaps.
        static NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    NOW.with(|now| {
        now.set(now.get() + 1_000_000);
        now.get()
    })
}

type TestAppliance = ClockedAppliance<fn() -> u64>;

/// The handler over swtpm with the test's nonce source and the clock `C`.
pub(super) type ClockedAppliance<C> = Appliance<'static, Socket, fn(&mut [u8]) -> bool, C>;

/// Boots the appliance's logic as `kernel_main` does, over a fresh swtpm: measure, create the
/// identity, reserve the generation pool. Returns the handler and the event log it serves.
fn boot(swtpm: &Swtpm) -> (TestAppliance, EventLog) {
    boot_with_clock(swtpm, now_us as fn() -> u64)
}

/// [`boot`] with the clock `now_us`.
pub(super) fn boot_with_clock<C: Fn() -> u64>(
    swtpm: &Swtpm,
    now_us: C,
) -> (ClockedAppliance<C>, EventLog) {
    let mut tpm = swtpm.connect();
    boot_tpm::startup(&mut tpm).unwrap();
    let config = ApplianceConfig::from_cmdline(CMDLINE).unwrap();
    let log =
        boot_tpm::measure_boot(&mut tpm, KERNEL_DIGEST, MODEL_DIGEST, &config, CMDLINE).unwrap();
    let identity = boot_tpm::create_identity(&mut tpm).unwrap();
    let blob: &'static [u8] = Box::leak(generate(&TinySpec::llama(), 1).into_boxed_slice());
    let engine = Engine::load(&Gguf::parse(blob).unwrap()).unwrap();
    let generations = Generations::reserve(engine, &config.serving);
    let mut log_bytes = vec![0u8; log.buffer_len()];
    let written = log.emit(&mut log_bytes).unwrap();
    log_bytes.truncate(written);
    let info = ModelInfo {
        length: blob.len() as u64,
        sha256: MODEL_DIGEST,
    };
    let boot_log = crate::boot_log::whole_boot(&[], &log).unwrap();
    let appliance = Appliance::new(
        info,
        tpm,
        identity,
        log_bytes,
        boot_log,
        generations,
        random as fn(&mut [u8]) -> bool,
        now_us,
    );
    (appliance, log)
}

/// TPM2_MakeCredential in software, by `tpm2_makecredential --tcti none` (tpm2-tools): the
/// credential blob and the encrypted seed for the EK whose public area is `ek_public`.
pub(super) fn make_credential(ek_public: &[u8], name: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let dir = TempDir::new("credential");
    let mut sized = (ek_public.len() as u16).to_be_bytes().to_vec();
    sized.extend_from_slice(ek_public);
    std::fs::write(dir.0.join("ek.pub"), sized).unwrap();
    std::fs::write(dir.0.join("secret"), secret).unwrap();
    let name: String = name.iter().map(|byte| format!("{byte:02x}")).collect();
    let output = std::process::Command::new("tpm2_makecredential")
        .args(["--tcti", "none", "-u"])
        .arg(dir.0.join("ek.pub"))
        .arg("-s")
        .arg(dir.0.join("secret"))
        .args(["-n", &name, "-o"])
        .arg(dir.0.join("out"))
        .output()
        .expect("tpm2_makecredential (Debian package tpm2-tools)");
    assert!(
        output.status.success(),
        "tpm2_makecredential: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // tpm2-tools' file: magic, version, then TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
    let out = std::fs::read(dir.0.join("out")).unwrap();
    let sized = |at: usize| {
        let len = usize::from(u16::from_be_bytes([out[at], out[at + 1]]));
        (out[at + 2..at + 2 + len].to_vec(), at + 2 + len)
    };
    let (blob, next) = sized(8);
    let (seed, _) = sized(next);
    (blob, seed)
}

pub(super) fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Response(response) => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn measure_boot_records_the_contracts_events_and_the_pcrs_its_replay_predicts() {
    let swtpm = Swtpm::start();
    let (mut appliance, log) = boot(&swtpm);
    let config = ApplianceConfig::from_cmdline(CMDLINE).unwrap();
    let digests = BootDigests {
        kernel: KERNEL_DIGEST,
        model: MODEL_DIGEST,
        serving: sha256(config.serving_text().as_bytes()),
        configuration: sha256(config.configuration_text().as_bytes()),
        command_line: sha256(CMDLINE.as_bytes()),
    };
    let expected = digests.events();
    let events: Vec<_> = log.events().collect();
    assert_eq!(events.len(), 5);
    for (event, measurement) in events.iter().zip(expected.iter()) {
        assert_eq!(event.pcr(), measurement.pcr);
        assert_eq!(event.kind(), measurement.kind);
        assert_eq!(*event.digest(), measurement.digest);
        assert_eq!(event.description(), measurement.description);
    }
    let selection = PcrSelection::from_mask(BOOT_PCRS).unwrap();
    let values = tpm::commands::pcr_read(appliance.tpm(), selection).unwrap();
    assert_eq!(values.values[12..15], digests.replay());
}

#[test]
fn attest_quotes_the_boot_pcrs_qualified_by_nonce_and_binding() {
    let swtpm = Swtpm::start();
    let (mut appliance, log) = boot(&swtpm);
    let nonce = [9u8; 32];
    let request = Request::Attest {
        nonce,
        pcr_mask: BOOT_PCRS,
    };
    let Response::Evidence(evidence) = answer(appliance.handle(0, &request, Some(&BINDING))) else {
        panic!("no evidence");
    };
    let info = QuoteInfo::parse(&evidence.attest).unwrap();
    assert_eq!(
        info.extra_data,
        net::proto::qualifying_data(&nonce, &BINDING).as_slice()
    );
    assert_eq!(info.selection, PcrSelection::from_mask(BOOT_PCRS).unwrap());
    assert_eq!(evidence.pcr_values.len(), 3);
    assert_eq!(evidence.pcr_values[..], log.replay()[12..15]);
    assert_eq!(
        EventLog::parse(&evidence.event_log).unwrap().replay(),
        log.replay()
    );
    assert!(!evidence.ek_certificate.is_empty());
    // The whole boot's crypto-agile log replays to the same PCRs 12-14 the quote covers.
    let whole = tpm::tcg_log::TcgLog::parse(&evidence.firmware_log).unwrap();
    assert_eq!(whole.replay_sha256()[12..15], evidence.pcr_values[..]);
}

#[test]
fn attest_errors_unbound_and_bad_masks() {
    let swtpm = Swtpm::start();
    let (mut appliance, _) = boot(&swtpm);
    let attest = |pcr_mask| Request::Attest {
        nonce: [0; 32],
        pcr_mask,
    };
    assert_eq!(
        answer(appliance.handle(0, &attest(BOOT_PCRS), None)),
        Response::Error(ErrorCode::Unbound)
    );
    for mask in [0, 1 << 24, u32::MAX] {
        assert_eq!(
            answer(appliance.handle(0, &attest(mask), Some(&BINDING))),
            Response::Error(ErrorCode::BadRequest),
            "mask {mask:#x}"
        );
    }
}

#[test]
fn activation_returns_the_secret_and_a_corrupted_blob_fails() {
    let swtpm = Swtpm::start();
    let (mut appliance, _) = boot(&swtpm);
    let Response::Evidence(evidence) = answer(appliance.handle(
        0,
        &Request::Attest {
            nonce: [0; 32],
            pcr_mask: BOOT_PCRS,
        },
        Some(&BINDING),
    )) else {
        panic!("no evidence");
    };
    let ak = tpm::public::PublicArea::from_bytes(&evidence.ak_public).unwrap();
    let secret = b"cloister activation secret 32 b!";
    let (credential_blob, encrypted_secret) =
        make_credential(&evidence.ek_public, ak.name().as_bytes(), secret);
    let request = Request::ActivateCredential {
        credential_blob: credential_blob.clone(),
        secret: encrypted_secret.clone(),
    };
    assert_eq!(
        answer(appliance.handle(0, &request, Some(&BINDING))),
        Response::Credential(secret.to_vec())
    );
    let mut corrupted = credential_blob;
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    let request = Request::ActivateCredential {
        credential_blob: corrupted,
        secret: encrypted_secret,
    };
    assert_eq!(
        answer(appliance.handle(0, &request, Some(&BINDING))),
        Response::Error(ErrorCode::TpmFailure)
    );
}

#[test]
fn model_info_and_generation_reach_the_pool_until_it_is_full() {
    let swtpm = Swtpm::start();
    let (mut appliance, _) = boot(&swtpm);
    let Response::ModelInfo(info) = answer(appliance.handle(0, &Request::ModelInfo, None)) else {
        panic!("no model info");
    };
    assert_eq!(info.sha256, MODEL_DIGEST);
    assert!(info.length > 0);
    let generate = Request::Generate(GenerateRequest {
        prompt: Prompt::Text("hello".into()),
        max_tokens: 4,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    });
    // One session was reserved (`sessions=1`): the first request streams, the second is Busy.
    assert_eq!(appliance.handle(0, &generate, None), Reply::Streaming);
    assert!(appliance.generations().any_running());
    assert_eq!(
        answer(appliance.handle(1, &generate, None)),
        Response::Error(ErrorCode::Busy)
    );
}
