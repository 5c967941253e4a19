//! The software TPM behind the appliance: the runner's own EK certificate authority, a freshly
//! provisioned swtpm state per run, and the running swtpm process (docs/ARCHITECTURE.md §3).
//!
//! Provisioning follows swtpm 0.7.1's `swtpm_setup(8)`, `swtpm_setup.conf(5)` and
//! `swtpm-localca.conf(5)`: a private setup configuration names `swtpm_localca` as the certificate
//! tool, with a private localca configuration whose CA files live in the runner's CA directory.
//! `swtpm_localca` creates a root CA and a signing CA there on first use and issues the EK and
//! platform certificates, which `swtpm_setup` writes into NV (RSA EK cert at 0x01c00002, ECC P-384
//! EK cert at 0x01c00016, platform cert at 0x01c08000) before locking NV.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::verify::TrustAnchors;

use crate::process::{self, ChildGuard};
use crate::tools;

/// How long swtpm may take to create its control socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// NV indices that provisioning must have filled, with what they hold (TCG EK Credential Profile §2.2.1.4).
pub const PROVISIONED_NV_INDICES: [(u32, &str); 3] = [
    (0x01c0_0002, "RSA 2048 EK certificate"),
    (0x01c0_0016, "ECC EK certificate"),
    (0x01c0_8000, "platform certificate"),
];

/// The runner's EK certificate authority: configuration and key material under one directory.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    dir: PathBuf,
}

impl CertificateAuthority {
    /// The CA under `<cache>/ca/`, with its configuration files (re)written.
    pub fn in_cache(cache: &Path) -> Result<Self> {
        Self::open(&cache.join("ca"))
    }

    /// The CA kept in `dir`: creates the directory and writes the private swtpm configuration files.
    ///
    /// The key material itself is created by `swtpm_localca` during the first provisioning and kept.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let ca = Self { dir };
        let localca = tools::swtpm_localca()?;
        write_atomically(&ca.localca_config(), &ca.localca_config_text())?;
        write_atomically(&ca.localca_options(), LOCALCA_OPTIONS)?;
        write_atomically(&ca.setup_config(), &ca.setup_config_text(&localca))?;
        Ok(ca)
    }

    /// The directory holding the CA.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private `swtpm_setup.conf` passed to `swtpm_setup --config`.
    pub fn setup_config(&self) -> PathBuf {
        self.dir.join("swtpm_setup.conf")
    }

    /// The private `swtpm-localca.conf`.
    pub fn localca_config(&self) -> PathBuf {
        self.dir.join("swtpm-localca.conf")
    }

    /// The private `swtpm-localca.options` (platform certificate fields).
    pub fn localca_options(&self) -> PathBuf {
        self.dir.join("swtpm-localca.options")
    }

    /// The self-signed root certificate a verifier trusts (PEM); exists after the first provisioning.
    pub fn root_certificate(&self) -> PathBuf {
        self.dir.join("swtpm-localca-rootca-cert.pem")
    }

    /// The intermediate that signs EK certificates (PEM); exists after the first provisioning.
    pub fn issuer_certificate(&self) -> PathBuf {
        self.dir.join("issuercert.pem")
    }

    /// What a verifier trusts for this CA's EK certificates (docs/ARCHITECTURE.md §3): its root, and the swtpm_localca signing
    /// certificate as intermediate.
    pub fn trust_anchors(&self) -> Result<TrustAnchors> {
        let root = self.root_certificate();
        let issuer = self.issuer_certificate();
        if !root.is_file() {
            bail!(
                "{} does not exist: cloister's CA is created when swtpm is first provisioned: run `cloister up` once, or pass the EK CA's certificates with --ek-ca",
                root.display()
            );
        }
        TrustAnchors::from_pem_files(&root, &[&issuer])
    }

    fn setup_config_text(&self, localca: &Path) -> String {
        format!(
            "# Written by the cloister runner; provisioning uses the runner's own CA.\n\
             create_certs_tool = {}\n\
             create_certs_tool_config = {}\n\
             create_certs_tool_options = {}\n\
             active_pcr_banks = sha256\n",
            localca.display(),
            self.localca_config().display(),
            self.localca_options().display()
        )
    }

    fn localca_config_text(&self) -> String {
        format!(
            "statedir = {}\nsigningkey = {}\nissuercert = {}\ncertserial = {}\n",
            self.dir.display(),
            self.dir.join("signkey.pem").display(),
            self.issuer_certificate().display(),
            self.dir.join("certserial").display()
        )
    }
}

