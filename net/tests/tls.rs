//! `net::tls` against rustls' own std client (ring provider, an implementation we did not assemble) over
//! in-memory byte pipes: handshakes with both suites, data both ways, the exporter binding, the certificate,
//! and bad input (garbage, truncation, tampering, random bytes) ending in typed errors, never a panic.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use net::tls::{
    ExporterError, RandomFn, ServerIdentity, TlsError, TlsServer, TlsSession,
    ATTESTATION_EXPORTER_LABEL, MAX_INCOMING, PLAINTEXT_HIGH_WATER,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, NamedGroup, SignatureScheme,
    SupportedCipherSuite,
};
use sha2::{Digest, Sha256};

/// A deterministic test DRBG: SHA-256 of a global counter (STYLE 3: seeded randomness in tests).
fn test_fill(buf: &mut [u8]) -> bool {
    static COUNTER: AtomicU64 = AtomicU64::new(0x5eed);
    for chunk in buf.chunks_mut(32) {
        let block = Sha256::digest(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    true
}

static RANDOM: RandomFn = RandomFn(test_fill);

fn server() -> TlsServer {
    TlsServer::new(&RANDOM).expect("server")
}

/// Accepts whatever certificate the server shows (the real client accepts it only through attestation),
/// remembers it, and checks the handshake signature with ring against the certificate's key.
#[derive(Debug)]
struct RecordingVerifier {
    seen: Mutex<Option<Vec<u8>>>,
    provider: CryptoProvider,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not expected".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Client {
    connection: ClientConnection,
    verifier: Arc<RecordingVerifier>,
}

fn client_with(
    suites: Option<Vec<SupportedCipherSuite>>,
    groups: Option<Vec<NamedGroup>>,
) -> Client {
    let mut provider = ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    if let Some(groups) = groups {
        provider
            .kx_groups
            .retain(|group| groups.contains(&group.name()));
    }
    let verifier = Arc::new(RecordingVerifier {
        seen: Mutex::new(None),
        provider: ring::default_provider(),
    });
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from("appliance.invalid").unwrap();
    Client {
        connection: ClientConnection::new(Arc::new(config), name).unwrap(),
        verifier,
    }
}

fn new_client() -> Client {
    client_with(None, None)
}

/// Everything the client wants to send.
fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).unwrap();
    }
    bytes
}

/// Feeds all of `bytes` to the server, reading plaintext away whenever it pauses. Returns the plaintext.
fn feed_all(server: &mut TlsSession, mut bytes: &[u8]) -> Result<Vec<u8>, TlsError> {
    let mut plaintext = Vec::new();
    while !bytes.is_empty() {
        let taken = server.feed_incoming(bytes)?;
        plaintext.extend_from_slice(server.plaintext());
        let read = server.plaintext().len();
        server.consume_plaintext(read);
        assert!(
            taken > 0 || read > 0,
            "the session neither took input nor produced plaintext"
        );
        bytes = &bytes[taken..];
    }
    // Reading may let buffered records through; drain until nothing more comes.
    while !server.plaintext().is_empty() {
        plaintext.extend_from_slice(server.plaintext());
        let read = server.plaintext().len();
        server.consume_plaintext(read);
    }
    Ok(plaintext)
}

/// Delivers the server's pending records to the client and processes them; returns the plaintext the
/// client received (read as it arrives: rustls' client buffers only 16 KiB of it).
fn to_client(
    server: &mut TlsSession,
    client: &mut ClientConnection,
) -> Result<Vec<u8>, rustls::Error> {
    let mut records = Vec::new();
    server.take_outgoing(&mut records);
    let mut reader = &records[..];
    let mut plaintext = Vec::new();
    while !reader.is_empty() {
        client.read_tls(&mut reader).unwrap();
        client.process_new_packets()?;
        plaintext.extend(client_read(client));
    }
    Ok(plaintext)
}

/// Runs the handshake to completion on both sides; returns any application data the client received.
fn handshake(server: &mut TlsSession, client: &mut ClientConnection) -> Vec<u8> {
    let mut received = Vec::new();
    for _ in 0..8 {
        let bytes = client_bytes(client);
        assert!(feed_all(server, &bytes)
            .expect("server handshake")
            .is_empty());
        received.extend(to_client(server, client).expect("client handshake"));
        if !client.is_handshaking() && !server.is_handshaking() {
            return received;
        }
    }
    panic!("handshake did not complete");
}

/// Reads what the client has received so far.
fn client_read(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.reader().read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(error) => panic!("client read: {error}"),
        }
    }
}

