//! `net::tls` against OpenSSL, an implementation nobody here wrote (STYLE 8): `openssl s_client -tls1_3`
//! completes a handshake with a `TlsSession` over a local TCP socket and derives the same exporter value
//! (RFC 8446 §7.5, `-keymatexport`); `openssl x509` reads the self-signed certificate. These tests fail,
//! rather than skip, when `openssl` is missing: install the Debian package `openssl`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use net::tls::{RandomFn, TlsError, TlsServer, ATTESTATION_EXPORTER_LABEL};
use sha2::{Digest, Sha256};

/// How long any one exchange with openssl may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn test_fill(buf: &mut [u8]) -> bool {
    static COUNTER: AtomicU64 = AtomicU64::new(0x0551);
    for chunk in buf.chunks_mut(32) {
        let block = Sha256::digest(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    true
}

static RANDOM: RandomFn = RandomFn(test_fill);

/// A child process that is killed if the test ends before it exits (STYLE 10).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str]) -> Command {
    let mut command = Command::new("openssl");
    command.args(args);
    command
}

fn spawn(mut command: Command) -> ChildGuard {
    match command.spawn() {
        Ok(child) => ChildGuard(child),
        Err(error) if error.kind() == ErrorKind::NotFound => {
            panic!("`openssl` is not installed: install the Debian package `openssl` (apt-get install openssl)")
        }
        Err(error) => panic!("cannot start openssl: {error}"),
    }
}

/// What the server side of one connection saw.
struct Served {
    exporter: Option<[u8; 32]>,
    request: Vec<u8>,
    error: Option<TlsError>,
}

/// Serves one TLS connection on `listener`: reads one line, answers `reply`, sends close_notify.
fn serve_one(listener: &TcpListener, server: &TlsServer, reply: &[u8]) -> Served {
    let deadline = Instant::now() + DEADLINE;
    listener.set_nonblocking(true).unwrap();
    let mut stream: TcpStream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "openssl never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("accept: {error}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();

    let mut session = server.session().unwrap();
    let mut served = Served {
        exporter: None,
        request: Vec::new(),
        error: None,
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut outgoing = Vec::new();
    let mut replied = false;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut offset = 0;
                while offset < n {
                    match session.feed_incoming(&buf[offset..n]) {
                        Ok(taken) => offset += taken,
                        Err(error) => {
                            served.error = Some(error);
                            break;
                        }
                    }
                    served.request.extend_from_slice(session.plaintext());
                    let read = session.plaintext().len();
                    session.consume_plaintext(read);
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) => panic!("read: {error}"),
        }
        if !session.is_handshaking() && served.exporter.is_none() && served.error.is_none() {
            served.exporter = Some(session.attestation_exporter().unwrap());
        }
        if !replied && served.request.contains(&b'\n') {
            session.write_plaintext(reply).unwrap();
            session.close();
            replied = true;
        }
        session.take_outgoing(&mut outgoing);
        if !outgoing.is_empty() {
            if stream.write_all(&outgoing).is_err() {
                break;
            }
            outgoing.clear();
        }
        if served.error.is_some() {
            break;
        }
    }
    served
}

/// Runs `openssl s_client` against a fresh session; returns what the server saw, openssl's stdout and
/// whether it exited successfully.
fn s_client(server: &TlsServer, extra: &[&str]) -> (Served, String, bool) {
    s_client_version(server, "-tls1_3", extra)
}

/// [`s_client`] with the protocol-version switch given (`-tls1_3`, `-tls1_2`).
fn s_client_version(server: &TlsServer, version: &str, extra: &[&str]) -> (Served, String, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let label = std::str::from_utf8(ATTESTATION_EXPORTER_LABEL).unwrap();
    let mut args = vec![
        "s_client",
        "-connect",
        &address,
        version,
        "-keymatexport",
        label,
        "-keymatexportlen",
        "32",
        "-groups",
        "X25519",
    ];
    args.extend_from_slice(extra);
    let mut command = openssl(&args);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(command);
    // One request line; stdin stays open so s_client waits for the server to close.
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"ping from openssl\n").unwrap();

    let served = serve_one(&listener, server, b"pong from cloister\n");

    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "openssl did not exit");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(stdin);
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    (served, stdout, status.success())
}