/// The platform certificate's fields (swtpm-localca.options(5)).
const LOCALCA_OPTIONS: &str =
    "--platform-manufacturer cloister\n--platform-version 2.1\n--platform-model QEMU\n";

/// Writes `text` to `path` through a temporary file and a rename, so a concurrent run never reads
/// half a configuration file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::fs::write(temporary.path(), text)?;
    temporary
        .persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates a fresh TPM 2.0 state in `state_dir` with EK and platform certificates from `ca`.
///
/// `swtpm_setup`'s log goes to `<state_dir>/swtpm_setup.log`; the call fails, quoting the log, unless
/// swtpm_setup reports every NV index of [`PROVISIONED_NV_INDICES`] as created.
pub fn provision(ca: &CertificateAuthority, state_dir: &Path) -> Result<()> {
    tools::require(&[tools::SWTPM, tools::SWTPM_SETUP, tools::SWTPM_LOCALCA])?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let log = state_dir.join("swtpm_setup.log");
    let _ = std::fs::remove_file(&log);
    let output = Command::new(tools::SWTPM_SETUP.program)
        .args(["--tpm2", "--tpmstate"])
        .arg(state_dir)
        .arg("--config")
        .arg(ca.setup_config())
        .arg("--logfile")
        .arg(&log)
        .args([
            "--create-ek-cert",
            "--create-platform-cert",
            "--lock-nvram",
            "--overwrite",
        ])
        .output()
        .context("cannot run swtpm_setup")?;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if !output.status.success() {
        bail!(
            "swtpm_setup failed ({}):\n{}{}{}",
            output.status,
            log_text,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (index, what) in PROVISIONED_NV_INDICES {
        let line = format!("Successfully created NVRAM area {index:#x}");
        if !log_text.contains(&line) {
            bail!(
                "swtpm_setup did not report the {what} at NV {index:#010x}; its log:\n{log_text}"
            );
        }
    }
    Ok(())
}

/// A running swtpm serving one provisioned state over a unixio control socket (for QEMU's
/// `-tpmdev emulator`). Killed on drop; with `--terminate` it also exits when QEMU disconnects.
#[derive(Debug)]
pub struct Swtpm {
    child: ChildGuard,
    socket: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on `state_dir` and waits until its control socket exists.
    ///
    /// swtpm's output goes to `<state_dir>/swtpm.log`.
    pub fn start(state_dir: &Path, socket: &Path) -> Result<Self> {
        tools::require(&[tools::SWTPM])?;
        let _ = std::fs::remove_file(socket);
        let mut command = Command::new(tools::SWTPM.program);
        command
            .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
            .arg(join("dir=", state_dir))
            .arg("--ctrl")
            .arg(join("type=unixio,path=", socket));
        let mut child = ChildGuard::spawn("swtpm", command, &state_dir.join("swtpm.log"))?;
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        process::wait_until("swtpm's control socket", deadline, || {
            child.ensure_running()?;
            Ok(is_socket(socket).then_some(()))
        })?;
        Ok(Self {
            child,
            socket: socket.to_path_buf(),
        })
    }

    /// The control socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The swtpm process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails with swtpm's output if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.child.ensure_running()
    }

    /// Stops swtpm and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.child.stop()?;
        Ok(())
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .map(|meta| meta.file_type().is_socket())
        .unwrap_or(false)
}

fn join(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut joined = std::ffi::OsString::from(prefix);
    joined.push(path.as_os_str());
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_files_point_into_the_ca_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::open(&dir.path().join("ca")).unwrap();
        let setup = std::fs::read_to_string(ca.setup_config()).unwrap();
        assert!(
            setup.contains("create_certs_tool = /") && setup.contains("swtpm_localca\n"),
            "{setup}"
        );
        assert!(setup.contains(&format!(
            "create_certs_tool_config = {}\n",
            ca.localca_config().display()
        )));
        assert!(setup.contains(&format!(
            "create_certs_tool_options = {}\n",
            ca.localca_options().display()
        )));
        assert!(setup.contains("active_pcr_banks = sha256\n"));
        let localca = std::fs::read_to_string(ca.localca_config()).unwrap();
        let dir_text = ca.dir().display().to_string();
        for key in ["statedir", "signingkey", "issuercert", "certserial"] {
            let line = localca.lines().find(|line| line.starts_with(key)).unwrap();
            assert!(line.contains(&dir_text), "{line}");
        }
    }
}