fn exchange_data(server: &mut TlsSession, client: &mut Client) {
    let request = b"attest nonce=0123456789abcdef".repeat(3);
    client.connection.writer().write_all(&request).unwrap();
    let bytes = client_bytes(&mut client.connection);
    assert_eq!(feed_all(server, &bytes).unwrap(), request);

    let response: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    server.write_plaintext(&response).unwrap();
    assert_eq!(to_client(server, &mut client.connection).unwrap(), response);
}

fn client_exporter(client: &ClientConnection, label: &[u8], context: Option<&[u8]>) -> [u8; 32] {
    client
        .export_keying_material([0u8; 32], label, context)
        .unwrap()
}

#[test]
fn handshake_data_and_exporter_with_each_suite() {
    let server = server();
    for suite in [
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let mut session = server.session().unwrap();
        let mut client = client_with(Some(vec![suite]), None);
        assert!(session.is_handshaking());
        assert_eq!(session.attestation_exporter(), Err(ExporterError::NotReady));
        handshake(&mut session, &mut client.connection);
        assert_eq!(
            client.connection.negotiated_cipher_suite().unwrap().suite(),
            suite.suite()
        );
        assert_eq!(
            client
                .connection
                .negotiated_key_exchange_group()
                .unwrap()
                .name(),
            NamedGroup::X25519
        );
        assert_eq!(
            client.connection.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        exchange_data(&mut session, &mut client);

        let server_value = session.attestation_exporter().unwrap();
        assert_eq!(
            server_value,
            client_exporter(&client.connection, ATTESTATION_EXPORTER_LABEL, Some(b""))
        );
        // RFC 8446 §7.5: no context and an empty context are the same thing in TLS 1.3.
        assert_eq!(
            server_value,
            client_exporter(&client.connection, ATTESTATION_EXPORTER_LABEL, None)
        );
        let mut other = [0u8; 32];
        session
            .export_keying_material(&mut other, b"EXPORTER-other", b"some context")
            .unwrap();
        assert_eq!(
            other,
            client_exporter(&client.connection, b"EXPORTER-other", Some(b"some context"))
        );
        assert_ne!(other, server_value);
        let mut long = [0u8; 100];
        session
            .export_keying_material(&mut long, b"EXPORTER-long", b"")
            .unwrap();
        let client_long = client
            .connection
            .export_keying_material([0u8; 100], b"EXPORTER-long", Some(b""))
            .unwrap();
        assert_eq!(long, client_long);
    }
}

#[test]
fn exporter_is_fresh_per_session() {
    let server = server();
    let mut values = Vec::new();
    for _ in 0..3 {
        let mut session = server.session().unwrap();
        let mut client = new_client();
        handshake(&mut session, &mut client.connection);
        values.push(session.attestation_exporter().unwrap());
    }
    assert_ne!(values[0], values[1]);
    assert_ne!(values[1], values[2]);
    assert_ne!(values[0], values[2]);
}

/// Minimal DER reader for the test: (tag, header length, content length) at the start of `der`.
fn der_header(der: &[u8]) -> (u8, usize, usize) {
    let tag = der[0];
    let first = der[1] as usize;
    if first < 0x80 {
        return (tag, 2, first);
    }
    let count = first & 0x7f;
    let mut len = 0usize;
    for &byte in &der[2..2 + count] {
        len = (len << 8) | byte as usize;
    }
    (tag, 2 + count, len)
}

/// Splits a DER SEQUENCE into its top-level elements.
fn der_children(der: &[u8]) -> Vec<&[u8]> {
    let (_, header, len) = der_header(der);
    let mut body = &der[header..header + len];
    let mut children = Vec::new();
    while !body.is_empty() {
        let (_, header, len) = der_header(body);
        children.push(&body[..header + len]);
        body = &body[header + len..];
    }
    children
}

#[test]
fn certificate_is_self_signed_with_the_bound_key() {
    let server = server();
    let identity = server.identity();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    handshake(&mut session, &mut client.connection);

    let seen = client.verifier.seen.lock().unwrap().clone().unwrap();
    assert_eq!(seen, identity.certificate_der());

    // webpki (rustls' parser) reads the certificate and finds our SubjectPublicKeyInfo in it.
    let der = CertificateDer::from(identity.certificate_der().to_vec());
    let parsed = rustls::server::ParsedCertificate::try_from(&der).expect("webpki parses it");
    assert_eq!(
        parsed.subject_public_key_info().as_ref(),
        identity.spki_der()
    );
    assert_eq!(
        identity.spki_sha256(),
        <[u8; 32]>::from(Sha256::digest(identity.spki_der()))
    );

    // The self-signature verifies with ring: Certificate = SEQUENCE { tbs, algorithm, BIT STRING sig }.
    let parts = der_children(identity.certificate_der());
    assert_eq!(parts.len(), 3);
    let (tag, header, _) = der_header(parts[2]);
    assert_eq!(tag, 0x03);
    assert_eq!(parts[2][header], 0, "no unused bits");
    let signature = &parts[2][header + 1..];
    let point = &identity.spki_der()[identity.spki_der().len() - 65..];
    let ring_provider = ring::default_provider();
    let (_, algorithms) = ring_provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP256_SHA256)
        .unwrap();
    algorithms[0]
        .verify_signature(point, parts[0], signature)
        .expect("self-signature verifies");
    let mut tampered = parts[0].to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(algorithms[0]
        .verify_signature(point, &tampered, signature)
        .is_err());
    // Our own verification algorithm agrees with ring on both.
    use rustls::pki_types::SignatureVerificationAlgorithm;
    assert!(net::tls::ECDSA_P256_SHA256
        .verify_signature(point, parts[0], signature)
        .is_ok());
    assert!(net::tls::ECDSA_P256_SHA256
        .verify_signature(point, &tampered, signature)
        .is_err());
    assert!(net::tls::ECDSA_P256_SHA256
        .verify_signature(point, parts[0], &signature[1..])
        .is_err());
}

