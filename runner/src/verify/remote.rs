//! `verify_appliance`: one connection to the appliance, `Attest` with a fresh nonce, every offline check, then
//! `ActivateCredential` with a software MakeCredential, and the report (DESIGN §4, wire types `net::proto`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use net::proto::{Request, Response};
use rand::RngCore as _;

use super::report::{Report, Timing};
use super::{
    export_evidence, verify_evidence, ClockCounters, CredentialChallenge, Expectation, TrustAnchors,
};
use crate::client;
use crate::manifest::Manifest;

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
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            export_evidence: None,
            previous_clock: None,
        }
    }
}

/// Verifies the appliance at `endpoint` against `manifest` and the EK CA in `trust`.
///
/// Both requests go over one connection. A failed check is returned as an error whose root cause is a
/// [`super::VerifyError`] (`error.downcast_ref::<VerifyError>()`); connection and protocol failures are other
/// errors with a message saying what to do.
pub fn verify_appliance(
    endpoint: SocketAddr,
    manifest: &Manifest,
    trust: &TrustAnchors,
    options: &VerifyOptions,
) -> Result<Report> {
    let mut rng = rand::rngs::OsRng;
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    let mut stream = client::connect(endpoint, options.timeout)?;

    let started = Instant::now();
    client::send_request(
        &mut stream,
        &Request::Attest {
            nonce,
            pcr_mask: manifest.pcr_mask(),
        },
    )?;
    let response = client::read_response(&mut stream).context("no answer to Attest")?;
    let attest_round_trip = started.elapsed();
    let evidence = match response {
        Response::Evidence(evidence) => evidence,
        Response::Error(code) => {
            bail!("the appliance refused to attest ({code:?}); its TPM may have failed")
        }
        other => bail!("the appliance answered Attest with {other:?}"),
    };
    let mut framed = Vec::new();
    // Re-encoding what was just decoded cannot fail; the size is for the report.
    let _ = Response::Evidence(evidence.clone()).emit(&mut framed);

    if let Some(dir) = &options.export_evidence {
        let command = export_evidence(dir, &evidence, &nonce, manifest.pcr_mask())?;
        eprintln!(
            "evidence written to {}; check it with: (cd {} && {})",
            dir.display(),
            dir.display(),
            command.command_line()
        );
    }

    let expectation = Expectation {
        nonce,
        manifest,
        trust,
        now: SystemTime::now(),
        previous_clock: options.previous_clock,
    };
    let verified = verify_evidence(&evidence, &expectation)?;

    let challenge = CredentialChallenge::new(&verified, &mut rng)?;
    let started = Instant::now();
    client::send_request(&mut stream, &challenge.request())?;
    let response = client::read_response(&mut stream).context("no answer to ActivateCredential")?;
    let activation_round_trip = started.elapsed();
    challenge.check(&response)?;

    Ok(Report::new(
        &endpoint.to_string(),
        &nonce,
        &verified,
        manifest,
        Timing {
            attest_round_trip_ms: attest_round_trip.as_secs_f64() * 1000.0,
            activation_round_trip_ms: activation_round_trip.as_secs_f64() * 1000.0,
        },
        framed.len(),
    ))
}
