//! A running appliance: a fresh swtpm state, swtpm, and QEMU booting an image, up until it answers.
//!
//! "Up" means the appliance completed a TLS 1.3 handshake and answered a model-info request on the forwarded
//! port (an unverified session, `client::session`: readiness needs no trust). A TCP connect is not enough: QEMU's
//! user networking accepts host connections before the guest listens.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use net::proto::ModelInfo;

use crate::image::Image;
use crate::process::{self, ChildGuard};
use crate::progress::{self, Progress};
use crate::qemu::{self, Accel, AccelChoice, QemuConfig};
use crate::tpm_state::{self, CertificateAuthority, Swtpm};
use crate::{tools, workspace};

/// How long one readiness probe may take before it is retried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause between readiness probes, so probing does not steal time from a slow TCG guest.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes of serial output and of QEMU's output quoted in an error.
const TAIL_BYTES: u64 = 4096;

/// How many free ports to try when `port` is 0 and QEMU finds the picked one taken.
const PORT_ATTEMPTS: u32 = 3;

/// How to boot.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The image directory (kernel, model, command line) from [`crate::image::build`].
    pub image: Image,
    /// The host port on 127.0.0.1 forwarded to the appliance; 0 picks a free one.
    pub port: u16,
    pub accel: AccelChoice,
    pub mem_mib: u32,
    /// The vCPUs QEMU gets; `None` gives what the image's `cpus=` key asks for (a test sets fewer, to see a
    /// processor that never starts left out).
    pub cpus: Option<u32>,
    /// Copy the guest's serial output to stderr as it arrives (for a debug-console kernel).
    pub echo_serial: bool,
    /// How long to wait for the first answer; `None` for [`default_ready_timeout`].
    pub ready_timeout: Option<Duration>,
    /// The cache holding the EK certificate authority (`<cache>/ca`).
    pub cache_dir: PathBuf,
    /// When set (for example by a Ctrl-C handler), waiting for the appliance stops with an error.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl BootOptions {
    /// Defaults for `image`: a free port, automatic accelerator, 1 GiB, serial echoed only for a
    /// debug-console kernel, the default cache.
    pub fn new(image: Image) -> Self {
        Self {
            echo_serial: image.flavor.debug_console,
            image,
            port: 0,
            accel: AccelChoice::Auto,
            mem_mib: qemu::DEFAULT_MEM_MIB,
            cpus: None,
            ready_timeout: None,
            cache_dir: workspace::cache_dir(),
            interrupt: None,
        }
    }
}

/// The vCPUs an image's command line asks for (its measured `cpus=` key; 1 when absent or unreadable, which
/// the kernel then refuses or runs on one CPU anyway).
pub fn image_cpus(cmdline: &str) -> u32 {
    net::serving::ApplianceConfig::from_cmdline(cmdline).map_or(1, |config| config.serving.cpus)
}

/// The default readiness deadline: TCG is 50-80x slower than native (docs/ARCHITECTURE.md §3), and the guest
/// hashes the whole model before it listens.
pub fn default_ready_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(300),
        Accel::Kvm => Duration::from_secs(60),
    }
}

/// A booted appliance. Dropping it stops QEMU and swtpm and removes the run's state directory.
pub struct Appliance {
    // Fields drop in order: QEMU first (it holds swtpm's socket), swtpm, the serial echo, and the
    // state directory last.
    qemu: ChildGuard,
    swtpm: Swtpm,
    echo: Option<SerialEcho>,
    endpoint: SocketAddr,
    accel: Accel,
    boot_duration: Duration,
    model_info: ModelInfo,
    serial_log: PathBuf,
    ca: CertificateAuthority,
    state: tempfile::TempDir,
}

