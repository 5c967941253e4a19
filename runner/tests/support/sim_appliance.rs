//! A simulated appliance on a real swtpm, for host tests of the verifier and of what is built on it (the gateway):
//! it does exactly what the kernel does (docs/ARCHITECTURE.md §4: firmware-like extends of PCRs 0-7, then PCR 12
//! kernel segments, 13 model, 14 command line, each logged; EK and AK as primaries of the endorsement hierarchy; the
//! EK certificate from NV; TPM2_Quote with `qualifying_data(nonce, binding)`), on a swtpm provisioned by a CA of the
//! runner's kind (`runner::tpm_state`). Included with `#[path]` by `runner/tests/verify.rs` and
//! `gateway/tests/gateway.rs`.
//!
//! These helpers fail, not skip, when swtpm is missing; the message names the Debian package.

#![allow(
    dead_code,
    reason = "each test binary that includes this file uses a different subset of it"
)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use client::manifest::Manifest;
use client::verify::TrustAnchors;
use net::proto::{ChannelBinding, ErrorCode, Evidence, Request, Response};
use runner::tpm_state::{self, CertificateAuthority};
use sha2::{Digest as _, Sha256};
use tpm::commands::{self, CreatedPrimary, PcrSelection};
use tpm::eventlog::{self, EventKind, EventLog};
use tpm::public::KeyTemplate;
use tpm::transport::SwtpmSocket;

pub const MISSING_SWTPM: &str = "swtpm is required for these tests and was not found: install the Debian \
                             packages `swtpm` and `swtpm-tools` (apt-get install swtpm swtpm-tools)";

// ---------------------------------------------------------------------------------------------------------
// The image: a synthetic kernel ELF, a model blob and a command line.

/// A directory holding one image's files.
pub struct TestImage {
    pub dir: tempfile::TempDir,
    pub kernel: PathBuf,
    pub model: PathBuf,
    pub cmdline: String,
    /// SHA-256 over the loadable segments' file bytes, computed here from how the ELF was laid out.
    pub kernel_segments_digest: [u8; 32],
}

