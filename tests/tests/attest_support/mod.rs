//! Helpers of the attested end-to-end tests (`generation.rs`, `attestation.rs`): the tiny generated model, one
//! booted release appliance per test binary (cleaned up when the test process exits), the host reference for
//! greedy generation (the code path of `cloister generate --json`), and a TCP proxy that records the TLS records a
//! client sends (RFC 8446 §5.1 record layer) so a test can show what left the client and when.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use client::manifest::Manifest;
use client::verify::{TrustAnchors, VerifyOptions};
use model::session::FinishReason;
use net::proto::{ChatMessage, GenerateRequest, Prompt, Request, Sampling};
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, Image, KernelFlavor};
use runner::qemu::AccelChoice;

pub mod streams;

/// The kernel command line of every appliance these tests boot (four generation sessions, the default).
pub const CMDLINE: &str = image::DEFAULT_CMDLINE;

/// How long a client waits for any one answer (TCG is slow, and tests may share the CPU with others).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The root of this test process's scratch files (images, the EK CA, the model). Removed by the watchdog when the
/// process exits (statics are never dropped).
pub fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cloister-e2e-attest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        spawn_watchdog(&[], &dir, std::slice::from_ref(&dir));
        dir
    })
}

/// The tiny llama-architecture model the runner generates for `--model tiny-llama` (`model::tiny`, seed
/// `runner::engine::TINY_SEED`), written once per process.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = scratch().join("tiny-llama.gguf");
        let bytes =
            model::tiny::generate(&model::tiny::TinySpec::llama(), runner::engine::TINY_SEED);
        std::fs::write(&path, bytes).expect("write the tiny model");
        path
    })
}

/// The release kernel, built once per process.
pub fn release_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        runner::tools::require(&runner::tools::BOOT_TOOLS).expect("QEMU and swtpm are needed");
        image::build_kernel(KernelFlavor::default()).expect("the release kernel builds")
    })
}

/// A booted appliance with what a client needs to verify it.
pub struct Booted {
    pub appliance: Appliance,
    pub image: Image,
    /// The manifest of `image` (`Manifest::for_image`, as `cloister build` writes it).
    pub manifest: Manifest,
    /// The CA that issued the appliance's EK certificate.
    pub trust: TrustAnchors,
}

impl Booted {
    pub fn endpoint(&self) -> SocketAddr {
        self.appliance.endpoint()
    }
}

/// Boots the release kernel with the tiny model under TCG, with its swtpm provisioned by the CA in
/// `<scratch>/ca` (every appliance of this process shares that CA, like appliances provisioned by one runner).
/// `name` names its image directory. The appliance's processes are killed when the test process exits.
pub fn boot_tiny(name: &str) -> Booted {
    boot_tiny_on(name, 1)
}

/// [`boot_tiny`] with an image that asks for `cpus` processors (`cpus=N`, measured) and QEMU giving it as many
/// vCPUs (multi-threaded TCG when more than one).
pub fn boot_tiny_on(name: &str, cpus: u32) -> Booted {
    let kernel = release_kernel();
    let cmdline = if cpus > 1 {
        image::with_cpus(CMDLINE, cpus)
    } else {
        CMDLINE.to_string()
    };
    let image = image::assemble(
        kernel,
        tiny_model(),
        &cmdline,
        &scratch().join(name),
        KernelFlavor::default(),
    )
    .expect("assemble the image");
    let manifest = Manifest::for_image(&image.kernel, &image.model, &image.cmdline)
        .expect("the image's manifest");
    let mut options = BootOptions::new(image.clone());
    options.accel = AccelChoice::Tcg;
    options.mem_mib = 512;
    options.echo_serial = false;
    options.cache_dir = scratch().to_path_buf();
    options.ready_timeout = Some(Duration::from_secs(300));
    let started = Instant::now();
    let appliance = Appliance::boot(&options).expect("the appliance boots and answers over TLS");
    eprintln!(
        "[{name}] booted on {cpus} vCPU(s) at {} in {:.1} s (QEMU start to first TLS answer {:.1} s)",
        appliance.endpoint(),
        started.elapsed().as_secs_f64(),
        appliance.boot_duration().as_secs_f64()
    );
    spawn_watchdog(
        &appliance.process_ids(),
        appliance.state_dir(),
        &[appliance.state_dir().to_path_buf()],
    );
    let trust = appliance
        .certificate_authority()
        .trust_anchors()
        .expect("the CA's certificates load");
    Booted {
        appliance,
        image,
        manifest,
        trust,
    }
}

/// One appliance per test binary, booted by the first test that asks; tests take turns on it (a test that counts
/// slots must not see another test's sessions).
pub fn shared_appliance() -> MutexGuard<'static, Booted> {
    static SHARED: OnceLock<Mutex<Booted>> = OnceLock::new();
    SHARED
        .get_or_init(|| Mutex::new(boot_tiny("shared")))
        .lock()
        // A test that failed while holding the appliance leaves it usable for the others.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a process (in its own process group, so a Ctrl-C aimed at the tests does not stop it) that waits for
