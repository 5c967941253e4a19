//! Shared helpers for the end-to-end tests: build each kernel flavour once, write model files, boot an
//! appliance (one per test binary through [`run_suite`]), and speak to it as clients good and bad do: a
//! verified session (`client::session`), a raw TLS 1.3 client that can send any bytes after the handshake
//! ([`TlsClient`], RFC 8446), and plain TCP for bytes before TLS.
//!
//! [`TlsClient`] accepts any server certificate (it still checks the handshake signature under the
//! certificate's key). It exists only here, in test support: the client library has no way to skip a check.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use client::manifest::Manifest;
use client::session::{UnverifiedSession, VerifiedSession};
use client::verify::{TrustAnchors, VerifyOptions};
use net::proto::{ErrorCode, GenerateRequest, Prompt, Request, Response, Sampling, Token};
use net::serving::ApplianceConfig;
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, Image, KernelFlavor, Sabotage};
use runner::qemu::AccelChoice;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The release kernel (no console).
pub const RELEASE: KernelFlavor = KernelFlavor {
    debug_console: false,
    sabotage: Sabotage::None,
};
/// The kernel with a COM1 debug console.
pub const DEBUG: KernelFlavor = KernelFlavor {
    debug_console: true,
    sabotage: Sabotage::None,
};
/// The release kernel built to panic early in its boot (the `panic-test` feature).
pub const PANIC_TEST: KernelFlavor = KernelFlavor {
    debug_console: false,
    sabotage: Sabotage::Panic,
};
/// [`PANIC_TEST`] with the debug console, which prints the panic before the reset.
pub const DEBUG_PANIC_TEST: KernelFlavor = KernelFlavor {
    debug_console: true,
    sabotage: Sabotage::Panic,
};

/// How long a test waits for one answer from a healthy appliance under TCG before calling it a hang.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Builds (once per test binary) the kernel of the given flavour and returns its ELF path.
pub fn kernel(flavor: KernelFlavor) -> PathBuf {
    // Each flavour has its own target directory, but builds are serialised anyway (the lock is held while one
    // runs), so two tests never run two nested cargo invocations at once.
    static BUILT: Mutex<Vec<(KernelFlavor, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, elf)) = built.iter().find(|(built, _)| *built == flavor) {
        return elf.clone();
    }
    let elf = image::build_kernel(flavor).expect("kernel build failed");
    built.push((flavor, elf.clone()));
    elf
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be reproduced.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes the generated tiny llama model (`cloister generate --model tiny-llama` uses the same spec and seed)
/// into `dir` and returns its path.
pub fn tiny_llama(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-llama.gguf");
    let bytes = model::tiny::generate(&model::tiny::TinySpec::llama(), runner::engine::TINY_SEED);
    std::fs::write(&path, bytes).expect("write the tiny model");
    path
}

/// The vocabulary size of a GGUF model file.
pub fn vocab_size(model_path: &Path) -> u32 {
    let blob = std::fs::read(model_path).expect("read model");
    let gguf = model::gguf::Gguf::parse(&blob).expect("model is GGUF");
    let model = model::transformer::Model::load(&gguf).expect("model loads");
    u32::try_from(model.config.vocab_size).expect("vocabulary fits u32")
}

/// Assembles an image in `dir` and boots it under TCG (KVM is not usable on these machines).
pub fn boot(dir: &Path, flavor: KernelFlavor, model: &Path, cmdline: &str) -> (Image, Appliance) {
    boot_with(dir, flavor, model, cmdline, false)
}

/// [`boot`], optionally copying the guest's serial output to stderr as it arrives.
pub fn boot_with(
    dir: &Path,
    flavor: KernelFlavor,
    model: &Path,
    cmdline: &str,
    echo_serial: bool,
) -> (Image, Appliance) {
    boot_sized(dir, flavor, model, cmdline, echo_serial, 256)
}