/// An ELF64 with PT_LOAD segments RX (0x400, 0x300 bytes), R (0x800, 0x120) and RW (0xa00, 0x80): the kernel
/// hashes all three, the initial data as it was before its first write.
pub fn synthetic_kernel(seed: u8) -> (Vec<u8>, [u8; 32]) {
    let mut elf = vec![0u8; 0xc00];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // ELFDATA2LSB
    elf[6] = 1;
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes()); // e_phnum
    for (index, (flags, offset, size)) in [
        (5u32, 0x400u64, 0x300u64),
        (4, 0x800, 0x120),
        (6, 0xa00, 0x80),
    ]
    .into_iter()
    .enumerate()
    {
        let at = 64 + index * 56;
        elf[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        elf[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        elf[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
    }
    for (index, byte) in elf[0x400..].iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(31) ^ seed;
    }
    let mut hasher = Sha256::new();
    hasher.update(&elf[0x400..0x700]);
    hasher.update(&elf[0x800..0x920]);
    hasher.update(&elf[0xa00..0xa80]);
    (elf, hasher.finalize().into())
}

impl TestImage {
    pub fn new(kernel_seed: u8, model: &[u8], cmdline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (elf, kernel_segments_digest) = synthetic_kernel(kernel_seed);
        let kernel = dir.path().join("kernel.elf");
        let model_path = dir.path().join("model.gguf");
        std::fs::write(&kernel, elf).unwrap();
        std::fs::write(&model_path, model).unwrap();
        Self {
            dir,
            kernel,
            model: model_path,
            cmdline: cmdline.to_string(),
            kernel_segments_digest,
        }
    }

    pub fn standard() -> Self {
        Self::new(0, b"GGUF tiny test model", "ip=dhcp port=7000")
    }

    pub fn manifest(&self) -> Manifest {
        Manifest::for_image(&self.kernel, &self.model, &self.cmdline).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------------------
// swtpm provisioned from a CA made by the runner's own code, and started per simulated appliance.

/// A CA and a TPM state it provisioned.
pub struct Provisioned {
    _dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub state: PathBuf,
}

/// Where provisioned states live: `<temp>/cloister-verify-tests/<pid>-...`. They sit in statics, which are never
/// dropped, so each test process first removes what dead test processes left there.
pub fn provisioned_dir() -> tempfile::TempDir {
    let base = std::env::temp_dir().join("cloister-verify-tests");
    std::fs::create_dir_all(&base).unwrap();
    for entry in std::fs::read_dir(&base).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(&base)
        .unwrap()
}

impl Provisioned {
    pub fn new() -> Self {
        let dir = provisioned_dir();
        let ca = CertificateAuthority::open(&dir.path().join("ca")).expect(MISSING_SWTPM);
        let state = dir.path().join("state");
        tpm_state::provision(&ca, &state).expect("swtpm_setup provisioning");
        Self {
            _dir: dir,
            ca,
            state,
        }
    }

    pub fn trust(&self) -> TrustAnchors {
        self.ca.trust_anchors().unwrap()
    }
}

/// The appliance's TPM and CA.
pub fn home() -> &'static Provisioned {
    static HOME: OnceLock<Provisioned> = OnceLock::new();
    HOME.get_or_init(Provisioned::new)
}

/// Another machine: another TPM (other seeds, so other EK and AK), certified by another CA.
pub fn foreign() -> &'static Provisioned {
    static FOREIGN: OnceLock<Provisioned> = OnceLock::new();
    FOREIGN.get_or_init(Provisioned::new)
}

/// A running swtpm with a private copy of a provisioned state, serving one connection: one end of a loopback TCP
/// pair made here, handed to swtpm as its fd 3 (`--server type=tcp,fd=3`). No port is picked and released for
/// swtpm to bind later, so no other test's server can take it in between (and be talked to in its place). swtpm
/// ends when the connection closes, and is killed on drop.
pub struct Swtpm {
    child: Child,
    state: tempfile::TempDir,
}

/// How often a swtpm that failed before answering its first command is started again.
const SWTPM_STARTS: usize = 3;

impl Swtpm {
    /// Starts swtpm on a copy of `provisioned`'s state and returns it with its connection once it has answered a
    /// TPM2_GetRandom. A swtpm that fails before that is reported (its exit status and stderr) and started again on
    /// a fresh copy, up to [`SWTPM_STARTS`] times: these tests are about what runs above the TPM.
    pub fn start(provisioned: &Provisioned) -> (Self, SwtpmSocket) {
        let mut failures = Vec::new();
        for _ in 0..SWTPM_STARTS {
            let (swtpm, socket) = Self::spawn(provisioned);
            let error = match socket {
                Ok(mut socket) => match commands::get_random(&mut socket, &mut [0u8; 8]) {
                    Ok(()) => return (swtpm, socket),
                    Err(error) => format!("TPM2_GetRandom: {error:?}"),
                },
                Err(error) => format!("the connection's socket options: {error}"),
            };
            let failure = swtpm.failure(&error);
            eprintln!("swtpm failed before its first answer, starting another: {failure}");
            failures.push(failure);
        }
        panic!(
            "swtpm failed {SWTPM_STARTS} times:\n{}",
            failures.join("\n")
        );
    }

    fn spawn(provisioned: &Provisioned) -> (Self, std::io::Result<SwtpmSocket>) {
        use command_fds::{CommandFdExt as _, FdMapping};

        let state = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&provisioned.state).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), state.path().join(entry.file_name())).unwrap();
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let theirs = listener.accept().unwrap().0;
        let stderr = std::fs::File::create(state.path().join("swtpm.stderr")).unwrap();
        let mut command = Command::new("swtpm");
        command
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.path().display()))
            .args(["--server", "type=tcp,fd=3"])
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .fd_mappings(vec![FdMapping {
                parent_fd: theirs.into(),
                child_fd: 3,
            }])
            .expect("one mapping cannot collide");
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{MISSING_SWTPM}: {error}"));
        // The command holds our copy of swtpm's end until it is dropped.
        drop(command);
        let socket = SwtpmSocket::from_stream(ours, Duration::from_secs(60));
        (Self { child, state }, socket)
    }

    /// `error`, with how swtpm ended (or that it still runs) and what it wrote to stderr.
    fn failure(mut self, error: &str) -> String {
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|error| error.to_string(), |status| status.to_string());
        let stderr =
            std::fs::read_to_string(self.state.path().join("swtpm.stderr")).unwrap_or_default();
        format!("{error} (swtpm: {status}; stderr: {:?})", stderr.trim())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The simulated appliance: the kernel's TPM steps (kernel/src/tpm_device.rs, kernel/src/appliance.rs).

pub struct SimAppliance {
    pub tpm: SwtpmSocket,
    pub ek: CreatedPrimary,
    pub ak: CreatedPrimary,
    pub ek_certificate: Vec<u8>,
    pub event_log: Vec<u8>,
    /// The whole boot's TCG log as the kernel sends it on the direct path (kernel/src/boot_log.rs).
    pub firmware_log: Vec<u8>,
    /// The TLS session its quotes are bound to (the served tests set the real session's).
    pub binding: ChannelBinding,
    _swtpm: Swtpm,
}

/// A SHA-256-only TCG log header followed by `log`'s events, as the kernel sends it when no firmware log was
/// handed over.
pub fn direct_boot_log(log: &EventLog) -> Vec<u8> {
    use tpm::tcg_log;
    let mut bytes = vec![0u8; tcg_log::SHA256_HEADER_LEN];
    tcg_log::emit_sha256_header(&mut bytes).unwrap();
    for event in log.events() {
        let at = bytes.len();
        bytes.resize(at + tcg_log::event_len(event.description().len()), 0);
        tcg_log::emit_event(
            &mut bytes[at..],
            u32::from(event.pcr()),
            tcg_log::EV_EVENT_TAG,
            event.digest(),
            event.description().as_bytes(),
        )
        .unwrap();
    }
    bytes
}

