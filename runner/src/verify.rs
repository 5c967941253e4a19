//! `cloister verify --endpoint HOST:PORT --manifest PATH [--json] [--export-evidence DIR]`: the command-line front
//! end of [`client::verify_appliance`], over TLS with the quote bound to the session. Exits non-zero on any
//! failure, naming the check (issue 3).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use client::manifest::Manifest;
use client::verify::{Observations, TrustAnchors, VerifyError, VerifyOptions};
use client::verify_appliance;

use crate::tpm_state::CertificateAuthority;
use crate::workspace;

/// Options of `cloister verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The appliance's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// The image's manifest.json, as `cloister build` wrote it beside the image.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Print the report (or the failure) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the evidence into DIR in the forms tpm2_checkquote reads (also when verification fails).
    #[arg(long, value_name = "DIR")]
    pub export_evidence: Option<PathBuf>,
    /// A PEM file of EK CA certificates to trust (roots and intermediates, one or more per file); repeatable, so
    /// swtpm's local CA, a TPM vendor's and a cloud's CA can be trusted side by side [default: cloister's own CA
    /// in its cache]
    #[arg(long = "ek-ca", value_name = "PEM", aliases = ["ca-root", "ca-intermediate"])]
    pub ek_ca: Vec<PathBuf>,
    /// Seconds each step may take.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The file that remembers each accepted quote's TPM clock counters, so a rolled-back TPM or an old quote is
    /// refused next time [default: observations.json in cloister's cache]
    #[arg(long, value_name = "PATH")]
    pub observations: Option<PathBuf>,
    /// Accept a manifest built with `--boot direct`, whose kernel nothing measured before it ran: the host operator
    /// is then trusted, and the report says so.
    #[arg(long)]
    pub trust_host: bool,
    /// Accept a manifest of a debug-console image (`cloister build --debug-console`, `"console": true`): its kernel
    /// prints its boot and errors on the serial port, and the report says so.
    #[arg(long)]
    pub allow_debug_image: bool,
}

/// The observation store `--observations` names, or the one in cloister's cache.
pub fn observation_store(path: Option<&Path>) -> Observations {
    match path {
        Some(path) => Observations::at(path.to_path_buf()),
        None => Observations::in_cache(&workspace::cache_dir()),
    }
}

/// The EK CAs to trust: the bundle the `--ek-ca` files make, or else cloister's own CA in its cache (the one
/// that provisioned swtpm).
pub fn trust_anchors(ek_ca: &[PathBuf]) -> Result<TrustAnchors> {
    if ek_ca.is_empty() {
        let ca = CertificateAuthority::in_cache(&workspace::cache_dir())
            .context("cannot open the runner's EK CA")?;
        return ca.trust_anchors();
    }
    let files: Vec<&Path> = ek_ca.iter().map(PathBuf::as_path).collect();
    TrustAnchors::from_pem_bundle(&files)
}

/// Runs `cloister verify`: prints the report on success; on failure prints the JSON failure with `--json` and
/// returns the error (whose message names the check).
pub fn run(args: VerifyArgs) -> Result<()> {
    let endpoint = client::resolve_endpoint(&args.endpoint)?;
    let manifest = Manifest::read(&args.manifest)?;
    let trust = trust_anchors(&args.ek_ca)?;
    let options = VerifyOptions {
        timeout: Duration::from_secs(args.timeout),
        export_evidence: args.export_evidence.clone(),
        previous_clock: None,
        observations: Some(observation_store(args.observations.as_deref())),
        trust_host: args.trust_host,
        allow_debug_image: args.allow_debug_image,
    };
    match verify_appliance(endpoint, &manifest, &trust, &options) {
        Ok(report) => {
            if args.json {
                print!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Err(error) => {
            if args.json {
                let check = error
                    .downcast_ref::<VerifyError>()
                    .map_or("connection", VerifyError::check);
                let failure = serde_json::json!({
                    "endpoint": endpoint.to_string(),
                    "verified": false,
                    "check": check,
                    "error": format!("{error:#}"),
                });
                println!("{failure:#}");
            }
            Err(error)
        }
    }
}
