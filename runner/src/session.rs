//! Sessions with the appliance: one TLS 1.3 connection (rustls with std, ring provider), the channel binding a
//! quote must carry, and the type-state that lets a prompt out only on a verified session (DESIGN §4, §5;
//! RFC 8446 §4.4.3 CertificateVerify, §7.5 exporters; wire types `net::proto`, frames `net::frame`).
//!
//! The appliance's certificate is self-signed with a key generated at boot, so no certificate authority can
//! vouch for it. The handshake therefore accepts any certificate, but still checks the CertificateVerify
//! signature with the certificate's key (so the peer holds the private key of the SubjectPublicKeyInfo it
//! shows), and remembers that SubjectPublicKeyInfo. Trust comes only from attestation: the quote's extraData
//! must be `qualifying_data(nonce, binding)`, where the binding is SHA-256 of that SubjectPublicKeyInfo and
//! this session's exporter value. A quote made for another session or relayed from another appliance fails.
//!
//! Type-state: [`UnverifiedSession`] can ask for model information and run the attestation exchange;
//! [`UnverifiedSession::verify`] consumes it and, only when every check of DESIGN §4 passes, returns a
//! [`VerifiedSession`]. `generate` exists only on [`VerifiedSession`], and there is no other way to make
//! one, so a prompt cannot be sent on an unverified connection: code that tries does not compile. The
//! requests an unverified session can send are [`AttestationRequest`]s, a type with no prompt in it.
//!
//! This does not compile (the doctest checks it):
//!
//! ```compile_fail
//! fn leak(session: &mut runner::session::UnverifiedSession, prompt: net::proto::GenerateRequest) {
//!     let _ = session.generate(prompt);
//! }
//! ```
//!
//! while the same call on a verified session does (the pair makes sure the first fails for the right reason):
//!
//! ```
//! fn ask(session: &mut runner::session::VerifiedSession, prompt: net::proto::GenerateRequest) {
//!     let _ = session.generate(prompt);
//! }
//! ```

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use net::frame::{self, HEADER_LEN};
use net::proto::{
    ChannelBinding, Done, ErrorCode, GenerateRequest, ModelInfo, Request, Response, Token,
};
use net::tls::{ATTESTATION_EXPORTER_LABEL, ATTESTATION_EXPORTER_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest as _, Sha256};
use x509_cert::der::{Decode as _, Encode as _};

use crate::manifest::Manifest;
use crate::verify::{Report, TrustAnchors, VerifyOptions};