impl SimAppliance {
    /// Boots on `provisioned`'s TPM: firmware-like extends of PCRs 0-7 when `firmware`, then the three measured
    /// events of `image`, then EK, AK and the EK certificate.
    pub fn boot(provisioned: &Provisioned, image: &TestImage, firmware: bool) -> Self {
        let (swtpm, mut tpm) = Swtpm::start(provisioned);
        if firmware {
            // What firmware does before the kernel runs (SeaBIOS ends each of PCRs 0-7 with a separator).
            for pcr in 0..8u32 {
                let digest = eventlog::sha256(format!("firmware event for PCR {pcr}").as_bytes());
                commands::pcr_extend(&mut tpm, pcr, &digest).unwrap();
            }
        }
        // The kernel's five events, computed independently of the manifest: file hashes and net::serving's texts.
        let model_digest = eventlog::sha256(&std::fs::read(&image.model).unwrap());
        let config = net::serving::ApplianceConfig::from_cmdline(&image.cmdline).unwrap();
        let mut log = EventLog::new();
        for (pcr, kind, digest, description) in [
            (
                12,
                EventKind::KernelImage,
                image.kernel_segments_digest,
                "kernel text, rodata and data",
            ),
            (13, EventKind::Model, model_digest, "model blob (initrd)"),
            (
                13,
                EventKind::ServingParameters,
                eventlog::sha256(config.serving_text().as_bytes()),
                "serving parameters",
            ),
            (
                14,
                EventKind::Configuration,
                eventlog::sha256(config.configuration_text().as_bytes()),
                "appliance configuration",
            ),
            (
                14,
                EventKind::CommandLine,
                eventlog::sha256(image.cmdline.as_bytes()),
                "kernel command line",
            ),
        ] {
            eventlog::measure(&mut tpm, &mut log, pcr, kind, digest, description).unwrap();
        }
        let ek = commands::create_primary(&mut tpm, KeyTemplate::EkRsa2048).unwrap();
        let ak = commands::create_primary(&mut tpm, KeyTemplate::AkEccP256).unwrap();
        let mut certificate = vec![0u8; 4096];
        let length = commands::read_ek_certificate(&mut tpm, &mut certificate).unwrap();
        certificate.truncate(length);
        let mut event_log = vec![0u8; log.buffer_len()];
        log.emit(&mut event_log).unwrap();
        let firmware_log = direct_boot_log(&log);
        Self {
            tpm,
            ek,
            ak,
            ek_certificate: certificate,
            event_log,
            firmware_log,
            binding: BINDING,
            _swtpm: swtpm,
        }
    }

    /// TPM2_Quote with any extraData (the appliance uses `qualifying_data(nonce)`), PCR_Read, and the evidence.
    pub fn quote(&mut self, extra_data: &[u8], pcr_mask: u32) -> Evidence {
        let selection = PcrSelection::from_mask(pcr_mask).unwrap();
        let quote = commands::quote(&mut self.tpm, self.ak.handle, extra_data, selection).unwrap();
        let values = commands::pcr_read(&mut self.tpm, selection).unwrap();
        Evidence {
            attest: quote.attest().to_vec(),
            signature: quote.signature().to_vec(),
            ak_public: self.ak.public.as_bytes().to_vec(),
            ek_public: self.ek.public.as_bytes().to_vec(),
            ek_certificate: self.ek_certificate.clone(),
            pcr_values: selection
                .indices()
                .map(|pcr| values.values[usize::from(pcr)])
                .collect(),
            event_log: self.event_log.clone(),
            firmware_log: self.firmware_log.clone(),
        }
    }

    /// The appliance's answer to `Request::Attest`.
    pub fn attest(&mut self, nonce: &[u8; 32], pcr_mask: u32) -> Evidence {
        self.quote(&net::proto::qualifying_data(nonce, &self.binding), pcr_mask)
    }

    /// The appliance's answer to `Request::ActivateCredential`.
    pub fn activate(&mut self, credential_blob: &[u8], secret: &[u8]) -> Response {
        match commands::activate_credential_with_ek(
            &mut self.tpm,
            self.ak.handle,
            self.ek.handle,
            &[0x5a; 32],
            credential_blob,
            secret,
        ) {
            Ok(credential) => Response::Credential(credential.as_bytes().to_vec()),
            Err(_) => Response::Error(ErrorCode::TpmFailure),
        }
    }

    pub fn answer(&mut self, request: &Request) -> Response {
        match request {
            Request::Attest { nonce, pcr_mask } => {
                Response::Evidence(self.attest(nonce, *pcr_mask))
            }
            Request::ActivateCredential {
                credential_blob,
                secret,
            } => self.activate(credential_blob, secret),
            Request::ModelInfo | Request::Generate(_) | Request::Cancel => {
                Response::Error(ErrorCode::BadRequest)
            }
        }
    }
}

/// The TLS session the offline tests' quotes are bound to.
pub const BINDING: ChannelBinding = ChannelBinding {
    spki_sha256: [0x5b; 32],
    exporter: [0xe7; 32],
};
