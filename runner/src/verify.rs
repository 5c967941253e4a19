//! `runner verify --endpoint HOST:PORT --manifest PATH [--json] [--export-evidence DIR]`: the command-line front
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

/// Options of `runner verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The appliance's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// The image's manifest.json, as `runner build` wrote it beside the image.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Print the report (or the failure) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the evidence into DIR in the forms tpm2_checkquote reads (also when verification fails).
    #[arg(long, value_name = "DIR")]
    pub export_evidence: Option<PathBuf>,
    /// The EK CA's root certificate (PEM) [default: the runner's own CA in its cache]
    #[arg(long, value_name = "PEM", requires = "ca_intermediate")]
    pub ca_root: Option<PathBuf>,
    /// An intermediate CA certificate (PEM) between the root and EK certificates; repeatable.
    #[arg(long, value_name = "PEM")]
    pub ca_intermediate: Vec<PathBuf>,
    /// Seconds each step may take.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The file that remembers each accepted quote's TPM clock counters, so a rolled-back TPM or an old quote is
    /// refused next time [default: observations.json in the runner's cache]
    #[arg(long, value_name = "PATH")]
    pub observations: Option<PathBuf>,
    /// Accept a manifest built with `--boot direct`, whose kernel nothing measured before it ran: the host operator
    /// is then trusted, and the report says so.
    #[arg(long)]
    pub trust_host: bool,
    /// Accept a manifest of a debug-console image (`runner build --debug-console`, `"console": true`): its kernel
    /// prints its boot and errors on the serial port, and the report says so.
    #[arg(long)]
    pub allow_debug_image: bool,
}

/// The observation store `--observations` names, or the one in the runner's cache.
pub fn observation_store(path: Option<&Path>) -> Observations {
    match path {
        Some(path) => Observations::at(path.to_path_buf()),
        None => Observations::in_cache(&workspace::cache_dir()),
    }
}

/// The EK CA to trust: `ca_root` with its intermediates, or else the runner's own CA in its cache (the one that
/// provisioned swtpm).
pub fn trust_anchors(ca_root: Option<&Path>, ca_intermediate: &[PathBuf]) -> Result<TrustAnchors> {
    match ca_root {
        Some(root) => {
            let intermediates: Vec<&Path> = ca_intermediate.iter().map(PathBuf::as_path).collect();
            TrustAnchors::from_pem_files(root, &intermediates)
        }
        None => {
            let ca = CertificateAuthority::in_cache(&workspace::cache_dir())
                .context("cannot open the runner's EK CA")?;
            ca.trust_anchors()
        }
    }
}

/// Runs `runner verify`: prints the report on success; on failure prints the JSON failure with `--json` and
/// returns the error (whose message names the check).
pub fn run(args: VerifyArgs) -> Result<()> {
    let endpoint = client::resolve_endpoint(&args.endpoint)?;
    let manifest = Manifest::read(&args.manifest)?;
    let trust = trust_anchors(args.ca_root.as_deref(), &args.ca_intermediate)?;
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