impl Appliance {
    /// Provisions a fresh swtpm state, starts swtpm and QEMU, and waits until the appliance answers.
    ///
    /// On failure everything started is stopped again; the error quotes QEMU's output and the tail
    /// of the serial log.
    pub fn boot(options: &BootOptions) -> Result<Self> {
        tools::require(&tools::BOOT_TOOLS)?;
        let accel = qemu::detect_accel(options.accel);
        let ca = CertificateAuthority::in_cache(&options.cache_dir)?;
        // Unix socket paths are limited to 108 bytes, so the run's state lives under the temp dir.
        let state = tempfile::Builder::new()
            .prefix("cloister-run-")
            .tempdir()
            .context("cannot create the run's state directory")?;
        let attempts = if options.port == 0 { PORT_ATTEMPTS } else { 1 };
        let mut attempt = 1;
        loop {
            match Self::boot_once(options, accel, &ca, state.path()) {
                Ok(booted) => return Ok(booted.into_appliance(accel, ca, state)),
                Err(BootFailure::PortTaken { port, .. }) if attempt < attempts => {
                    eprintln!(
                        "host port {port} was taken before QEMU could bind it; trying another"
                    );
                    attempt += 1;
                }
                Err(BootFailure::PortTaken { error, .. } | BootFailure::Other(error)) => {
                    return Err(error)
                }
            }
        }
    }

    fn boot_once(
        options: &BootOptions,
        accel: Accel,
        ca: &CertificateAuthority,
        state: &Path,
    ) -> Result<Booted, BootFailure> {
        let tpm_dir = state.join("tpm");
        progress::line(&format!(
            "provisioning a fresh swtpm state (EK certificates from the CA in {})...",
            ca.dir().display()
        ));
        tpm_state::provision(ca, &tpm_dir)?;
        let mut swtpm = Swtpm::start(&tpm_dir, &state.join("swtpm.sock"))?;
        let host_port = match options.port {
            0 => free_port()?,
            port => port,
        };
        let serial_log = state.join("serial.log");
        let config = QemuConfig {
            kernel: options.image.kernel.clone(),
            initrd: options.image.model.clone(),
            cmdline: options.image.cmdline.clone(),
            mem_mib: options.mem_mib,
            cpus: options
                .cpus
                .unwrap_or_else(|| image_cpus(&options.image.cmdline)),
            accel,
            host_port,
            swtpm_socket: swtpm.socket().to_path_buf(),
            serial_log: serial_log.clone(),
            firmware: match &options.image.uefi {
                Some(uefi) => {
                    let (code, vars) = crate::uefi::firmware_for_run(state)?;
                    Some(qemu::Firmware {
                        code,
                        vars,
                        disk: uefi.disk.clone(),
                    })
                }
                None => None,
            },
        };
        let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
        let timeout = options
            .ready_timeout
            .unwrap_or_else(|| default_ready_timeout(accel));
        let waiting = format!(
            "booting under QEMU ({}, {} MiB); waiting up to {} s for the appliance to answer on {endpoint}...",
            accel.name(),
            options.mem_mib,
            timeout.as_secs()
        );
        // The serial echo writes to stderr as the guest prints: a spinner would tear its lines.
        let progress = if options.echo_serial {
            Progress::plain(&waiting)
        } else {
            Progress::spinner(&waiting)
        };
        let started = Instant::now();
        let mut qemu = ChildGuard::spawn("QEMU", config.command(), &state.join("qemu.log"))?;
        let echo = options
            .echo_serial
            .then(|| SerialEcho::start(serial_log.clone()));
        let model_info = wait_ready(
            &mut qemu,
            &mut swtpm,
            endpoint,
            started + timeout,
            options.interrupt.as_deref(),
            &serial_log,
        )?;
        progress.finish();
        Ok(Booted {
            qemu,
            swtpm,
            echo,
            endpoint,
            boot_duration: started.elapsed(),
            model_info,
            serial_log,
        })
    }

    /// The forwarded address clients connect to.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Time from starting QEMU to the first answered request (TLS handshake included).
    pub fn boot_duration(&self) -> Duration {
        self.boot_duration
    }

    /// What the appliance answered to the readiness probe.
    pub fn model_info(&self) -> ModelInfo {
        self.model_info
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The file receiving the guest's COM1 output (stays empty for a release image).
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Everything the guest has written to COM1 so far.
    pub fn serial_output(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.serial_log)
            .with_context(|| format!("cannot read {}", self.serial_log.display()))
    }

