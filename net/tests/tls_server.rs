//! Scratch validation of the proposed connection.rs/server.rs TLS integration: `net::Server` with TLS over
//! the in-memory link, a rustls client on the bench's TCP socket.
mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use net::proto::{Request, Response};
use net::tls::{RandomFn, TlsServer};
use net::{Limits, NetConfig, Server};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use smoltcp::time::Duration;
use support::{Bench, CLIENT_IP, INFO, PORT, SERVER_IP, SERVER_MAC};

fn fill(buf: &mut [u8]) -> bool {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    for chunk in buf.chunks_mut(32) {
        let block = Sha256::digest(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    true
}
static RANDOM: RandomFn = RandomFn(fill);

#[derive(Debug)]
struct AnyCert;
impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_bench() -> Bench {
    let mut bench = Bench::new();
    let config =
        NetConfig::parse(&format!("ip={SERVER_IP}/24 gw={CLIENT_IP} port={PORT}")).unwrap();
    let now = bench.now;
    let tls = TlsServer::new(&RANDOM).unwrap();
    bench.server = Server::with_tls(
        config,
        Limits::default(),
        SERVER_MAC,
        bench.server_device(),
        now,
        0x5eed,
        tls,
    )
    .unwrap();
    bench
}

fn rustls_client() -> ClientConnection {
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("a.invalid").unwrap()).unwrap()
}

/// Moves bytes between the rustls client and the bench client `index` for `steps` steps.
fn pump(
    bench: &mut Bench,
    index: usize,
    client: &mut ClientConnection,
    plaintext: &mut Vec<u8>,
    steps: usize,
) {
    for _ in 0..steps {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        bench.send(index, &out);
        bench.step();
        let inbox = std::mem::take(&mut bench.clients[index].inbox);
        let mut reader = &inbox[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).unwrap();
            client.process_new_packets().unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => plaintext.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
    }
}

#[test]
fn model_info_over_tls() {
    let mut bench = tls_bench();
    let index = bench.connect();
    let mut client = rustls_client();
    let mut plaintext = Vec::new();
    pump(&mut bench, index, &mut client, &mut plaintext, 50);
    assert!(!client.is_handshaking());
    for _ in 0..3 {
        let mut frame = Vec::new();
        Request::ModelInfo.emit(&mut frame).unwrap();
        client.writer().write_all(&frame).unwrap();
    }
    pump(&mut bench, index, &mut client, &mut plaintext, 50);
    let mut decoder = net::frame::FrameDecoder::new();
    let mut rest = &plaintext[..];
    let mut responses = Vec::new();
    while !rest.is_empty() {
        let taken = decoder.push(rest).unwrap();
        rest = &rest[taken..];
        if let Some(body) = decoder.frame() {
            responses.push(Response::parse(body).unwrap());
            decoder.consume();
        }
    }
    assert_eq!(responses, vec![Response::ModelInfo(INFO); 3]);
    assert_eq!(bench.server.counters().requests, 3);
}

#[test]
fn plaintext_frame_on_a_tls_server_gets_an_alert_and_close() {
    let mut bench = tls_bench();
    let index = bench.connect();
    bench.send_request(index);
    bench.close(index);
    assert!(bench.run_until(Duration::from_secs(3), |b| b.is_finished(index)));
    let inbox = &bench.clients[index].inbox;
    assert_eq!(inbox[..5], [0x15, 0x03, 0x03, 0x00, 0x02], "{inbox:02x?}");
    assert_eq!(inbox[5], 2);
    assert_eq!(bench.server.counters().tls_failures, 1);
    assert_eq!(bench.server.counters().requests, 0);
    bench.await_idle_server(Duration::from_secs(2));
}
