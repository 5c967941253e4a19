//! A provisioned swtpm started per test: free ports, private state, killed on drop. The process and its files
//! only; each crate's tests add the transports they speak to it with. Included with `#[path]` by
//! `tpm/tests/support/mod.rs` and `kernel/src/tests/support.rs` (the kernel cannot take `tpm`'s socket transport:
//! see there).
//!
//! swtpm provisioning follows docs/ARCHITECTURE.md §3: a private `swtpm_setup.conf` and `swtpm-localca.conf`, so the EK
//! certificates come from a CA of the test's own, then `swtpm_setup --create-ek-cert --create-platform-cert
//! --lock-nvram`.

#![allow(
    dead_code,
    reason = "the tpm and kernel tests use different parts of this module"
)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MISSING: &str =
    "swtpm is required for these tests and was not found: install the Debian packages \
                       `swtpm` and `swtpm-tools` (apt-get install swtpm swtpm-tools)";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where the tests keep their files: `<temp>/cloister-swtpm-tests/<pid>-<n>-<tag>`.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join("cloister-swtpm-tests")
}

/// Removes what earlier test processes left behind (the provisioned state lives in a static, which is never
/// dropped): every entry whose owning process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(base_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap_or("")
            .to_owned();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh directory for this test process, removed by [`TempDir`]'s drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = base_dir().join(format!(
            "{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(found, "{MISSING} (missing program: {program})");
}

/// A provisioned TPM state (EK certs from the test's CA), made once per test binary and copied per swtpm.
pub struct Provisioned {
    _dir: TempDir,
    pub state: PathBuf,
    pub ca: PathBuf,
}

pub fn provisioned() -> &'static Provisioned {
    static ONCE: OnceLock<Provisioned> = OnceLock::new();
    ONCE.get_or_init(|| {
        require("swtpm");
        require("swtpm_setup");
        require("swtpm_localca");
        remove_stale();
        let dir = TempDir::new("provision");
        let state = dir.0.join("state");
        let ca = dir.0.join("ca");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&ca).unwrap();
        let localca_conf = dir.0.join("swtpm-localca.conf");
        std::fs::write(
            &localca_conf,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
                 certserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .unwrap();
        let localca_options = dir.0.join("swtpm-localca.options");
        std::fs::write(
            &localca_options,
            "--platform-manufacturer cloister\n--platform-version 2.1\n--platform-model test\n",
        )
        .unwrap();
        let setup_conf = dir.0.join("swtpm_setup.conf");
        std::fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\n\
                 create_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                localca_conf.display(),
                localca_options.display()
            ),
        )
        .unwrap();
        let output = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(&state)
            .arg("--config")
            .arg(&setup_conf)
            .args([
                "--create-ek-cert",
                "--create-platform-cert",
                "--lock-nvram",
                "--overwrite",
            ])
            .output()
            .unwrap_or_else(|error| panic!("{MISSING}: swtpm_setup: {error}"));
        assert!(
            output.status.success(),
            "swtpm_setup failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Provisioned {
            _dir: dir,
            state,
            ca,
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running swtpm with its own copy of the provisioned state.
pub struct Swtpm {
    child: Child,
    pub data: SocketAddr,
    pub control: SocketAddr,
    _state: TempDir,
}

impl Swtpm {
    /// Starts swtpm already initialised and started (`--flags not-need-init,startup-clear`).
    pub fn start() -> Self {
        Self::start_with_flags("not-need-init,startup-clear")
    }

    /// Starts swtpm with `--flags flags`; waits until both ports accept connections.
    pub fn start_with_flags(flags: &str) -> Self {
        let provisioned = provisioned();
        let mut last_error = String::new();
        // A port picked free can be taken before swtpm binds it: try a few pairs.
        for _ in 0..5 {
            let state = TempDir::new("state");
            for entry in std::fs::read_dir(&provisioned.state).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), state.0.join(entry.file_name())).unwrap();
            }
            let (data_port, control_port) = (free_port(), free_port());
            if data_port == control_port {
                continue;
            }
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .arg("--tpmstate")
                .arg(format!("dir={}", state.0.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={data_port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={control_port},bindaddr=127.0.0.1"))
                .arg("--flags")
                .arg(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|error| panic!("{MISSING}: {error}"));
            let data = SocketAddr::from(([127, 0, 0, 1], data_port));
            let control = SocketAddr::from(([127, 0, 0, 1], control_port));
            match wait_for_ports(&mut child, &[data, control]) {
                Ok(()) => {
                    return Self {
                        child,
                        data,
                        control,
                        _state: state,
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    let output = child.wait_with_output().ok();
                    last_error = format!(
                        "{error}; stderr: {}",
                        output
                            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                            .unwrap_or_default()
                    );
                }
            }
        }
        panic!("swtpm did not start: {last_error}");
    }

    pub fn state_dir(&self) -> &Path {
        &self._state.0
    }
}

fn wait_for_ports(child: &mut Child, addresses: &[SocketAddr]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for address in addresses {
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("swtpm exited with {status}"));
            }
            // A probe connection to the data port is harmless: swtpm serves one client at a time and
            // takes the next when this one closes.
            if TcpStream::connect_timeout(address, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{address} did not open within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