/// The name the client sends in SNI. The certificate's names are never checked (trust comes from the quote),
/// and `.invalid` (RFC 6761 §6.4) can never name a real host.
pub const SERVER_NAME: &str = "cloister.invalid";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How often a blocked read wakes up to look at a cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

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
        write!(formatter, "{advice} (appliance error {:?})", self.0)
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
/// [`VerifiedSession`] turns such a connection into one that may carry a prompt; tests that speak raw TLS to the
/// appliance use this configuration too.
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
pub(crate) struct Channel {
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
    fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<Self> {
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

    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    pub(crate) fn binding(&self) -> ChannelBinding {
        self.binding
    }

    pub(crate) fn handshake_duration(&self) -> Duration {
        self.handshake
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request as one frame inside TLS.
    pub(crate) fn send(&mut self, request: &Request) -> Result<()> {
        if self.desynchronized {
            bail!("a generation on this session was abandoned mid-stream; open a new session");
        }
        let mut bytes = Vec::new();
        request
            .emit(&mut bytes)
            .map_err(|error| anyhow!("cannot frame the request: {error:?}"))?;
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
            .map_err(|error| anyhow!("the appliance sent a bad frame header: {error:?}"))?;
        let Some(body) = self.inbound.get(HEADER_LEN..HEADER_LEN + length) else {
            return Ok(None);
        };
        let response = Response::parse(body)
            .map_err(|error| anyhow!("the appliance sent a malformed response ({error:?})"))?;
        self.inbound.drain(..HEADER_LEN + length);
        Ok(Some(response))
    }

    /// The next response, waiting at most about `patience` for more bytes; `None` when none is complete yet.
    pub(crate) fn poll(&mut self, patience: Duration) -> Result<Option<Response>> {
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
    pub(crate) fn receive(&mut self, what: &str) -> Result<Response> {
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
    pub(crate) fn exchange(&mut self, request: &Request, what: &str) -> Result<Response> {
        self.send(request)?;
        self.receive(what)
    }

    fn model_info(&mut self) -> Result<ModelInfo> {
        match self.exchange(&Request::ModelInfo, "the model-info request")? {
            Response::ModelInfo(info) => Ok(info),
            Response::Error(code) => Err(ApplianceError(code).into()),
            other => bail!("the appliance answered a model-info request with {other:?}"),
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

/// A request allowed before verification: none of them carries a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestationRequest {
    /// `Request::ModelInfo`.
    ModelInfo,
    /// `Request::Attest`.
    Attest {
        /// The nonce.
        nonce: [u8; 32],
        /// The PCRs to quote.
        pcr_mask: u32,
    },
    /// `Request::ActivateCredential`.
    ActivateCredential {
        /// TPM2B_ID_OBJECT contents.
        credential_blob: Vec<u8>,
        /// TPM2B_ENCRYPTED_SECRET contents.
        secret: Vec<u8>,
    },
}

impl From<AttestationRequest> for Request {
    fn from(request: AttestationRequest) -> Self {
        match request {
            AttestationRequest::ModelInfo => Request::ModelInfo,
            AttestationRequest::Attest { nonce, pcr_mask } => Request::Attest { nonce, pcr_mask },
            AttestationRequest::ActivateCredential {
                credential_blob,
                secret,
            } => Request::ActivateCredential {
                credential_blob,
                secret,
            },
        }
    }
}

/// A TLS session whose appliance has not been verified yet. It cannot send a prompt.
pub struct UnverifiedSession {
    channel: Channel,
}

impl UnverifiedSession {
    /// Connects to `endpoint` and completes the TLS 1.3 handshake. `timeout` bounds the connection and every
    /// later wait for an answer.
    pub fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<Self> {
        Ok(Self {
            channel: Channel::connect(endpoint, timeout)?,
        })
    }

    /// The appliance's address.
    pub fn endpoint(&self) -> SocketAddr {
        self.channel.endpoint
    }

    /// What a quote made for this session must bind: the server key's SPKI hash and this session's exporter.
    pub fn binding(&self) -> ChannelBinding {
        self.channel.binding
    }

    /// The server certificate's SubjectPublicKeyInfo (DER).
    pub fn server_spki(&self) -> &[u8] {
        &self.channel.spki
    }

    /// Time from the TCP connect to the end of the TLS handshake.
    pub fn handshake_duration(&self) -> Duration {
        self.channel.handshake
    }

    /// A handle on the list of requests this session sends (it stays readable after `verify` consumed the
    /// session).
    pub fn transcript(&self) -> Transcript {
        self.channel.transcript.clone()
    }

    /// Asks for the length and SHA-256 of the model the appliance booted with (unverified: the quote, not
    /// this answer, is what proves the model).
    pub fn model_info(&mut self) -> Result<ModelInfo> {
        self.channel.model_info()
    }

    /// Sends one pre-verification request and returns the appliance's answer as it is (for tools and tests
    /// that drive the attestation exchange themselves, e.g. a relay).
    pub fn exchange(&mut self, request: AttestationRequest) -> Result<Response> {
        self.channel.exchange(&request.into(), "the request")
    }

    /// Attests the appliance on this session (fresh nonce, every check of DESIGN §4 including the channel
    /// binding, credential activation) and, only if all pass, returns the verified session and the report.
    ///
    /// # Errors
    ///
    /// A failed check is an error whose root cause is a [`crate::verify::VerifyError`] naming it
    /// (`error.downcast_ref::<VerifyError>()`); the session is closed and nothing else is sent.
    pub fn verify(
        mut self,
        manifest: &Manifest,
        trust: &TrustAnchors,
        options: &VerifyOptions,
    ) -> Result<(VerifiedSession, Report)> {
        let report =
            crate::verify::remote::verify_channel(&mut self.channel, manifest, trust, options)?;
        Ok((
            VerifiedSession {
                channel: self.channel,
                report: report.clone(),
            },
            report,
        ))
    }
}

/// A TLS session whose far end passed attestation against a manifest: the only place a prompt can be sent.
pub struct VerifiedSession {
    channel: Channel,
    report: Report,
}

/// One event of a generation stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A generated token.
    Token(Token),
    /// The stream ended normally; usage and timing.
    Done(Done),
    /// The stream ended because of a cancel.
    Cancelled,
}

/// How a completed generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Normally, with the appliance's usage and timing.
    Done(Done),
    /// By a cancel.
    Cancelled,
}

/// A whole generation as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The token frames, in order.
    pub tokens: Vec<Token>,
    /// Their text, concatenated.
    pub text: String,
    /// How it ended.
    pub ending: Ending,
    /// From sending the request to the last frame (client clock).
    pub elapsed: Duration,
    /// From sending the request to the first token frame (client clock).
    pub first_token: Option<Duration>,
}

/// A running generation on a verified session. Read it to the end: dropping it early leaves its remaining
/// frames on the connection, and the session refuses further use.
pub struct Generation<'a> {
    channel: &'a mut Channel,
    cancel_sent: bool,
    ended: bool,
}

impl VerifiedSession {
    /// The report of the verification that made this session.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The appliance's address.
    pub fn endpoint(&self) -> SocketAddr {
        self.channel.endpoint
    }

    /// The channel binding the verified quote carried.
    pub fn binding(&self) -> ChannelBinding {
        self.channel.binding
    }

    /// The list of requests this session sent.
    pub fn transcript(&self) -> Transcript {
        self.channel.transcript.clone()
    }

    /// Asks for the model's length and SHA-256.
    pub fn model_info(&mut self) -> Result<ModelInfo> {
        self.channel.model_info()
    }

    /// Sends the prompt and returns the stream of its answer.
    pub fn generate(&mut self, request: GenerateRequest) -> Result<Generation<'_>> {
        Generation::start(&mut self.channel, request)
    }

    /// Generates to the end, calling `on_token` for each token as it arrives. When `cancel` becomes true a
    /// `Cancel` goes out once and the tokens that came back are returned with [`Ending::Cancelled`]. Waits at
    /// most the session's timeout for each frame.
    ///
    /// # Errors
    ///
    /// An appliance error (Busy, ContextExceeded, ...) is an [`ApplianceError`] root cause.
    pub fn complete(
        &mut self,
        request: GenerateRequest,
        cancel: Option<&AtomicBool>,
        on_token: impl FnMut(&Token),
    ) -> Result<Completion> {
        complete(&mut self.channel, request, cancel, on_token)
    }
}

/// [`VerifiedSession::complete`] on a channel (private: only a verified session reaches it).
fn complete(
    channel: &mut Channel,
    request: GenerateRequest,
    cancel: Option<&AtomicBool>,
    mut on_token: impl FnMut(&Token),
) -> Result<Completion> {
    let timeout = channel.timeout();
    let started = Instant::now();
    let mut generation = Generation::start(channel, request)?;
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut first_token = None;
    let mut last_frame = Instant::now();
    loop {
        if !generation.cancel_sent && cancel.is_some_and(|flag| flag.load(Ordering::Acquire)) {
            generation.cancel()?;
        }
        if last_frame.elapsed() > timeout {
            bail!(
                "the appliance sent nothing for {} s in the middle of a generation",
                timeout.as_secs()
            );
        }
        let Some(event) = generation.next_event(CANCEL_POLL)? else {
            continue;
        };
        last_frame = Instant::now();
        let ending = match event {
            StreamEvent::Token(token) => {
                first_token.get_or_insert_with(|| started.elapsed());
                on_token(&token);
                text.push_str(&token.text);
                tokens.push(token);
                continue;
            }
            StreamEvent::Done(done) => Ending::Done(done),
            StreamEvent::Cancelled => Ending::Cancelled,
        };
        return Ok(Completion {
            tokens,
            text,
            ending,
            elapsed: started.elapsed(),
            first_token,
        });
    }
}

impl<'a> Generation<'a> {
    fn start(channel: &'a mut Channel, request: GenerateRequest) -> Result<Self> {
        channel.send(&Request::Generate(request))?;
        Ok(Self {
            channel,
            cancel_sent: false,
            ended: false,
        })
    }