/// [`boot_with`] with `mem_mib` MiB of guest memory.
pub fn boot_sized(
    dir: &Path,
    flavor: KernelFlavor,
    model: &Path,
    cmdline: &str,
    echo_serial: bool,
    mem_mib: u32,
) -> (Image, Appliance) {
    let kernel = kernel(flavor);
    let image = image::assemble(&kernel, model, cmdline, &dir.join("image"), flavor)
        .expect("assemble image");
    let mut options = BootOptions::new(image.clone());
    options.accel = AccelChoice::Tcg;
    options.mem_mib = mem_mib;
    options.echo_serial = echo_serial;
    options.ready_timeout = Some(Duration::from_secs(240));
    let appliance = Appliance::boot(&options).expect("appliance boots and answers");
    (image, appliance)
}

/// Fails with the Debian package to install when `program` is not on PATH (tests never skip).
pub fn require_tool(program: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is required by this test: install the Debian package `{debian_package}`"
    );
}

/// Measures how long `f` takes.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

// ---------------------------------------------------------------------------------------------------------
// One shared appliance per test binary.
// ---------------------------------------------------------------------------------------------------------

/// A booted appliance with what a verifying client needs, shared by every test of one binary.
pub struct Fixture {
    pub appliance: Appliance,
    pub image: Image,
    pub manifest: Manifest,
    pub trust: TrustAnchors,
    /// What the command line configures (sessions, context, connection limits, timeouts).
    pub config: ApplianceConfig,
    /// Tokens in the model's vocabulary.
    pub vocab_size: u32,
    /// Time from starting QEMU to the first answered TLS request.
    pub boot_time: Duration,
    baseline: OnceLock<Vec<Token>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// Boots the release image with the tiny llama model and `cmdline`.
    pub fn boot(cmdline: &str) -> Fixture {
        Self::boot_model(cmdline, None)
    }

    /// Boots the release image with `model` (a name `runner::models::resolve` knows, from the cache;
    /// `None`: the tiny llama model) and `cmdline`. A real model gets 1024 MiB of guest memory.
    pub fn boot_model(cmdline: &str, model: Option<&str>) -> Fixture {
        let config = ApplianceConfig::from_cmdline(cmdline).expect("test command line is valid");
        let dir = tempfile::tempdir().expect("temp dir");
        let (model, mem_mib) = match model {
            Some(name) => (
                runner::models::resolve(name).expect("the model is cached or can be fetched"),
                1024,
            ),
            None => (tiny_llama(dir.path()), 256),
        };
        let vocab_size = vocab_size(&model);
        // To see what the kernel does while a suite runs, set CLOISTER_E2E_DEBUG_CONSOLE=1: the suite then
        // boots the debug-console kernel and copies its serial output to stderr.
        let debug =
            std::env::var_os("CLOISTER_E2E_DEBUG_CONSOLE").is_some_and(|value| value == "1");
        let (image, appliance) = if debug {
            boot_sized(dir.path(), DEBUG, &model, cmdline, true, mem_mib)
        } else {
            boot_sized(dir.path(), RELEASE, &model, cmdline, false, mem_mib)
        };
        let manifest =
            Manifest::for_image(&image.kernel, &image.model, &image.cmdline).expect("manifest");
        let trust = appliance
            .certificate_authority()
            .trust_anchors()
            .expect("trust anchors");
        let boot_time = appliance.boot_duration();
        eprintln!("[fixture] booted `{cmdline}` in {boot_time:.2?}");
        Fixture {
            appliance,
            image,
            manifest,
            trust,
            config,
            vocab_size,
            boot_time,
            baseline: OnceLock::new(),
            _dir: dir,
        }
    }

    /// The appliance's forwarded address.
    pub fn endpoint(&self) -> SocketAddr {
        self.appliance.endpoint()
    }

    /// Generation sessions the appliance reserved.
    pub fn sessions(&self) -> usize {
        self.config.serving.sessions as usize
    }

    /// Connection slots of the pool.
    pub fn connections(&self) -> usize {
        self.config.limits.connections
    }

    /// KV cache positions of each session.
    pub fn context(&self) -> u32 {
        self.config.serving.context
    }

