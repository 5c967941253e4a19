//! One TLS 1.3 connection to the appliance carrying protocol frames (rustls with std, ring provider), the channel
//! binding a quote must carry, and the record of what was sent; both session states of [`super`] wrap it
//! (docs/ARCHITECTURE.md §4 "The attestation exchange", §5; RFC 8446 §4.4.3 CertificateVerify, §7.5 exporters;
//! wire types `net::proto`, frames `net::frame`).
//!
//! The handshake accepts any certificate that holds a key, checks its CertificateVerify signature and remembers its
//! SubjectPublicKeyInfo; why that is enough, and where trust comes from, is in [`super`]'s documentation.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use net::frame::{self, HEADER_LEN};
use net::proto::{ChannelBinding, ErrorCode, ModelInfo, Request, Response};
use net::tls::{ATTESTATION_EXPORTER_LABEL, ATTESTATION_EXPORTER_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest as _, Sha256};
use x509_cert::der::{Decode as _, Encode as _};

/// The name the client sends in SNI. The certificate's names are never checked (trust comes from the quote),
/// and `.invalid` (RFC 6761 §6.4) can never name a real host.
pub const SERVER_NAME: &str = "cloister.invalid";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// An error the appliance reported in a `Response::Error` frame, with what a person should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplianceError(pub ErrorCode);

impl std::fmt::Display for ApplianceError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let advice = match self.0 {
            ErrorCode::Busy => {
                "the appliance is busy: every generation slot is in use; try again in a moment"
            }
            ErrorCode::ContextExceeded => {
                "the prompt plus the tokens to generate does not fit the model's context: shorten the \
                 prompt or lower --max-tokens"
            }
            ErrorCode::InvalidToken => "a prompt token id is outside the model's vocabulary",
            ErrorCode::Cancelled => "the generation was cancelled",
            ErrorCode::Unbound => {
                "the appliance needs this request to arrive over TLS (it has no channel binding for it)"
            }
            ErrorCode::BadFrame => {
                "the appliance could not decode the request: do client and appliance come from the same \
                 build?"
            }
            ErrorCode::TooLarge => {
                "the request is larger than the appliance's 64 KiB frame limit: shorten the prompt"
            }
            ErrorCode::Timeout => "the appliance closed the session after it waited too long for us",
            ErrorCode::BadRequest => "the appliance refused the request's arguments",
            ErrorCode::TpmFailure => "the appliance's TPM failed to carry out the request",
        };
        write!(formatter, "{advice} (appliance error: {})", self.0.name())
    }
}

impl std::error::Error for ApplianceError {}

/// What the client sent: one entry per request, in order (to show, e.g., that no prompt left before
/// verification passed).
#[derive(Clone, Debug, Default)]
pub struct Transcript(Arc<Mutex<Vec<Sent>>>);

/// One request as it went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Which request.
    pub kind: RequestKind,
    /// Bytes of its frame (header included), before TLS.
    pub frame_bytes: usize,
}

/// The kinds of [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `Request::ModelInfo`.
    ModelInfo,
    /// `Request::Attest`.
    Attest,
    /// `Request::ActivateCredential`.
    ActivateCredential,
    /// `Request::Generate`: carries a prompt.
    Generate,
    /// `Request::Cancel`.
    Cancel,
}

impl RequestKind {
    fn of(request: &Request) -> Self {
        match request {
            Request::ModelInfo => Self::ModelInfo,
            Request::Attest { .. } => Self::Attest,
            Request::ActivateCredential { .. } => Self::ActivateCredential,
            Request::Generate(_) => Self::Generate,
            Request::Cancel => Self::Cancel,
        }
    }
}

impl Transcript {
    /// Every request sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.0.lock().map(|sent| sent.clone()).unwrap_or_default()
    }

    /// The kinds of the requests sent so far.
    pub fn kinds(&self) -> Vec<RequestKind> {
        self.sent().iter().map(|sent| sent.kind).collect()
    }

    fn record(&self, sent: Sent) {
        if let Ok(mut log) = self.0.lock() {
            log.push(sent);
        }
    }
}

