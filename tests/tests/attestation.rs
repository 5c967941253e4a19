//! Attestation against the real appliance (issue 5, "Tests", second bullet; docs/ARCHITECTURE.md §4): the release image under QEMU
//! TCG + swtpm with the tiny generated model, verified by the runner's client (`client::session`). A manifest for
//! another model, a manifest for another kernel, a quote replayed from an earlier session and evidence relayed from
//! a second appliance instance are each refused with the named check (`VerifyError`), the client API hands out no
//! `VerifiedSession`, and no prompt byte leaves the client: a recording proxy between client and server shows that
//! after the handshake the client sent exactly one encrypted record, the `Attest` request, and nothing after it.
//! The honest path passes and generates on the same session.
//!
//! How "no prompt byte" is shown: every request goes out as one TLS 1.3 record (RFC 8446 §5.2) whose length is its
//! frame's length plus the inner content type and the 16-byte tag; the proxy parses the client's record headers
//! independently of the client, and the test compares them with the client's own transcript. A generate request
//! would be one more record.
//!
//! One appliance serves every test of this binary; the relay test boots a second one. Needs qemu-system-x86, swtpm
//! and swtpm-tools: a missing tool fails the tests, nothing is skipped.

mod attest_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use attest_support::*;
use client::loopback::{Loopback, Reply};
use client::manifest::{self, Manifest};
use client::session::{AttestationRequest, RequestKind, UnverifiedSession};
use client::verify::{verify_evidence, Expectation, ManifestItem, VerifyError};
use net::proto::{ChannelBinding, ErrorCode, Evidence, Request, Response};

/// How long the client may take to close its connection after a refusal.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Connects through a recording proxy to `upstream`, verifies against `manifest`, and returns the check that
/// failed after asserting that the client sent nothing but the attestation request.
fn refused_through_proxy(
    upstream: std::net::SocketAddr,
    booted: &Booted,
    manifest: &Manifest,
) -> VerifyError {
    let proxy = RecordingProxy::start(upstream);
    let session = UnverifiedSession::connect(proxy.address(), CLIENT_TIMEOUT)
        .expect("TLS 1.3 handshake through the proxy");
    let transcript = session.transcript();
    let outcome = session.verify(manifest, &booted.trust, &verify_options());
    // The only way to a VerifiedSession is an Ok here.
    let error = match outcome {
        Ok(_) => panic!("verification passed against a wrong manifest or wrong evidence"),
        Err(error) => error,
    };
    let check = error
        .downcast_ref::<VerifyError>()
        .unwrap_or_else(|| panic!("the refusal names no check: {error:#}"))
        .clone();
    eprintln!("refused as expected: {error:#}");
    let traffic = proxy.finish(CLOSE_LIMIT);
    assert_only_attest_sent(&traffic, &transcript.sent(), manifest.pcr_mask());
    check
}