    /// The next event, waiting at most about `patience`; `None` when nothing complete arrived.
    ///
    /// # Errors
    ///
    /// An appliance error ends the stream and is an [`ApplianceError`] root cause; reading past the end
    /// is an error too.
    pub fn next_event(&mut self, patience: Duration) -> Result<Option<StreamEvent>> {
        if self.ended {
            bail!("the generation has already ended");
        }
        let Some(response) = self.channel.poll(patience)? else {
            return Ok(None);
        };
        let event = match response {
            Response::Token(token) => return Ok(Some(StreamEvent::Token(token))),
            Response::Done(done) => Ok(StreamEvent::Done(done)),
            Response::Error(ErrorCode::Cancelled) => Ok(StreamEvent::Cancelled),
            Response::Error(code) => Err(ApplianceError(code).into()),
            other => {
                self.channel.desynchronized = true;
                Err(anyhow!(
                    "the appliance answered a generate request with {other:?}"
                ))
            }
        };
        self.ended = true;
        event.map(Some)
    }

    /// Asks the appliance to stop; the stream then ends with [`StreamEvent::Cancelled`] (or `Done`, when the
    /// last token was already on its way). Sent at most once.
    pub fn cancel(&mut self) -> Result<()> {
        if !self.cancel_sent && !self.ended {
            self.channel.send(&Request::Cancel)?;
            self.cancel_sent = true;
        }
        Ok(())
    }