#[test]
fn each_boot_gets_a_new_key() {
    let first = ServerIdentity::generate(&RANDOM).unwrap();
    let second = ServerIdentity::generate(&RANDOM).unwrap();
    assert_ne!(first.spki_der(), second.spki_der());
    assert_ne!(first.spki_sha256(), second.spki_sha256());
}

#[test]
fn failing_random_source_is_a_typed_error() {
    static BROKEN: RandomFn = RandomFn(|_| false);
    assert_eq!(TlsServer::new(&BROKEN).err(), Some(TlsError::RandomFailed));
    // A server whose identity came from a good source still cannot handshake without randomness.
    let identity = ServerIdentity::generate(&RANDOM).unwrap();
    let server = TlsServer::with_identity(&BROKEN, identity).unwrap();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    let hello = client_bytes(&mut client.connection);
    assert_eq!(session.feed_incoming(&hello), Err(TlsError::RandomFailed));
}

#[test]
fn writes_before_the_handshake_completes_are_delivered_after_it() {
    let server = server();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    session.write_plaintext(b"early words").unwrap();
    session.write_plaintext(b" and more").unwrap();
    let mut received = handshake(&mut session, &mut client.connection);
    received.extend(to_client(&mut session, &mut client.connection).unwrap());
    assert_eq!(received, b"early words and more");
}

#[test]
fn close_notify_both_ways() {
    let server = server();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    handshake(&mut session, &mut client.connection);

    client.connection.writer().write_all(b"last words").unwrap();
    client.connection.send_close_notify();
    let bytes = client_bytes(&mut client.connection);
    assert_eq!(feed_all(&mut session, &bytes).unwrap(), b"last words");
    assert!(session.peer_closed());

    session.write_plaintext(b"goodbye").unwrap();
    session.close();
    assert!(session.close_sent());
    assert_eq!(session.write_plaintext(b"more"), Err(TlsError::Closed));
    assert_eq!(
        to_client(&mut session, &mut client.connection).unwrap(),
        b"goodbye"
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        client.connection.reader().read(&mut buf).unwrap(),
        0,
        "clean EOF"
    );
}

#[test]
fn a_client_that_does_not_read_is_held_back() {
    let server = server();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    handshake(&mut session, &mut client.connection);

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client.connection.set_buffer_limit(None);
    client.connection.writer().write_all(&data).unwrap();
    let bytes = client_bytes(&mut client.connection);
    // Without reading plaintext, the session stops taking input at a bounded amount.
    let mut offset = 0;
    loop {
        let taken = session.feed_incoming(&bytes[offset..]).unwrap();
        offset += taken;
        if taken == 0 {
            break;
        }
    }
    assert!(offset < bytes.len());
    assert!(session.plaintext().len() < PLAINTEXT_HIGH_WATER + (1 << 14) + 1);
    assert!(offset <= MAX_INCOMING + session.plaintext().len() + 2 * 1024);
    // Reading lets the rest through, intact.
    let mut received = session.plaintext().to_vec();
    let read = received.len();
    session.consume_plaintext(read);
    received.extend(feed_all(&mut session, &bytes[offset..]).unwrap());
    assert_eq!(received.len(), data.len());
    assert!(received == data, "the data arrived altered");
}