    /// The time a client has to complete a request frame (the serving configuration's `frame_timeout`).
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_micros(self.config.limits.frame_timeout.total_micros())
    }

    /// The time a closing connection has before it is aborted.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_micros(self.config.limits.close_timeout.total_micros())
    }

    /// A session that passed every attestation check against this appliance's manifest.
    pub fn verified_session(&self) -> VerifiedSession {
        let session = UnverifiedSession::connect(self.endpoint(), PATIENCE).expect("TLS handshake");
        let (verified, _report) = session
            .verify(
                &self.manifest,
                &self.trust,
                &VerifyOptions {
                    trust_host: true,
                    ..VerifyOptions::default()
                },
            )
            .unwrap_or_else(|error| panic!("the appliance failed verification: {error:#}"));
        verified
    }

    /// The tokens of [`reference_request`] on an otherwise idle appliance (computed on first use).
    pub fn baseline(&self) -> &[Token] {
        self.baseline.get_or_init(|| {
            let mut client = TlsClient::connect(self.endpoint());
            let (tokens, done) = client.generate_to_end(&reference_request(), PATIENCE);
            assert_eq!(done.generated_tokens as usize, tokens.len());
            eprintln!(
                "[fixture] baseline: {} tokens ({:?}), prefill {} us, decode {} us in the guest",
                tokens.len(),
                done.reason,
                done.prefill_us,
                done.decode_us
            );
            tokens
        })
    }

    /// A correct, verified client is served: attestation passes and a greedy generation gives the baseline
    /// tokens. Returns the time it took.
    pub fn assert_serves_correct_client(&self) -> Duration {
        let baseline = self.baseline().to_vec();
        let (tokens, took) = timed(|| {
            let mut session = self.verified_session();
            let completion = session
                .complete(reference_request(), None, |_| {})
                .expect("a correct client's generation");
            completion.tokens
        });
        assert_eq!(
            tokens, baseline,
            "a correct client's generation differs from the baseline"
        );
        took
    }
}

/// The generation every "is the appliance still right" check runs: a short token prompt, greedy.
pub fn reference_request() -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(vec![72, 101, 108, 108, 111]),
        max_tokens: 24,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    }
}

/// A generation of `max_tokens` from a few prompt tokens, sampled with a fixed seed so it does not settle
/// into an end-of-text token early.
pub fn long_request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(vec![84, 104, 101]),
        max_tokens,
        sampling: Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        },
        stop: Vec::new(),
    }
}

/// One test of a suite: its name and body.
pub type SuiteTest = (&'static str, fn(&Fixture));

/// Runs `tests` as a libtest-style suite (names, filters, `--list`, pass/fail per test) against ONE
/// appliance booted with `cmdline` on first use and shut down after the last test. The tests run one at a
/// time: several of them fill every session or connection slot on purpose.
pub fn run_suite(cmdline: &'static str, tests: &[SuiteTest]) -> std::process::ExitCode {
    run_suite_with_model(cmdline, None, tests)
}

/// [`run_suite`] on an appliance booted with `model` ([`Fixture::boot_model`]).
pub fn run_suite_with_model(
    cmdline: &'static str,
    model: Option<&'static str>,
    tests: &[SuiteTest],
) -> std::process::ExitCode {
    let mut arguments = libtest_mimic::Arguments::from_args();
    arguments.test_threads = Some(1);
    type Shared = Mutex<Option<Result<Arc<Fixture>, String>>>;
    let shared: Arc<Shared> = Arc::new(Mutex::new(None));
    let trials = tests
        .iter()
        .map(|&(name, body)| {
            let shared = Arc::clone(&shared);
            libtest_mimic::Trial::test(name, move || {
                let fixture = {
                    let mut slot = shared.lock().unwrap_or_else(|poison| poison.into_inner());
                    let booted = slot.get_or_insert_with(|| {
                        std::panic::catch_unwind(|| Arc::new(Fixture::boot_model(cmdline, model)))
                            .map_err(|panic| {
                                panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_else(|| "boot panicked".into())
                            })
                    });
                    booted.clone().map_err(|error| {
                        libtest_mimic::Failed::from(format!("the appliance did not boot: {error}"))
                    })?
                };
                let started = Instant::now();
                body(&fixture);
                eprintln!("[{name}] passed in {:.2?}", started.elapsed());
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&arguments, trials);
    let fixture = shared
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .take();
    if let Some(Ok(fixture)) = fixture {
        match Arc::try_unwrap(fixture) {
            Ok(fixture) => fixture
                .appliance
                .shutdown()
                .expect("the appliance shuts down"),
            Err(_) => panic!("a test still holds the appliance"),
        }
    }
    conclusion.exit_code()
}

// ---------------------------------------------------------------------------------------------------------
// Plain TCP (before TLS).
// ---------------------------------------------------------------------------------------------------------

/// Connects with a short timeout on every operation.
pub fn connect(endpoint: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    stream
}

/// Reads until the peer closes `stream` (EOF or reset) or `limit` passes. Returns the bytes read and when
/// the connection closed (`None`: still open at `limit`).
pub fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return (received, None);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buffer) {
            Ok(0) => return (received, Some(started.elapsed())),
            Ok(count) => received.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (received, None)
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // Reset (or another error): the connection is gone.
            Err(_) => return (received, Some(started.elapsed())),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// A raw TLS 1.3 client (test support only).
// ---------------------------------------------------------------------------------------------------------

/// The runner's own pre-attestation TLS configuration (any certificate holding a key, its TLS 1.3 handshake
/// signature checked), so the handshake is a real one. Trust is not the point of these tests; the verified path is
/// [`Fixture::verified_session`].
fn raw_client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| client::session::handshake_config().expect("TLS 1.3 client configuration"))
        .clone()
}

/// How a connection ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The server sent close_notify (RFC 8446 §6.1).
    CloseNotify,
    /// TCP EOF without close_notify.
    Eof,
    /// TCP reset.
    Reset,
    /// The TLS layer failed (for example a fatal alert from the server).
    Tls(String),
}

/// What the next read brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response frame.
    Frame(Response),
    /// The connection ended (no partial frame pending).
    Closed(Closed),
    /// Nothing complete arrived within the limit.
    Silent,
}