/// The "Keying material: HEX" line of s_client's session summary.
fn keying_material(stdout: &str) -> [u8; 32] {
    let line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Keying material: "))
        .unwrap_or_else(|| panic!("no keying material in s_client output:\n{stdout}"));
    let bytes: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn handshake_with(suite: &str) {
    let server = TlsServer::new(&RANDOM).unwrap();
    let (served, stdout, _) = s_client(&server, &["-ciphersuites", suite]);
    assert_eq!(served.error, None, "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(stdout.contains(suite), "{stdout}");
    assert_eq!(served.request, b"ping from openssl\n");
    assert!(stdout.contains("pong from cloister"), "{stdout}");
    let exporter = served.exporter.expect("handshake completed");
    assert_eq!(keying_material(&stdout), exporter);
}

#[test]
fn openssl_handshake_and_exporter_aes_128_gcm() {
    handshake_with("TLS_AES_128_GCM_SHA256");
}

#[test]
fn openssl_handshake_and_exporter_chacha20_poly1305() {
    handshake_with("TLS_CHACHA20_POLY1305_SHA256");
}

#[test]
fn openssl_without_a_common_suite_is_refused() {
    let server = TlsServer::new(&RANDOM).unwrap();
    let (served, stdout, success) = s_client(&server, &["-ciphersuites", "TLS_AES_256_GCM_SHA384"]);
    assert_eq!(served.error, Some(TlsError::PeerIncompatible));
    assert!(served.exporter.is_none());
    assert!(!success, "{stdout}");
}

#[test]
fn openssl_tls12_is_refused() {
    // RFC 8446 §4.2.1: a ClientHello without supported_versions is TLS 1.2, which the appliance does not
    // speak; rustls answers protocol_version (or handshake_failure) and no session is established.
    let server = TlsServer::new(&RANDOM).unwrap();
    let (served, stdout, success) = s_client_version(&server, "-tls1_2", &[]);
    assert_eq!(served.error, Some(TlsError::PeerIncompatible));
    assert!(served.exporter.is_none());
    assert!(served.request.is_empty());
    assert!(!success, "{stdout}");
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cloister-tls-{}-{name}", std::process::id()))
}

#[test]
fn openssl_reads_the_certificate() {
    let server = TlsServer::new(&RANDOM).unwrap();
    let identity = server.identity();
    let der = temp_path("cert.der");
    std::fs::write(&der, identity.certificate_der()).unwrap();
    let der_arg = der.to_str().unwrap();

    let mut text = openssl(&["x509", "-inform", "DER", "-in", der_arg, "-noout", "-text"]);
    let output = text.output().unwrap_or_else(|error| {
        panic!("`openssl` is not installed ({error}): install the Debian package `openssl`")
    });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "Version: 3 (0x2)",
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: CN = cloister appliance",
        "Subject: CN = cloister appliance",
        "Public Key Algorithm: id-ecPublicKey",
        "NIST CURVE: P-256",
        "CA:FALSE",
        "Digital Signature",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // The public key openssl finds is exactly the SubjectPublicKeyInfo the attestation binds.
    let spki = temp_path("spki.der");
    let pubkey = openssl(&[
        "x509", "-inform", "DER", "-in", der_arg, "-noout", "-pubkey",
    ])
    .output()
    .unwrap();
    assert!(pubkey.status.success());
    let mut to_der = openssl(&[
        "pkey",
        "-pubin",
        "-outform",
        "DER",
        "-out",
        spki.to_str().unwrap(),
    ]);
    to_der.stdin(Stdio::piped());
    let mut child = spawn(to_der);
    child
        .0
        .stdin
        .take()
        .unwrap()
        .write_all(&pubkey.stdout)
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    assert_eq!(std::fs::read(&spki).unwrap(), identity.spki_der());

    // The self-signature checks out (the certificate as its own trust anchor, signature checked).
    let pem = temp_path("cert.pem");
    let converted = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        der_arg,
        "-out",
        pem.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(converted.status.success());
    let pem_arg = pem.to_str().unwrap();
    let verify = openssl(&["verify", "-check_ss_sig", "-CAfile", pem_arg, pem_arg])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    for path in [der, spki, pem] {
        let _ = std::fs::remove_file(path);
    }
}