    /// True once `Done`, `Cancelled` or an error ended the stream.
    pub fn is_ended(&self) -> bool {
        self.ended
    }
}

impl Drop for Generation<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.channel.desynchronized = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::{Loopback, Reply};
    use net::proto::{FinishReason, Prompt, Sampling};

    fn request(max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            prompt: Prompt::Text("hello".to_string()),
            max_tokens,
            sampling: Sampling::GREEDY,
            stop: Vec::new(),
        }
    }

    fn token(id: u32, text: &str) -> Response {
        Response::Token(Token {
            id,
            text: text.to_string(),
        })
    }

    fn done(generated_tokens: u32) -> Response {
        Response::Done(Done {
            reason: FinishReason::Length,
            prompt_tokens: 2,
            generated_tokens,
            prefill_us: 10,
            decode_us: 20,
        })
    }

    /// A loopback answering every Generate with `frames`, one per `interval`.
    fn streaming(frames: Vec<Response>, interval: Duration) -> Loopback {
        Loopback::start(1, move |request, _| match request {
            Request::Generate(_) => Reply::Stream {
                frames: frames.clone(),
                interval,
            },
            _ => Reply::Respond(Response::Error(ErrorCode::BadRequest)),
        })
        .unwrap()
    }

    #[test]
    fn a_generation_streams_tokens_then_done() {
        let server = streaming(
            vec![token(1, "Hel"), token(2, ""), token(3, "lo"), done(3)],
            Duration::from_millis(5),
        );
        let mut channel = Channel::connect(server.address(), Duration::from_secs(10)).unwrap();
        let mut seen = Vec::new();
        let completion =
            complete(&mut channel, request(3), None, |token| seen.push(token.id)).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(completion.text, "Hello");
        assert!(matches!(completion.ending, Ending::Done(done) if done.generated_tokens == 3));
        assert!(completion.first_token.is_some());
        // The session stays in step: the next answer is the next request's (the stand-in refuses model info).
        let error = channel.model_info().unwrap_err();
        assert_eq!(
            error.downcast_ref::<ApplianceError>(),
            Some(&ApplianceError(ErrorCode::BadRequest))
        );
        drop(channel);
        let served = server.join().unwrap();
        assert_eq!(served.requests[0], Request::Generate(request(3)));
        assert!(served.failures.is_empty(), "{:?}", served.failures);
    }

    #[test]
    fn cancel_sends_cancel_and_returns_what_came_back() {
        let frames = (0..200)
            .map(|id| token(id, "x"))
            .chain([done(200)])
            .collect();
        let server = streaming(frames, Duration::from_millis(20));
        let mut channel = Channel::connect(server.address(), Duration::from_secs(10)).unwrap();
        let flag = AtomicBool::new(false);
        let mut count = 0;
        let completion = complete(&mut channel, request(200), Some(&flag), |_| {
            count += 1;
            if count == 3 {
                flag.store(true, Ordering::Release);
            }
        })
        .unwrap();
        assert_eq!(completion.ending, Ending::Cancelled);
        assert!(
            (3..10).contains(&completion.tokens.len()),
            "{} tokens came back",
            completion.tokens.len()
        );
        assert_eq!(
            channel.transcript.kinds(),
            [RequestKind::Generate, RequestKind::Cancel]
        );
        drop(channel);
        server.join().unwrap();
    }

    #[test]
    fn appliance_errors_are_typed_and_end_the_stream() {
        for code in [
            ErrorCode::Busy,
            ErrorCode::ContextExceeded,
            ErrorCode::InvalidToken,
        ] {
            let server = streaming(vec![Response::Error(code)], Duration::ZERO);
            let mut channel = Channel::connect(server.address(), Duration::from_secs(10)).unwrap();
            let error = complete(&mut channel, request(4), None, |_| {}).unwrap_err();
            assert_eq!(
                error.downcast_ref::<ApplianceError>(),
                Some(&ApplianceError(code))
            );
            drop(channel);
            server.join().unwrap();
        }
        let text = ApplianceError(ErrorCode::ContextExceeded).to_string();
        assert!(text.contains("--max-tokens"), "{text}");
    }

    #[test]
    fn an_abandoned_stream_makes_the_session_refuse_further_use() {
        let server = streaming(vec![token(1, "a"), token(2, "b"), done(2)], Duration::ZERO);
        let mut channel = Channel::connect(server.address(), Duration::from_secs(10)).unwrap();
        {
            let mut generation = Generation::start(&mut channel, request(2)).unwrap();
            let first = loop {
                if let Some(event) = generation.next_event(Duration::from_secs(1)).unwrap() {
                    break event;
                }
            };
            assert!(matches!(first, StreamEvent::Token(_)));
        }
        let error = channel.send(&Request::ModelInfo).unwrap_err();
        assert!(error.to_string().contains("abandoned"), "{error}");
        drop(channel);
        server.join().unwrap();
    }

    #[test]
    fn an_unexpected_answer_is_an_error_not_a_token() {
        let server = streaming(
            vec![Response::ModelInfo(ModelInfo {
                length: 1,
                sha256: [0; 32],
            })],
            Duration::ZERO,
        );
        let mut channel = Channel::connect(server.address(), Duration::from_secs(10)).unwrap();
        let error = complete(&mut channel, request(1), None, |_| {}).unwrap_err();
        assert!(
            error.to_string().contains("answered a generate request"),
            "{error}"
        );
        drop(channel);
        server.join().unwrap();
    }
}
