//! Verifying an appliance over a TLS session: `Attest` with a fresh nonce, every offline check with this session's
//! channel binding, then `ActivateCredential` with a software MakeCredential, and the report (docs/ARCHITECTURE.md §4, wire
//! types `net::proto`, the connection [`super::channel`]).

use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use net::proto::{Request, Response};
use rand::RngCore as _;

use super::channel::{ApplianceError, Channel};
use crate::manifest::Manifest;
use crate::verify::report::Timing;
use crate::verify::{
    export_evidence, verify_evidence, CredentialChallenge, Expectation, Report, TrustAnchors,
    VerifyOptions,
};

/// The attestation exchange on one TLS session; both requests go over it.
pub(super) fn verify_channel(
    channel: &mut Channel,
    manifest: &Manifest,
    trust: &TrustAnchors,
    options: &VerifyOptions,
) -> Result<Report> {
    let mut rng = rand::rngs::OsRng;
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    let binding = channel.binding();

    let started = Instant::now();
    let response = channel.exchange(
        &Request::Attest {
            nonce,
            pcr_mask: manifest.pcr_mask(),
        },
        "Attest",
    )?;
    let attest_round_trip = started.elapsed();
    let evidence = match response {
        Response::Evidence(evidence) => evidence,
        Response::Error(code) => bail!("the appliance refused to attest: {}", ApplianceError(code)),
        other => bail!("the appliance answered Attest with {}", other.name()),
    };
    let mut framed = Vec::new();
    // Re-encoding what was just decoded cannot fail; the size is for the report.
    let _ = Response::Evidence(evidence.clone()).emit(&mut framed);

    if let Some(dir) = &options.export_evidence {
        let command = export_evidence(dir, &evidence, &nonce, &binding, manifest.pcr_mask())?;
        eprintln!(
            "evidence written to {}; check it with: (cd {} && {})",
            dir.display(),
            dir.display(),
            command.command_line()
        );
    }

    // The AK public area is untrusted until checked; it only selects which earlier observation applies.
    let remembered = match &options.observations {
        Some(store) => store.previous(&evidence.ak_public)?,
        None => None,
    };
    let expectation = Expectation {
        nonce,
        binding,
        manifest,
        trust,
        now: SystemTime::now(),
        previous_clock: options.previous_clock.or(remembered),
        trust_host: options.trust_host,
        allow_debug_image: options.allow_debug_image,
    };
    let checked = verify_evidence(&evidence, &expectation)?;

    let challenge = CredentialChallenge::new(&checked, &mut rng)?;
    let started = Instant::now();
    let response = channel
        .exchange(&challenge.request(), "ActivateCredential")
        .context("no answer to ActivateCredential")?;
    let activation_round_trip = started.elapsed();
    let verified = challenge.check(&response)?;
    if let Some(store) = &options.observations {
        store.record(&evidence.ak_public, verified.clock)?;
    }

    Ok(Report::new(
        &channel.endpoint().to_string(),
        &nonce,
        &binding,
        &verified,
        manifest,
        Timing {
            tls_handshake_ms: channel.handshake_duration().as_secs_f64() * 1000.0,
            attest_round_trip_ms: attest_round_trip.as_secs_f64() * 1000.0,
            activation_round_trip_ms: activation_round_trip.as_secs_f64() * 1000.0,
        },
        framed.len(),
    ))
}
