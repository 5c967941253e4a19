//! cloister's OpenAI-compatible gateway (docs/ARCHITECTURE.md, "The OpenAI-compatible gateway"; issue 14): a local
//! HTTP server that speaks the OpenAI API to the clients people already use and forwards each request only on a TLS
//! session whose appliance passed every attestation check (the `client` crate's type-state). `cloister gateway` is its
//! command line.
//!
//! - [`openai`]: the request, response, chunk and error JSON.
//! - [`pool`]: the verified upstream sessions.
//! - [`server`]: the routes, Server-Sent Events, status codes and the attestation header.

#![forbid(unsafe_code)]

pub mod openai;
pub mod pool;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use client::manifest::Manifest;
use client::verify::{Observations, TrustAnchors, VerifyOptions};
use tokio::sync::oneshot;

pub use pool::{Pool, UpstreamConfig, Verification, ATTESTATION_HEADER};

/// Where `cloister gateway` listens unless told otherwise: loopback only, because the gateway holds every prompt and
/// answer in plaintext (README, "Using the OpenAI API").
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How long stopping waits for generation threads to send their `Cancel`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Options of `cloister gateway`.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The appliance's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// The image's manifest.json, as `cloister build` wrote it beside the image.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Where the OpenAI API listens. Anything but a loopback address exposes plaintext prompts and answers to the
    /// network: name one only behind a TLS-terminating proxy you trust.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// A PEM file of EK CA certificates to trust (roots and intermediates, one or more per file); repeatable, so
    /// swtpm's local CA, a TPM vendor's and a cloud's CA can be trusted side by side [default: cloister's own CA
    /// in its cache]
    #[arg(long = "ek-ca", value_name = "PEM", aliases = ["ca-root", "ca-intermediate"])]
    pub ek_ca: Vec<PathBuf>,
    /// Seconds each upstream step may take (connecting, attesting, waiting for the next token); past it a request
    /// gets 504.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Accept a manifest built with `--boot direct`, whose kernel nothing measured before it ran: the host operator
    /// is then trusted, and every report says so.
    #[arg(long)]
    pub trust_host: bool,
    /// Accept a debug-console image (its manifest says `"console": true`): such an image writes to a serial port
    /// the host reads, so it is for development only, and every report says so.
    #[arg(long)]
    pub allow_debug_image: bool,
    /// The file that remembers each accepted quote's TPM clock counters [default: observations.json in the
    /// runner's cache]
    #[arg(long, value_name = "PATH")]
    pub observations: Option<PathBuf>,
}

/// A gateway serving on a thread of its own; stopped when dropped.
pub struct Running {
    address: SocketAddr,
    pool: Arc<Pool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Running {
    /// Binds `listen` and serves `config`'s appliance on a new thread with its own tokio runtime. No session is
    /// verified yet: the first request (or [`Pool::verify_one`]) verifies one.
    pub fn start(listen: SocketAddr, config: UpstreamConfig) -> Result<Self> {
        let pool = Pool::new(config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&pool);
        let thread = std::thread::spawn(move || {
            let result = runtime.block_on(async move {
                tokio::select! {
                    result = server::serve(listener, serving, std::future::pending()) => result,
                    _ = stopped => Ok(()),
                }
            });
            // Dropping the connections closes the streams; their generation threads then send `Cancel`.
            runtime.shutdown_timeout(STOP_GRACE);
            result.context("the HTTP server failed")
        });
        Ok(Self {
            address,
            pool,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the API listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The upstream pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Stops serving and waits for the server thread.
    pub fn stop(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the gateway thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Runs `cloister gateway` until Ctrl-C or SIGTERM: verifies one session at once (and says so), then serves.
pub fn run(args: &GatewayArgs, trust: TrustAnchors, observations: Observations) -> Result<()> {
    let endpoint = client::resolve_endpoint(&args.endpoint)?;
    let manifest = Manifest::read(&args.manifest)?;
    let config = UpstreamConfig {
        endpoint,
        manifest,
        trust,
        options: VerifyOptions {
            timeout: Duration::from_secs(args.timeout),
            observations: Some(observations),
            trust_host: args.trust_host,
            allow_debug_image: args.allow_debug_image,
            ..VerifyOptions::default()
        },
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}: prompts and answers cross the network in plaintext between the gateway and \
             its clients (README, \"Using the OpenAI API\")",
            args.listen
        );
    }
    let running = Running::start(args.listen, config)?;
    eprintln!(
        "verifying {endpoint} against {}...",
        args.manifest.display()
    );
    match running.pool().verify_one() {
        Ok(verification) => eprintln!(
            "{}\nverified in {:.0} ms",
            verification.report.summary(),
            verification.duration.as_secs_f64() * 1000.0
        ),
        Err(error) => eprintln!(
            "warning: the appliance did not verify: {error}\n; every request is refused with 502 until a \
             verification passes"
        ),
    }
    eprintln!(
        "serving the OpenAI API at http://{}/v1 (up to {} concurrent generations) until Ctrl-C or SIGTERM",
        running.address(),
        running.pool().sessions()
    );
    wait_for_signal()?;
    eprintln!("stopping: open streams are cancelled");
    running.stop()
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot watch for Ctrl-C"),
            _ = terminate.recv() => Ok(()),
        }
    })
}