/// Accepts any server certificate for the handshake, but verifies the handshake signature under its key
/// (RFC 8446 §4.4.3) with ring's algorithms. Trust in the key comes later, from the quote's channel binding.
#[derive(Debug)]
struct AttestedKeyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AttestedKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Names, dates and issuer carry no trust here; the certificate must still hold a key we can bind.
        subject_public_key_info(end_entity)
            .map(|_| ServerCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client offers TLS 1.3 only (the exporter binding is defined for it), so this is unreachable;
        // refuse rather than accept should that ever change.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The DER SubjectPublicKeyInfo of a DER certificate (RFC 5280 §4.1.2.7), re-encoded from a strict DER parse,
/// so it is byte-for-byte the certificate's own.
pub fn subject_public_key_info(certificate: &[u8]) -> Result<Vec<u8>> {
    let parsed = x509_cert::Certificate::from_der(certificate)
        .context("the server's certificate is not a DER X.509 certificate")?;
    parsed
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("cannot encode the certificate's SubjectPublicKeyInfo")
}

/// The TLS configuration of every client connection before attestation: TLS 1.3 only, any certificate that holds a
/// key, its handshake signature checked ([`AttestedKeyVerifier`]), no resumption and no early data. Only a
/// [`super::VerifiedSession`] turns such a connection into one that may carry a prompt. Because it trusts any key, it
/// stays inside the session: outside this crate only tests reach it, through the `test-support` feature, to speak
/// raw TLS to the appliance.
pub fn handshake_config() -> Result<Arc<ClientConfig>> {
    let provider = ring::default_provider();
    let verifier = Arc::new(AttestedKeyVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("rustls refuses a TLS 1.3-only configuration")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Every session must run a full handshake: its exporter is what the quote binds, and a resumed
    // session would carry trust over from an earlier verification (the appliance issues no tickets anyway).
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// One TLS connection carrying protocol frames; shared by both session states.
pub(super) struct Channel {
    stream: StreamOwned<ClientConnection, TcpStream>,
    endpoint: SocketAddr,
    binding: ChannelBinding,
    spki: Vec<u8>,
    handshake: Duration,
    timeout: Duration,
    /// Decrypted bytes that do not yet make a whole frame.
    inbound: Vec<u8>,
    transcript: Transcript,
    /// Set when a generation stream was abandoned mid-way: its frames would be read as answers.
    desynchronized: bool,
}

impl Channel {
    pub(super) fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<Self> {
        let started = Instant::now();
        let socket = TcpStream::connect_timeout(&endpoint, timeout)
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        socket.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|error| anyhow!("bad server name {SERVER_NAME}: {error}"))?;
        let connection = ClientConnection::new(handshake_config()?, name)
            .context("cannot start a TLS client session")?;
        let mut stream = StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).with_context(|| {
                format!(
                    "the TLS 1.3 handshake with {endpoint} failed; is a cloister appliance listening there?"
                )
            })?;
        }
        let handshake = started.elapsed();
        let certificate = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the appliance presented no certificate")?;
        let spki = subject_public_key_info(certificate)?;
        // RFC 8446 §7.5: TLS 1.3 treats "no context" and an empty context alike; the appliance passes an
        // empty one (net::tls::TlsSession::attestation_exporter), so do the same.
        let exporter = stream
            .conn
            .export_keying_material(
                [0u8; ATTESTATION_EXPORTER_LEN],
                ATTESTATION_EXPORTER_LABEL,
                Some(b""),
            )
            .context("cannot compute the TLS exporter value")?;
        Ok(Self {
            binding: ChannelBinding {
                spki_sha256: Sha256::digest(&spki).into(),
                exporter,
            },
            stream,
            endpoint,
            spki,
            handshake,
            timeout,
            inbound: Vec::new(),
            transcript: Transcript::default(),
            desynchronized: false,
        })
    }

    pub(super) fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    pub(super) fn binding(&self) -> ChannelBinding {
        self.binding
    }

    pub(super) fn handshake_duration(&self) -> Duration {
        self.handshake
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn spki(&self) -> &[u8] {
        &self.spki
    }

    pub(super) fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Called when a generation stream is abandoned mid-way: its remaining frames would be read as answers, so
    /// the channel refuses further use.
    pub(super) fn desynchronize(&mut self) {
        self.desynchronized = true;
    }

    /// Sends one request as one frame inside TLS.
    pub(super) fn send(&mut self, request: &Request) -> Result<()> {
        if self.desynchronized {
            bail!("a generation on this session was abandoned mid-stream; open a new session");
        }
        let mut bytes = Vec::new();
        request
            .emit(&mut bytes)
            .map_err(|error| anyhow!("cannot frame the request: {error}"))?;
        self.stream
            .write_all(&bytes)
            .and_then(|()| self.stream.flush())
            .with_context(|| format!("cannot send to {}", self.endpoint))?;
        self.transcript.record(Sent {
            kind: RequestKind::of(request),
            frame_bytes: bytes.len(),
        });
        Ok(())
    }

    /// A whole frame from `inbound`, if one is there. The announced length is checked before anything is
    /// sized from it.
    fn take_frame(&mut self) -> Result<Option<Response>> {
        let Some(header) = self.inbound.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let length = frame::parse_header(*header)
            .map_err(|error| anyhow!("the appliance sent a bad frame header: {error}"))?;
        let Some(body) = self.inbound.get(HEADER_LEN..HEADER_LEN + length) else {
            return Ok(None);
        };
        let response = Response::parse(body)
            .map_err(|error| anyhow!("the appliance sent a malformed response: {error}; do client and appliance come from the same build?"))?;
        self.inbound.drain(..HEADER_LEN + length);
        Ok(Some(response))
    }

    /// The next response, waiting at most about `patience` for more bytes; `None` when none is complete yet.
    pub(super) fn poll(&mut self, patience: Duration) -> Result<Option<Response>> {
        if self.desynchronized {
            bail!("a generation on this session was abandoned mid-stream; open a new session");
        }
        if let Some(response) = self.take_frame()? {
            return Ok(Some(response));
        }
        // A zero timeout means "block forever" to the socket; wait at least a millisecond instead.
        self.stream
            .sock
            .set_read_timeout(Some(patience.max(Duration::from_millis(1))))?;
        let mut buffer = [0u8; READ_CHUNK];
        let read = self.stream.read(&mut buffer);
        // Restore the session's timeout for the writes and handshake-level reads rustls may do.
        self.stream.sock.set_read_timeout(Some(self.timeout))?;
        match read {
            Ok(0) => Err(self.closed_error()),
            Ok(count) => {
                self.inbound.extend_from_slice(&buffer[..count]);
                self.take_frame()
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(None)
            }
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => Err(self.closed_error()),
            Err(error) => Err(error).with_context(|| format!("cannot read from {}", self.endpoint)),
        }
    }

    fn closed_error(&self) -> anyhow::Error {
        if self.inbound.is_empty() {
            anyhow!("the appliance at {} closed the connection", self.endpoint)
        } else {
            anyhow!(
                "the appliance at {} closed the connection in the middle of a frame",
                self.endpoint
            )
        }
    }

    /// The next response, waiting at most the session's timeout.
    pub(super) fn receive(&mut self, what: &str) -> Result<Response> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no answer to {what} from {} within {} s",
                    self.endpoint,
                    self.timeout.as_secs()
                );
            }
            if let Some(response) = self.poll(left)? {
                return Ok(response);
            }
        }
    }

    /// Sends `request` and returns the one answer.
    pub(super) fn exchange(&mut self, request: &Request, what: &str) -> Result<Response> {
        self.send(request)?;
        self.receive(what)
    }

    pub(super) fn model_info(&mut self) -> Result<ModelInfo> {
        match self.exchange(&Request::ModelInfo, "the model-info request")? {
            Response::ModelInfo(info) => Ok(info),
            Response::Error(code) => Err(ApplianceError(code).into()),
            other => bail!(
                "the appliance answered a model-info request with {}",
                other.name()
            ),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // Say goodbye properly (RFC 8446 §6.1 close_notify); the appliance frees the slot at once. Best effort:
        // the connection may already be gone.
        self.stream.conn.send_close_notify();
        while self.stream.conn.wants_write() {
            if self.stream.conn.write_tls(&mut self.stream.sock).is_err() {
                break;
            }
        }
    }
}