    /// The run's state directory (swtpm state and socket, logs); removed on drop.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The CA that issued this run's EK certificates.
    pub fn certificate_authority(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Process ids of QEMU and swtpm, for checking that nothing outlives the appliance.
    pub fn process_ids(&self) -> [u32; 2] {
        [self.qemu.id(), self.swtpm.id()]
    }

    /// Fails, quoting QEMU's output and the serial log, if QEMU or swtpm has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.qemu.try_wait()? {
            bail!(exit_report(&status, self.qemu.log_path(), &self.serial_log));
        }
        ensure_swtpm_running(&mut self.qemu, &mut self.swtpm, &self.serial_log)
    }

    /// Stops QEMU, then swtpm, and removes the state directory.
    pub fn shutdown(mut self) -> Result<()> {
        self.qemu.stop()?;
        // Copy the guest's last serial output before saying anything else.
        drop(self.echo.take());
        drop(self);
        Ok(())
    }
}

/// An appliance that answered, before it owns its state directory.
struct Booted {
    qemu: ChildGuard,
    swtpm: Swtpm,
    echo: Option<SerialEcho>,
    endpoint: SocketAddr,
    boot_duration: Duration,
    model_info: ModelInfo,
    serial_log: PathBuf,
}

impl Booted {
    fn into_appliance(
        self,
        accel: Accel,
        ca: CertificateAuthority,
        state: tempfile::TempDir,
    ) -> Appliance {
        Appliance {
            qemu: self.qemu,
            swtpm: self.swtpm,
            echo: self.echo,
            endpoint: self.endpoint,
            accel,
            boot_duration: self.boot_duration,
            model_info: self.model_info,
            serial_log: self.serial_log,
            ca,
            state,
        }
    }
}