/// The alert record a session sent after a failure: (level, description) from an unprotected alert.
fn plain_alert(session: &mut TlsSession) -> (u8, u8) {
    let mut out = Vec::new();
    session.take_outgoing(&mut out);
    assert_eq!(out.len(), 7, "one unprotected alert record: {out:02x?}");
    assert_eq!(out[..5], [0x15, 0x03, 0x03, 0x00, 0x02]);
    (out[5], out[6])
}

#[test]
fn garbage_before_the_handshake_gets_an_alert() {
    let server = server();
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: appliance\r\n\r\n"[..],
        &[0u8; 64][..],
        &[0xff; 5][..],
        // A handshake record holding a ServerHello instead of a ClientHello.
        &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00][..],
        // A record version outside 0x03XX.
        &[0x16, 0x02, 0x00, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00][..],
        // A content type TLS does not have.
        &[0x63, 0x03, 0x03, 0x00, 0x01, 0x00][..],
    ] {
        let mut session = server.session().unwrap();
        let error = session.feed_incoming(garbage).unwrap_err();
        assert!(
            matches!(
                error,
                TlsError::InvalidMessage | TlsError::UnexpectedMessage | TlsError::PeerMisbehaved
            ),
            "{garbage:02x?}: {error:?}"
        );
        assert_eq!(session.error(), Some(error));
        let (level, _description) = plain_alert(&mut session);
        assert_eq!(level, 2, "fatal");
        // The session stays failed and quiet.
        assert_eq!(session.feed_incoming(b"more"), Err(error));
        assert!(!session.has_outgoing());
        assert_eq!(session.write_plaintext(b"x"), Err(error));
    }
}

#[test]
fn a_record_over_the_maximum_is_refused_from_its_header() {
    let server = server();
    let mut session = server.session().unwrap();
    // RFC 8446 §5.1: a plaintext record longer than 2^14 is record_overflow.
    let error = session
        .feed_incoming(&[0x16, 0x03, 0x01, 0x48, 0x01])
        .unwrap_err();
    assert_eq!(error, TlsError::InvalidMessage);
    let (level, description) = plain_alert(&mut session);
    assert_eq!(level, 2);
    // RFC 8446 §5.1 names record_overflow (22); rustls answers decode_error (50). Either ends the session.
    assert!(matches!(description, 22 | 50), "{description}");
}

#[test]
fn peers_without_a_common_suite_or_group_are_refused() {
    let server = server();
    for mut client in [
        client_with(
            Some(vec![ring::cipher_suite::TLS13_AES_256_GCM_SHA384]),
            None,
        ),
        client_with(None, Some(vec![NamedGroup::secp384r1])),
    ] {
        let mut session = server.session().unwrap();
        let hello = client_bytes(&mut client.connection);
        assert_eq!(
            session.feed_incoming(&hello),
            Err(TlsError::PeerIncompatible)
        );
        let (level, description) = plain_alert(&mut session);
        assert_eq!((level, description), (2, 40), "fatal handshake_failure");
    }
}

#[test]
fn a_handshake_message_larger_than_the_buffer_is_refused() {
    let server = server();
    let mut session = server.session().unwrap();
    // A ClientHello announcing 60,000 bytes, sent as full 2^14-byte records: legal framing (RFC 8446 §5.1
    // lets handshake messages span records), but more than the session buffers.
    let mut stream = Vec::new();
    let mut body = vec![0x01, 0x00, 0xea, 0x60];
    body.resize(60_004, 0x42);
    for chunk in body.chunks(1 << 14) {
        stream.extend_from_slice(&[0x16, 0x03, 0x01]);
        stream.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        stream.extend_from_slice(chunk);
    }
    let mut offset = 0;
    let error = loop {
        match session.feed_incoming(&stream[offset..]) {
            Ok(taken) => {
                assert!(taken > 0, "stalled without an error at {offset}");
                offset += taken;
            }
            Err(error) => break error,
        }
    };
    assert!(offset <= MAX_INCOMING);
    assert!(
        matches!(error, TlsError::IncomingOverflow | TlsError::InvalidMessage),
        "{error:?}"
    );
}