/// this test process to exit, then stops `pids` (the appliance's QEMU and swtpm, which live in statics and are
/// never dropped) and removes `dirs`. A pid is signalled only while its command line still mentions `marker` (the
/// run's state directory, on both QEMU's and swtpm's command lines), so a pid reused by another process is left
/// alone.
#[allow(
    clippy::zombie_processes,
    reason = "the watchdog must outlive this process, so it is never waited for; init reaps it"
)]
fn spawn_watchdog(pids: &[u32], marker: &Path, dirs: &[PathBuf]) {
    use std::os::unix::process::CommandExt as _;
    let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let pid_list = pid_list.join(" ");
    let script = format!(
        "marker=\"$1\"; shift; \
         while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; \
         for signal in TERM KILL; do \
           for p in {pid_list}; do \
             if tr '\\0' '\\n' 2>/dev/null < /proc/$p/cmdline | grep -qF -- \"$marker\"; then \
               kill -s $signal $p 2>/dev/null; \
             fi; \
           done; \
           sleep 1; \
         done; \
         rm -rf \"$@\"",
        parent = std::process::id(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(marker)
        .args(dirs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the cleanup watchdog");
}

/// Verification options for the tests' clients.
pub fn verify_options() -> VerifyOptions {
    VerifyOptions {
        timeout: CLIENT_TIMEOUT,
        // The tests' appliances boot directly: nothing measured their kernel, so the host is trusted.
        trust_host: true,
        ..VerifyOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The host reference: what `cloister generate --model FILE --temperature 0 --json [--chat] PROMPT` computes.

/// A prompt as both the CLI and the protocol take it.
#[derive(Clone, Debug)]
pub enum TestPrompt {
    /// `cloister generate PROMPT`, `Prompt::Text`.
    Raw(String),
    /// `cloister generate --chat PROMPT`, `Prompt::Chat` with one user turn.
    Chat(String),
}

impl TestPrompt {
    /// The protocol request for greedy generation of at most `max_tokens`.
    pub fn request(&self, max_tokens: u32) -> GenerateRequest {
        let prompt = match self {
            TestPrompt::Raw(text) => Prompt::Text(text.clone()),
            TestPrompt::Chat(text) => Prompt::Chat(vec![ChatMessage {
                role: net::proto::Role::User,
                content: text.clone(),
            }]),
        };
        GenerateRequest {
            prompt,
            max_tokens,
            sampling: Sampling::GREEDY,
            stop: Vec::new(),
        }
    }
}

/// The fields of `cloister generate --json` that the tests compare, plus the host's decode rate.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOutput {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    /// Generated tokens after the first per second of decoding (as `cloister generate` reports `decode_tok_s`).
    pub decode_tok_s: f64,
}

/// Greedy generation on the host through `cloister generate`'s own code (`runner::engine::run_generation`, what the
/// CLI runs for `--json`): the engine's prompt encoding (a single user turn for `--chat`), prefill chunks of the
/// appliance's size, temperature 0 and seed 0, the CLI's default thread count. `--portable-kernels` is on: under
/// TCG the runner gives QEMU a CPU without AVX (TCG's AVX2 is several times slower than its SSE), so the appliance
/// runs the engine's portable kernels, and the comparison uses the same ones.
pub fn host_generate(model_path: &Path, prompt: &TestPrompt, max_tokens: usize) -> HostOutput {
    let (text, chat) = match prompt {
        TestPrompt::Raw(text) => (text.clone(), false),
        TestPrompt::Chat(text) => (text.clone(), true),
    };
    let args = runner::engine::GenerateArgs {
        model: model_path.display().to_string(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_tokens,
        temperature: 0.0,
        seed: 0,
        chat,
        json: true,
        portable_kernels: true,
        prompt: text,
    };
    let out = runner::engine::run_generation(&args, &mut |_| Ok(())).expect("cloister generate");
    HostOutput {
        prompt_ids: out.prompt_ids,
        generated_ids: out.generated_ids,
        text: out.text,
        finish: out.finish,
        decode_tok_s: out.decode_tok_s,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A byte-counting TCP proxy that parses the client's TLS records.

/// TLS record content types (RFC 8446 §5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Bytes an encrypted TLS 1.3 record adds to its plaintext: the inner content type and the 16-byte AEAD tag of
/// both suites the appliance offers (AES-128-GCM, ChaCha20-Poly1305; RFC 8446 §5.2, no padding).
pub const RECORD_OVERHEAD: usize = 1 + 16;

/// An encrypted alert (close_notify and friends): two bytes of alert plus the overhead (RFC 8446 §6).
pub const ENCRYPTED_ALERT_LEN: usize = 2 + RECORD_OVERHEAD;

/// One record the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// TLSPlaintext.type (the outer type: every encrypted record says application_data).
    pub content_type: u8,
    /// TLSPlaintext.length.
    pub length: usize,
    /// When its last byte passed the proxy.
    pub at: Instant,
}

/// What passed through the proxy on its one connection.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// Every record the client sent, in order.
    pub client_records: Vec<Record>,
    /// Bytes from the client (all of them, records or not).
    pub client_bytes: usize,
    /// Bytes that followed the last whole record (a record cut short; must be 0).
    pub client_trailing_bytes: usize,
    /// Bytes from the server.
    pub server_bytes: usize,
    /// The client closed its side (EOF or reset) and the proxy stopped reading it.
    pub client_closed: bool,
}

impl Traffic {
    /// The lengths of the encrypted records the client sent after its handshake's Finished (the first encrypted
    /// record it sends, RFC 8446 §4.4.4; a TLS 1.3 client sends nothing encrypted before it).
    pub fn records_after_handshake(&self) -> Vec<usize> {
        let mut encrypted = self
            .client_records
            .iter()
            .filter(|record| record.content_type == APPLICATION_DATA);
        // Skip the Finished.
        encrypted.next();
        encrypted.map(|record| record.length).collect()
    }

    /// Checks that the client's records are a handshake (ClientHello, an optional middlebox-compatibility
    /// ChangeCipherSpec, the encrypted Finished) followed only by encrypted records, with nothing cut short.
    pub fn assert_well_formed(&self) {
        assert_eq!(self.client_trailing_bytes, 0, "{self:?}");
        let types: Vec<u8> = self.client_records.iter().map(|r| r.content_type).collect();
        assert_eq!(types.first(), Some(&HANDSHAKE), "no ClientHello: {types:?}");
        let encrypted_from = types
            .iter()
            .position(|&t| t == APPLICATION_DATA)
            .unwrap_or(types.len());
        assert!(
            types[1..encrypted_from]
                .iter()
                .all(|&t| t == CHANGE_CIPHER_SPEC),
            "unexpected records before the Finished: {types:?}"
        );
        assert!(
            types[encrypted_from..]
                .iter()
                .all(|&t| t == APPLICATION_DATA),
            "a cleartext record after the handshake: {types:?}"
        );
    }
}

/// The length of the encrypted record carrying `request` alone.
pub fn record_len_of(request: &Request) -> usize {
    let mut frame = Vec::new();
    request.emit(&mut frame).expect("frame the request");
    frame.len() + RECORD_OVERHEAD
}

/// A proxy on 127.0.0.1 that forwards one connection to `upstream` and records what the client sent.
pub struct RecordingProxy {
    address: SocketAddr,
    traffic: Arc<Mutex<Traffic>>,
    client_to_server: JoinHandle<()>,
}

impl RecordingProxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("proxy listens");
        let address = listener.local_addr().expect("proxy address");
        let traffic = Arc::new(Mutex::new(Traffic::default()));
        let log = Arc::clone(&traffic);
        let client_to_server = std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(client_out), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let answers = Arc::clone(&log);
            std::thread::spawn(move || pump_server_to_client(server_in, client_out, &answers));
            pump_client_to_server(client, server, &log);
        });
        Self {
            address,
            traffic,
            client_to_server,
        }
    }

    /// Where the client connects instead of the upstream.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Waits (at most `limit`) until the client has closed its side, and returns everything recorded.
    pub fn finish(self, limit: Duration) -> Traffic {
        let deadline = Instant::now() + limit;
        while !self.client_to_server.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the client kept its connection open for {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.client_to_server.join();
        let traffic = self.traffic.lock().expect("traffic log").clone();
        traffic
    }
}

fn pump_client_to_server(mut client: TcpStream, mut server: TcpStream, log: &Mutex<Traffic>) {
    let mut pending = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let count = match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now = Instant::now();
        pending.extend_from_slice(&buffer[..count]);
        {
            let mut traffic = log.lock().expect("traffic log");
            traffic.client_bytes += count;
            // TLSPlaintext header: type (1), legacy_record_version (2), length (2); RFC 8446 §5.1.
            while pending.len() >= 5 {
                let length = usize::from(u16::from_be_bytes([pending[3], pending[4]]));
                if pending.len() < 5 + length {
                    break;
                }
                traffic.client_records.push(Record {
                    content_type: pending[0],
                    length,
                    at: now,
                });
                pending.drain(..5 + length);
            }
        }
        if server.write_all(&buffer[..count]).is_err() {
            break;
        }
    }
    let mut traffic = log.lock().expect("traffic log");
    traffic.client_trailing_bytes = pending.len();
    traffic.client_closed = true;
    drop(traffic);
    let _ = server.shutdown(Shutdown::Write);
}

fn pump_server_to_client(mut server: TcpStream, mut client: TcpStream, log: &Mutex<Traffic>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let count = match server.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Ok(mut traffic) = log.lock() {
            traffic.server_bytes += count;
        }
        if client.write_all(&buffer[..count]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}
