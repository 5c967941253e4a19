//! swtpm provisioning against the real tools: the runner's CA issues EK certificates that land in
//! NV, chain to the CA's root, and no swtpm process outlives its guard.
//!
//! Needs swtpm, swtpm-tools, tpm2-tools and openssl; a missing tool fails the test (it is not skipped).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use runner::process::{self, ChildGuard};
use runner::tools;
use runner::tpm_state::{self, CertificateAuthority, Swtpm};

fn require_tools() {
    let tpm2_tools = tools::Tool {
        program: "tpm2_nvread",
        debian_package: "tpm2-tools",
    };
    let openssl = tools::Tool {
        program: "openssl",
        debian_package: "openssl",
    };
    let mut needed = tools::BOOT_TOOLS.to_vec();
    needed.extend([tpm2_tools, openssl]);
    tools::require(&needed).expect("this test needs the TPM tools; install them as the error says");
}

/// Process ids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

#[test]
fn provisioning_creates_ek_certificates_from_the_runner_ca() {
    require_tools();
    let scratch = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::open(&scratch.path().join("ca")).unwrap();
    let state = scratch.path().join("state");
    tpm_state::provision(&ca, &state).unwrap();

    assert!(
        state.join("tpm2-00.permall").is_file(),
        "swtpm_setup wrote no TPM state"
    );
    assert!(
        ca.root_certificate().is_file(),
        "swtpm_localca created no root CA"
    );
    assert!(
        ca.issuer_certificate().is_file(),
        "swtpm_localca created no signing CA"
    );
    let log = std::fs::read_to_string(state.join("swtpm_setup.log")).unwrap();
    assert!(
        log.contains("Successfully created RSA 2048 EK with handle 0x81010001"),
        "{log}"
    );
    assert!(
        log.contains("Successfully created ECC EK with handle 0x81010016"),
        "{log}"
    );

    // A second provisioning reuses the same CA (same root) instead of creating a new one.
    let root = std::fs::read(ca.root_certificate()).unwrap();
    let second = scratch.path().join("second");
    tpm_state::provision(&ca, &second).unwrap();
    assert_eq!(std::fs::read(ca.root_certificate()).unwrap(), root);

    // Read the RSA EK certificate back out of NV and check it chains to the runner's root.
    let der = read_nv_index(&state, 0x01c0_0002, scratch.path());
    let pem = scratch.path().join("ek.pem");
    let der_path = scratch.path().join("ek.der");
    std::fs::write(&der_path, &der).unwrap();
    run(Command::new("openssl")
        .args(["x509", "-inform", "der", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem));
    let verified = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca.root_certificate())
        .arg("-untrusted")
        .arg(ca.issuer_certificate())
        .arg(&pem));
    assert!(verified.contains(": OK"), "{verified}");

    // The same certificate does not verify against some other root.
    let other = CertificateAuthority::open(&scratch.path().join("other-ca")).unwrap();
    tpm_state::provision(&other, &scratch.path().join("other-state")).unwrap();
    let status = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(other.root_certificate())
        .arg(&pem)
        .output()
        .unwrap()
        .status;
    assert!(
        !status.success(),
        "an EK certificate verified under an unrelated root"
    );
}

#[test]
fn swtpm_starts_with_a_socket_and_leaves_no_process() {
    require_tools();
    let scratch = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::open(&scratch.path().join("ca")).unwrap();
    let state = scratch.path().join("state");
    tpm_state::provision(&ca, &state).unwrap();
    let socket = scratch.path().join("swtpm.sock");
    let mut swtpm = Swtpm::start(&state, &socket).unwrap();
    swtpm.ensure_running().unwrap();
    assert_eq!(swtpm.socket(), socket);
    let pid = swtpm.id();
    let state_text = state.to_str().unwrap().to_string();
    assert_eq!(processes_mentioning(&state_text), vec![pid]);
    drop(swtpm);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "swtpm {pid} still exists after drop"
    );
    assert!(processes_mentioning(&state_text).is_empty());

    // The explicit stop path behaves the same.
    let swtpm = Swtpm::start(&state, &socket).unwrap();
    let pid = swtpm.id();
    swtpm.stop().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Serves `state` on TCP (data port P, control port P+1, as tpm2-tools' swtpm TCTI expects) and
/// reads one NV index with tpm2_nvread.
fn read_nv_index(state: &Path, index: u32, scratch: &Path) -> Vec<u8> {
    for _ in 0..5 {
        let port = runner::appliance::free_port().unwrap();
        if port == u16::MAX || std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_err()
        {
            continue;
        }
        let mut command = Command::new("swtpm");
        command
            .args(["socket", "--tpm2", "--flags", "startup-clear", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .args([
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            ])
            .args([
                "--ctrl",
                &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            ]);
        let mut swtpm =
            ChildGuard::spawn("swtpm", command, &scratch.join("swtpm-tcp.log")).unwrap();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = process::wait_until(
            "swtpm's TCP port",
            Instant::now() + Duration::from_secs(30),
            || {
                if swtpm.try_wait()?.is_some() {
                    return Ok(Some(false));
                }
                Ok(TcpStream::connect(address).is_ok().then_some(true))
            },
        )
        .unwrap();
        if !ready {
            continue; // The port was taken in between; try another.
        }
        let out = scratch.join("nv.bin");
        run(Command::new("tpm2_nvread")
            .arg("-T")
            .arg(format!("swtpm:host=127.0.0.1,port={port}"))
            .arg(format!("{index:#x}"))
            .arg("-o")
            .arg(&out));
        return std::fs::read(out).unwrap();
    }
    panic!("no free pair of TCP ports for swtpm");
}

/// Runs a command that must succeed and returns its stdout and stderr.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed: {text}");
    text
}