/// A TLS 1.3 client that can send any bytes inside the session, and reads responses frame by frame.
pub struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    inbound: Vec<u8>,
    /// Time from the TCP connect to the end of the handshake.
    pub handshake: Duration,
    /// When the TCP connection was made.
    pub connected_at: Instant,
}

impl TlsClient {
    /// Connects and completes the TLS 1.3 handshake; panics if it fails.
    pub fn connect(endpoint: SocketAddr) -> TlsClient {
        Self::try_connect(endpoint).unwrap_or_else(|error| panic!("TLS handshake: {error}"))
    }

    /// Connects and completes the TLS 1.3 handshake.
    pub fn try_connect(endpoint: SocketAddr) -> Result<TlsClient, String> {
        let connected_at = Instant::now();
        let socket = TcpStream::connect_timeout(&endpoint, Duration::from_secs(10))
            .map_err(|error| format!("connect: {error}"))?;
        socket
            .set_read_timeout(Some(PATIENCE))
            .and_then(|()| socket.set_write_timeout(Some(PATIENCE)))
            .and_then(|()| socket.set_nodelay(true))
            .map_err(|error| error.to_string())?;
        let name = ServerName::try_from("cloister.invalid").expect("server name");
        let connection = ClientConnection::new(raw_client_config(), name)
            .map_err(|error| format!("client session: {error}"))?;
        let mut stream = StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|error| format!("handshake: {error}"))?;
        }
        Ok(TlsClient {
            stream,
            inbound: Vec::new(),
            handshake: connected_at.elapsed(),
            connected_at,
        })
    }

    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.stream.conn.negotiated_cipher_suite()
    }

    /// Sends `bytes` as application data (one TLS record per call for small inputs).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends one request frame.
    pub fn send(&mut self, request: &Request) {
        self.send_raw(&frame_of(request)).expect("send a request");
    }

    /// Ends our side: close_notify, then TCP FIN (what a client that has nothing more to say does).
    pub fn close_write(&mut self) {
        self.stream.conn.send_close_notify();
        // The peer may already be gone; what matters is what it answers.
        let _ = self.stream.flush();
        let _ = self.stream.sock.shutdown(Shutdown::Write);
    }

    /// Drops the connection without close_notify. Unread bytes in the socket (a stream still flowing) make
    /// the host kernel answer with a TCP reset; otherwise it sends FIN.
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    /// The next whole response frame, or how the connection ended, waiting at most `limit`.
    pub fn next(&mut self, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(response) = self.take_frame() {
                return Outcome::Frame(response);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::Silent;
            }
            self.stream
                .sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            let mut buffer = [0u8; 16 * 1024];
            match self.stream.read(&mut buffer) {
                Ok(0) => return self.closed(Closed::CloseNotify),
                Ok(count) => self.inbound.extend_from_slice(&buffer[..count]),
                Err(error) => match error.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => return Outcome::Silent,
                    ErrorKind::Interrupted => {}
                    ErrorKind::UnexpectedEof => return self.closed(Closed::Eof),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                        return self.closed(Closed::Reset)
                    }
                    _ => return self.closed(Closed::Tls(error.to_string())),
                },
            }
        }
    }

    fn closed(&self, how: Closed) -> Outcome {
        assert!(
            self.inbound.is_empty(),
            "the connection ended ({how:?}) in the middle of a frame: {:02x?}",
            self.inbound
        );
        Outcome::Closed(how)
    }

    fn take_frame(&mut self) -> Option<Response> {
        let header: [u8; 4] = *self.inbound.first_chunk()?;
        let len = u32::from_be_bytes(header) as usize;
        assert!(
            (1..=net::frame::MAX_FRAME_LEN).contains(&len),
            "the appliance sent a frame header announcing {len} bytes"
        );
        let body = self.inbound.get(4..4 + len)?;
        let response = Response::parse(body)
            .unwrap_or_else(|error| panic!("the appliance sent a bad response: {error:?}"));
        self.inbound.drain(..4 + len);
        Some(response)
    }

    /// The next frame, which must come within `limit`.
    pub fn expect_frame(&mut self, limit: Duration) -> Response {
        match self.next(limit) {
            Outcome::Frame(response) => response,
            other => panic!("expected a frame within {limit:?}, got {other:?}"),
        }
    }

    /// Expects that the connection ends, with no frame, within `limit`; returns how and when (from now).
    pub fn expect_closed(&mut self, limit: Duration) -> (Closed, Duration) {
        let started = Instant::now();
        match self.next(limit) {
            Outcome::Closed(how) => (how, started.elapsed()),
            other => panic!("expected the connection to close within {limit:?}, got {other:?}"),
        }
    }

    /// Expects one error frame with `code`, then the end of the connection, each within `limit`. Returns the
    /// time from now to the error frame.
    pub fn expect_error_then_close(&mut self, code: ErrorCode, limit: Duration) -> Duration {
        let started = Instant::now();
        let answer = self.expect_frame(limit);
        let to_error = started.elapsed();
        assert_eq!(answer, Response::Error(code), "expected Error({code:?})");
        self.expect_closed(limit);
        to_error
    }

    /// Sends a generate request and reads its stream to the end: the tokens and the final frame. Panics on
    /// an error frame, a closed connection or a pause longer than `patience`.
    pub fn generate_to_end(
        &mut self,
        request: &GenerateRequest,
        patience: Duration,
    ) -> (Vec<Token>, net::proto::Done) {
        self.send(&Request::Generate(request.clone()));
        self.read_stream(patience)
    }

    /// Reads a running stream to its `Done` frame.
    pub fn read_stream(&mut self, patience: Duration) -> (Vec<Token>, net::proto::Done) {
        let mut tokens = Vec::new();
        loop {
            match self.expect_frame(patience) {
                Response::Token(token) => tokens.push(token),
                Response::Done(done) => return (tokens, done),
                other => panic!(
                    "generation ended with {other:?} after {} tokens",
                    tokens.len()
                ),
            }
        }
    }

    /// Sends a generate request and returns its first frame (a token, or the error that refused it).
    pub fn start_generation(&mut self, request: &GenerateRequest) -> Response {
        self.send(&Request::Generate(request.clone()));
        self.expect_frame(PATIENCE)
    }
}

/// One request as a frame.
pub fn frame_of(request: &Request) -> Vec<u8> {
    let mut frame = Vec::new();
    request.emit(&mut frame).expect("encode");
    frame
}