/// The client's records after the handshake are exactly the requests in its transcript, and the transcript is one
/// `Attest`: no Generate (no prompt), not even ActivateCredential, left the client. An encrypted alert
/// (close_notify) may follow.
fn assert_only_attest_sent(traffic: &Traffic, sent: &[client::session::Sent], pcr_mask: u32) {
    traffic.assert_well_formed();
    assert!(traffic.client_closed, "the client did not close");
    let kinds: Vec<RequestKind> = sent.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [RequestKind::Attest], "the client's transcript");
    // The record an Attest for the manifest's PCRs makes (the nonce's bytes do not change its size).
    let attest_record = record_len_of(&Request::Attest {
        nonce: [0; 32],
        pcr_mask,
    });
    assert_eq!(sent[0].frame_bytes + RECORD_OVERHEAD, attest_record);
    let records = traffic.records_after_handshake();
    let (requests, alerts): (Vec<usize>, Vec<usize>) = match records.split_first() {
        Some((first, rest)) => (vec![*first], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    assert_eq!(
        requests,
        [attest_record],
        "after the handshake the client must send the Attest record and nothing else; records: {records:?}"
    );
    // No request fits in an alert-sized record (the smallest frame is 5 bytes, an alert 2), so this one can only be
    // the client's close_notify.
    assert!(
        alerts.len() <= 1 && alerts.iter().all(|&len| len == ENCRYPTED_ALERT_LEN),
        "the client sent more than one alert after its Attest: records {records:?}"
    );
    eprintln!(
        "client -> server: {} bytes in {} records ({:?}); after the handshake only {records:?}",
        traffic.client_bytes,
        traffic.client_records.len(),
        traffic
            .client_records
            .iter()
            .map(|r| (r.content_type, r.length))
            .collect::<Vec<_>>()
    );
}

/// Attests on a plain (unverified) session of `endpoint`: the evidence, the nonce, and the session's binding.
fn fresh_evidence(
    endpoint: std::net::SocketAddr,
    nonce: [u8; 32],
    pcr_mask: u32,
) -> (Evidence, ChannelBinding) {
    let mut session = UnverifiedSession::connect(endpoint, CLIENT_TIMEOUT).expect("TLS handshake");
    let binding = session.binding();
    match session
        .exchange(AttestationRequest::Attest { nonce, pcr_mask })
        .expect("an answer to Attest")
    {
        Response::Evidence(evidence) => (evidence, binding),
        other => panic!("the appliance answered Attest with {other:?}"),
    }
}

/// The evidence passes every offline check for the session and nonce it was made for: it is genuine, and only
/// its binding to another session makes the client refuse it.
fn assert_genuine_for(
    evidence: &Evidence,
    nonce: [u8; 32],
    binding: ChannelBinding,
    booted: &Booted,
) {
    let expectation = Expectation {
        nonce,
        binding,
        manifest: &booted.manifest,
        trust: &booted.trust,
        now: SystemTime::now(),
        previous_clock: None,
        // The shared appliance boots directly.
        trust_host: true,
        allow_debug_image: false,
    };
    if let Err(error) = verify_evidence(evidence, &expectation) {
        panic!("the appliance's own evidence fails for its own session: {error}");
    }
}

#[test]
fn honest_appliance_verifies_and_generates_on_the_same_session() {
    let booted = shared_appliance();
    let proxy = RecordingProxy::start(booted.endpoint());
    let started = std::time::Instant::now();
    let session = UnverifiedSession::connect(proxy.address(), CLIENT_TIMEOUT)
        .expect("TLS 1.3 handshake through the proxy");
    let handshake = session.handshake_duration();
    let binding = session.binding();
    let (mut session, report) = session
        .verify(&booted.manifest, &booted.trust, &verify_options())
        .unwrap_or_else(|error| panic!("the honest appliance failed verification: {error:#}"));
    let connected_and_verified = started.elapsed();
    assert!(report.verified);
    assert_eq!(session.binding(), binding);
    eprintln!(
        "honest: connect + TLS handshake + attest + every check + credential activation {:.1} ms; of which TLS \
         handshake {:.1} ms (through the proxy), attest round trip {:.1} ms, activation {:.1} ms, evidence {} bytes; \
         checks passed: {:?}",
        connected_and_verified.as_secs_f64() * 1e3,
        handshake.as_secs_f64() * 1e3,
        report.timing.attest_round_trip_ms,
        report.timing.activation_round_trip_ms,
        report.evidence_bytes,
        report.checks
    );
    let prompt = TestPrompt::Raw("Attested hello".into());
    let host = host_generate(tiny_model(), &prompt, 16);
    let completion = session
        .complete(prompt.request(16), None, |_| {})
        .expect("generation on the verified session");
    let ids: Vec<u32> = completion.tokens.iter().map(|t| t.id).collect();
    assert_eq!(
        ids, host.generated_ids,
        "greedy ids on the verified session"
    );
    let sent = session.transcript().sent();
    drop(session);
    let traffic = proxy.finish(CLOSE_LIMIT);
    traffic.assert_well_formed();
    let kinds: Vec<RequestKind> = sent.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Attest,
            RequestKind::ActivateCredential,
            RequestKind::Generate
        ]
    );
    // The proxy saw exactly those three requests, in that order, each as one record.
    let expected: Vec<usize> = sent
        .iter()
        .map(|s| s.frame_bytes + RECORD_OVERHEAD)
        .collect();
    let records = traffic.records_after_handshake();
    assert_eq!(&records[..expected.len().min(records.len())], &expected[..]);
    assert!(
        records[expected.len()..]
            .iter()
            .all(|&len| len == ENCRYPTED_ALERT_LEN),
        "records after the generate request: {records:?}"
    );
}

#[test]
fn manifest_with_another_model_digest_is_refused_before_any_prompt() {
    let booted = shared_appliance();
    let other_model = scratch().join("tiny-llama-other-seed.gguf");
    std::fs::write(
        &other_model,
        model::tiny::generate(
            &model::tiny::TinySpec::llama(),
            runner::engine::TINY_SEED + 1,
        ),
    )
    .expect("write another tiny model");
    let manifest = Manifest::for_image(&booted.image.kernel, &other_model, &booted.image.cmdline)
        .expect("manifest for another model");
    assert_ne!(manifest.model.sha256, booted.manifest.model.sha256);
    assert_eq!(manifest.kernel, booted.manifest.kernel);
    let check = refused_through_proxy(booted.endpoint(), &booted, &manifest);
    assert_eq!(
        check,
        VerifyError::ManifestMismatch {
            what: ManifestItem::Model
        }
    );
}

