//! Verifying an appliance over a TLS session: `Attest` with a fresh nonce, every offline check with this session's
//! channel binding, then `ActivateCredential` with a software MakeCredential, and the report (DESIGN §4, wire
//! types `net::proto`, session `crate::session`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use net::proto::{Request, Response};
use rand::RngCore as _;

use super::observations::Observations;
use super::report::{Report, Timing};
use super::{
    export_evidence, verify_evidence, ClockCounters, CredentialChallenge, Expectation, TrustAnchors,
};
use crate::manifest::Manifest;
use crate::session::{Channel, UnverifiedSession};

/// How long each step may take (a quote under TCG takes well under a second; the EK is created at boot).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Timeout for the connection and every read and write.
    pub timeout: Duration,
    /// Where to write the evidence for tpm2_checkquote (before it is checked, so failures can be examined).
    pub export_evidence: Option<PathBuf>,
    /// The TPM clock counters from an earlier verification of this appliance, if kept.
    pub previous_clock: Option<ClockCounters>,
    /// Where the counters of every accepted quote are remembered per AK, so the next verification of the same
    /// TPM refuses counters that went back (the CLI uses the runner's cache; `None` remembers nothing).
    pub observations: Option<Observations>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            export_evidence: None,
            previous_clock: None,
            observations: None,
        }
    }
}

/// Connects to `endpoint` over TLS and verifies the appliance against `manifest` and the EK CA in `trust`; the
/// session is closed afterwards (use [`UnverifiedSession::verify`] to keep it for prompts).
///
/// A failed check is returned as an error whose root cause is a [`super::VerifyError`]
/// (`error.downcast_ref::<VerifyError>()`); connection and protocol failures are other errors with a message
/// saying what to do.
pub fn verify_appliance(
    endpoint: SocketAddr,
    manifest: &Manifest,
    trust: &TrustAnchors,
    options: &VerifyOptions,
) -> Result<Report> {
    let session = UnverifiedSession::connect(endpoint, options.timeout)?;
    let (_, report) = session.verify(manifest, trust, options)?;
    Ok(report)
}

/// The attestation exchange on one TLS session; both requests go over it.
pub(crate) fn verify_channel(
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
        Response::Error(code) => bail!(
            "the appliance refused to attest: {}",
            crate::session::ApplianceError(code)
        ),
        other => bail!("the appliance answered Attest with {other:?}"),
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
    };
    let verified = verify_evidence(&evidence, &expectation)?;

    let challenge = CredentialChallenge::new(&verified, &mut rng)?;
    let started = Instant::now();
    let response = channel
        .exchange(&challenge.request(), "ActivateCredential")
        .context("no answer to ActivateCredential")?;
    let activation_round_trip = started.elapsed();
    challenge.check(&response)?;
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