#[test]
fn every_truncation_of_the_client_hello_waits_for_more() {
    let server = server();
    let mut client = new_client();
    let hello = client_bytes(&mut client.connection);
    for cut in 0..hello.len() {
        let mut session = server.session().unwrap();
        assert_eq!(session.feed_incoming(&hello[..cut]), Ok(cut));
        assert!(session.is_handshaking());
        assert!(
            !session.has_outgoing(),
            "no answer to a partial hello (cut {cut})"
        );
        assert_eq!(session.error(), None);
    }
    // Byte by byte, the same hello completes.
    let mut session = server.session().unwrap();
    for byte in &hello {
        assert_eq!(session.feed_incoming(std::slice::from_ref(byte)), Ok(1));
    }
    assert!(session.has_outgoing());
}

#[test]
fn truncated_and_tampered_application_records() {
    let server = server();
    let mut session = server.session().unwrap();
    let mut client = new_client();
    handshake(&mut session, &mut client.connection);
    client.connection.writer().write_all(b"a request").unwrap();
    let record = client_bytes(&mut client.connection);

    // Every proper prefix yields nothing and no error; the rest completes it.
    for cut in 0..record.len() {
        let mut fork_server = server.session().unwrap();
        let mut fork_client = new_client();
        handshake(&mut fork_server, &mut fork_client.connection);
        fork_client
            .connection
            .writer()
            .write_all(b"a request")
            .unwrap();
        let fork_record = client_bytes(&mut fork_client.connection);
        assert_eq!(fork_server.feed_incoming(&fork_record[..cut]), Ok(cut));
        assert!(fork_server.plaintext().is_empty());
        assert_eq!(
            fork_server.feed_incoming(&fork_record[cut..]),
            Ok(record.len() - cut)
        );
        assert_eq!(fork_server.plaintext(), b"a request");
    }

    // One flipped bit anywhere in the body fails authentication (bad_record_mac, sent encrypted).
    let mut tampered = record.clone();
    tampered[10] ^= 0x80;
    assert_eq!(
        session.feed_incoming(&tampered),
        Err(TlsError::DecryptFailed)
    );
    assert!(session.has_outgoing());
    assert_eq!(session.attestation_exporter(), Err(ExporterError::NotReady));
    to_client(&mut session, &mut client.connection).unwrap_err();
}

#[test]
fn client_alerts_are_reported() {
    let server = server();
    let mut session = server.session().unwrap();
    // A fatal handshake_failure alert as the first record.
    assert_eq!(
        session.feed_incoming(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]),
        Err(TlsError::AlertReceived(40))
    );
}

/// xorshift64*: the fuzz loop's seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `input` in random pieces; the session must answer each piece with `Ok` or a typed error, keep
/// its buffers bounded, and stay failed once failed.
fn feed_fuzzed(session: &mut TlsSession, input: &[u8], rng: &mut Rng) {
    let mut offset = 0;
    let mut failed = None;
    while offset < input.len() {
        let piece = 1 + rng.below(input.len() - offset);
        match session.feed_incoming(&input[offset..offset + piece]) {
            Ok(taken) => {
                assert!(failed.is_none(), "a failed session accepted input");
                assert!(taken <= piece);
                let read = session.plaintext().len();
                session.consume_plaintext(read);
                offset += taken.max(1);
            }
            Err(error) => {
                assert_eq!(session.error(), Some(error));
                if let Some(previous) = failed {
                    assert_eq!(previous, error);
                }
                failed = Some(error);
                offset += piece;
            }
        }
        let mut out = Vec::new();
        session.take_outgoing(&mut out);
    }
}

#[test]
fn random_bytes_never_panic() {
    let server = server();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..400 {
        let mut session = server.session().unwrap();
        let len = rng.below(3000);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half the time, start with a plausible handshake record header so the fuzz gets past byte one.
        if rng.below(2) == 0 && len >= 5 {
            input[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        }
        feed_fuzzed(&mut session, &input, &mut rng);
    }
}

#[test]
fn mutated_client_hellos_never_panic() {
    let server = server();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut client = new_client();
    let hello = client_bytes(&mut client.connection);
    for _ in 0..400 {
        let mut input = hello.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] ^= 1 << rng.below(8),
                1 => input[at] = rng.next() as u8,
                _ => input.truncate(at),
            }
            if input.is_empty() {
                break;
            }
        }
        let mut session = server.session().unwrap();
        feed_fuzzed(&mut session, &input, &mut rng);
    }
}

#[test]
fn random_records_after_the_handshake_never_panic() {
    let server = server();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..40 {
        let mut session = server.session().unwrap();
        let mut client = new_client();
        handshake(&mut session, &mut client.connection);
        let len = rng.below(2000);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 5 {
            // An application-data record header with a random length.
            input[..3].copy_from_slice(&[0x17, 0x03, 0x03]);
        }
        feed_fuzzed(&mut session, &input, &mut rng);
    }
}