#[test]
fn manifest_for_another_kernel_is_refused_before_any_prompt() {
    let booted = shared_appliance();
    // Another kernel: the same ELF with one byte of its measured (read-only) text changed.
    let mut elf = std::fs::read(&booted.image.kernel).expect("read the kernel");
    let segments = manifest::measured_segments(&elf).expect("the kernel's measured segments");
    let range = segments
        .iter()
        .map(|segment| segment.range())
        .find(|range| !range.is_empty())
        .expect("a non-empty measured segment");
    elf[range.end - 1] ^= 0x01;
    let other_kernel = scratch().join("kernel-one-byte-changed.elf");
    std::fs::write(&other_kernel, &elf).expect("write the other kernel");
    let manifest = Manifest::for_image(&other_kernel, &booted.image.model, &booted.image.cmdline)
        .expect("manifest for another kernel");
    assert_ne!(
        manifest.kernel.measured_sha256,
        booted.manifest.kernel.measured_sha256
    );
    assert_eq!(manifest.model, booted.manifest.model);
    let check = refused_through_proxy(booted.endpoint(), &booted, &manifest);
    assert_eq!(
        check,
        VerifyError::ManifestMismatch {
            what: ManifestItem::Kernel
        }
    );
}

#[test]
fn quote_replayed_from_an_earlier_session_is_refused_before_any_prompt() {
    let booted = shared_appliance();
    let pcr_mask = booted.manifest.pcr_mask();
    // An earlier session with the real appliance: genuine evidence for that session and nonce.
    let recorded_nonce = [0x5e; 32];
    let (recorded, recorded_binding) = fresh_evidence(booted.endpoint(), recorded_nonce, pcr_mask);
    assert_genuine_for(&recorded, recorded_nonce, recorded_binding, &booted);

    // A server with its own TLS key answers Attest with the recorded evidence.
    let replay = recorded.clone();
    let server = Loopback::start(1, move |request, _binding| match request {
        Request::Attest { .. } => Reply::Respond(Response::Evidence(replay.clone())),
        _ => Reply::Respond(Response::Error(ErrorCode::BadRequest)),
    })
    .expect("replaying server");
    let replay_spki = server.spki_sha256();
    let check = refused_through_proxy(server.address(), &booted, &booted.manifest);
    assert_eq!(check, VerifyError::ExtraDataMismatch);
    let served = server.join().expect("replaying server finishes");
    assert!(served.failures.is_empty(), "{:?}", served.failures);
    // What the server decrypted: one Attest, no prompt.
    assert!(
        matches!(served.requests.as_slice(), [Request::Attest { nonce, .. }] if *nonce != recorded_nonce),
        "the replaying server received {:?}",
        served.requests
    );
    assert_ne!(replay_spki, recorded_binding.spki_sha256);
}

/// What the relay forwarded: the client's nonce, the relay's own session with the second appliance, and the
/// evidence that appliance returned.
type Relayed = ([u8; 32], ChannelBinding, Evidence);

#[test]
fn evidence_relayed_from_a_second_appliance_is_refused_before_any_prompt() {
    let booted = shared_appliance();
    // A second instance of the same image (its own swtpm, its own boot-time TLS key), EK certified by the same CA.
    let second = boot_tiny("second");
    assert_eq!(second.manifest, booted.manifest);

    // A man in the middle: terminates the client's TLS with its own key and forwards the client's Attest, nonce
    // and all, over its own TLS session to the second appliance; returns that appliance's fresh evidence.
    let relayed: Arc<Mutex<Option<Relayed>>> = Arc::default();
    let stash = Arc::clone(&relayed);
    let upstream = second.endpoint();
    let server = Loopback::start(1, move |request, _binding| match request {
        Request::Attest { nonce, pcr_mask } => {
            let (evidence, upstream_binding) = fresh_evidence(upstream, *nonce, *pcr_mask);
            *stash.lock().expect("stash") = Some((*nonce, upstream_binding, evidence.clone()));
            Reply::Respond(Response::Evidence(evidence))
        }
        _ => Reply::Respond(Response::Error(ErrorCode::BadRequest)),
    })
    .expect("relaying server");
    let relay_spki = server.spki_sha256();
    let check = refused_through_proxy(server.address(), &booted, &booted.manifest);
    assert_eq!(check, VerifyError::ExtraDataMismatch);
    let served = server.join().expect("relaying server finishes");
    assert!(served.failures.is_empty(), "{:?}", served.failures);
    assert!(
        matches!(served.requests.as_slice(), [Request::Attest { .. }]),
        "the relay received {:?}",
        served.requests
    );

    // The relayed evidence is a genuine, fresh quote for the client's own nonce: it passes every check for the
    // relay's session with the second appliance. Only the channel binding (another key, another exporter) fails.
    let (nonce, upstream_binding, evidence) = relayed
        .lock()
        .expect("stash")
        .take()
        .expect("the relay forwarded an Attest");
    assert_genuine_for(&evidence, nonce, upstream_binding, &second);
    let client_side = served.bindings[0];
    assert_eq!(client_side.spki_sha256, relay_spki);
    assert_ne!(client_side.spki_sha256, upstream_binding.spki_sha256);
    assert_ne!(client_side.exporter, upstream_binding.exporter);
    second
        .appliance
        .shutdown()
        .expect("the second appliance stops");
}