/// Why one boot attempt failed: a forwarded port already in use is worth another try.
enum BootFailure {
    PortTaken { port: u16, error: anyhow::Error },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BootFailure {
    fn from(error: anyhow::Error) -> Self {
        BootFailure::Other(error)
    }
}

/// Probes the appliance until it answers a model-info request over TLS, QEMU exits, or `deadline` passes.
fn wait_ready(
    qemu: &mut ChildGuard,
    swtpm: &mut Swtpm,
    endpoint: SocketAddr,
    deadline: Instant,
    interrupt: Option<&AtomicBool>,
    serial_log: &Path,
) -> Result<ModelInfo, BootFailure> {
    let mut last_error = anyhow!("no probe was sent");
    loop {
        if interrupt.is_some_and(|flag| flag.load(Ordering::Acquire)) {
            return Err(BootFailure::Other(anyhow!(
                "interrupted while waiting for the appliance"
            )));
        }
        if let Some(status) = qemu.try_wait()? {
            let report = exit_report(&status, qemu.log_path(), serial_log);
            let output = std::fs::read_to_string(qemu.log_path()).unwrap_or_default();
            if output.to_ascii_lowercase().contains("host forwarding rule") {
                let port = endpoint.port();
                let error = anyhow!(
                    "host port {port} is already in use (pass --port 0 to pick a free one): {report}"
                );
                return Err(BootFailure::PortTaken { port, error });
            }
            return Err(BootFailure::Other(anyhow!(report)));
        }
        ensure_swtpm_running(qemu, swtpm, serial_log)?;
        let now = Instant::now();
        if now >= deadline {
            return Err(BootFailure::Other(anyhow!(
                "the appliance did not answer on {endpoint} in time (last probe: {last_error:#}); \
                 boot a --debug-console image to see what the kernel does.\nserial output:\n{}\nQEMU's output:\n{}",
                process::tail_of_file(serial_log, TAIL_BYTES),
                process::tail_of_file(qemu.log_path(), TAIL_BYTES)
            )));
        }
        match client::model_info(endpoint, PROBE_TIMEOUT.min(deadline - now)) {
            Ok(info) => return Ok(info),
            Err(error) => last_error = error,
        }
        std::thread::sleep(PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// How long to wait for QEMU to exit once swtpm has: swtpm ends when QEMU closes its socket, so a QEMU on its way
/// out (a guest reset under `-no-reboot`) is the cause worth reporting.
const QEMU_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Fails if swtpm has exited, with QEMU's exit report when QEMU exits too within [`QEMU_EXIT_GRACE`].
fn ensure_swtpm_running(qemu: &mut ChildGuard, swtpm: &mut Swtpm, serial_log: &Path) -> Result<()> {
    let Err(error) = swtpm.ensure_running() else {
        return Ok(());
    };
    let deadline = Instant::now() + QEMU_EXIT_GRACE;
    loop {
        if let Some(status) = qemu.try_wait()? {
            bail!(exit_report(&status, qemu.log_path(), serial_log));
        }
        if Instant::now() >= deadline {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exit_report(status: &std::process::ExitStatus, qemu_log: &Path, serial_log: &Path) -> String {
    format!(
        "{}\nQEMU's output:\n{}\nserial output:\n{}",
        exit_reason(status),
        process::tail_of_file(qemu_log, TAIL_BYTES),
        process::tail_of_file(serial_log, TAIL_BYTES)
    )
}

/// What QEMU's exit means. The kernel never powers off: it resets the machine on a panic or a fatal exception
/// (docs/ARCHITECTURE.md §2), and `-no-reboot` turns that reset into QEMU exiting with status 0.
pub fn exit_reason(status: &std::process::ExitStatus) -> String {
    if status.success() {
        format!(
            "{RESET_REPORT} (QEMU exited with {status} under -no-reboot); boot a --debug-console image to see the \
             panic message or the exception"
        )
    } else {
        format!("QEMU exited ({status}).")
    }
}

/// The words a report uses when the guest reset itself.
pub const RESET_REPORT: &str = "the appliance reset itself after a kernel panic or fatal exception";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Copies a growing file to stderr from a thread until dropped, then copies what is left.
struct SerialEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SerialEcho {
    /// How often the file is checked for new bytes.
    const POLL: Duration = Duration::from_millis(50);

    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut offset = 0u64;
            loop {
                // Read the flag before copying, so the last copy happens after QEMU stopped writing.
                let stopping = flag.load(Ordering::Acquire);
                offset = copy_new_bytes(&path, offset, &mut std::io::stderr());
                if stopping {
                    return;
                }
                std::thread::sleep(Self::POLL);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SerialEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes the bytes of `path` past `offset` to `out` and returns the new offset.
fn copy_new_bytes(path: &Path, offset: u64, out: &mut impl Write) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else {
        return offset;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut bytes = Vec::new();
    // A failed read still leaves what it read in `bytes`; the next poll retries the rest.
    let _ = file.read_to_end(&mut bytes);
    let _ = out.write_all(&bytes);
    let _ = out.flush();
    offset + bytes.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_qemu_exit_is_reported_as_a_reset() {
        use std::os::unix::process::ExitStatusExt as _;
        let reset = exit_reason(&std::process::ExitStatus::from_raw(0));
        assert!(reset.starts_with(RESET_REPORT), "{reset}");
        // wait(2) status 1 << 8: QEMU exited with 1, its own failure (a bad option, a port taken).
        let failed = exit_reason(&std::process::ExitStatus::from_raw(1 << 8));
        assert!(!failed.contains(RESET_REPORT), "{failed}");
        assert!(failed.contains("QEMU exited"), "{failed}");
    }

    #[test]
    fn serial_echo_copies_only_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut out = Vec::new();
        assert_eq!(
            copy_new_bytes(&path, 0, &mut out),
            0,
            "a missing file is not an error"
        );
        std::fs::write(&path, b"hello ").unwrap();
        let offset = copy_new_bytes(&path, 0, &mut out);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"world")
            .unwrap();
        let offset = copy_new_bytes(&path, offset, &mut out);
        assert_eq!(offset, 11);
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
