//! The appliance's TLS 1.3 server session over any byte transport: rustls' unbuffered server driven from
//! plain byte buffers (RFC 8446; rustls 0.23 `unbuffered` API; docs/ARCHITECTURE.md §2, §4, §5).
//!
//! [`TlsServer`] is built once per boot (key pair, certificate, rustls configuration). Each accepted TCP
//! connection gets a [`TlsSession`]: the transport hands it received bytes with
//! [`TlsSession::feed_incoming`] and sends what [`TlsSession::take_outgoing`] yields; the protocol above reads
//! decrypted bytes with [`TlsSession::plaintext`] / [`TlsSession::consume_plaintext`] and writes with
//! [`TlsSession::write_plaintext`]. Nothing here touches a socket, a clock or an OS random source.
//!
//! Memory per session is bounded: at most [`MAX_INCOMING`] bytes of undecrypted input are buffered, and
//! decryption pauses while [`PLAINTEXT_HIGH_WATER`] bytes of plaintext wait to be read (so a client that
//! sends faster than the protocol reads is held back by TCP flow control). The only unbounded buffers are
//! what the caller itself writes and does not send.
//!
//! On a protocol error rustls queues a fatal alert (RFC 8446 §6.2); the session records a typed
//! [`TlsError`], puts the alert into the outgoing bytes and refuses all further input. The caller sends the
//! outgoing bytes and closes the transport.

use alloc::sync::Arc;
use alloc::vec::Vec;

use rustls::crypto::SecureRandom;
use rustls::server::{NoServerSessionStorage, ServerConfig, UnbufferedServerConnection};
use rustls::sign::SingleCertAndKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::cert::{IdentityError, ServerIdentity};
use super::exporter::{
    ExporterCapture, ExporterError, ATTESTATION_EXPORTER_LABEL, ATTESTATION_EXPORTER_LEN,
};
use super::provider::{crypto_provider, NoClock};

/// The most undecrypted bytes a session buffers: two maximal TLS 1.3 records (RFC 8446 §5.2: a 5-byte header
/// and at most 2^14 + 256 bytes of ciphertext), so a handshake message split across two records fits.
pub const MAX_INCOMING: usize = 2 * (5 + (1 << 14) + 256);

/// Decryption pauses once this many plaintext bytes wait to be read (they can exceed it by one record).
pub const PLAINTEXT_HIGH_WATER: usize = 1 << 14;

/// Why a session failed or refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// The peer's bytes are not well-formed TLS: garbage, a bad length, an oversized record, an unknown
    /// content type (RFC 8446 §5.1, §6.2 decode_error / record_overflow).
    InvalidMessage,
    /// A well-formed message arrived where the protocol does not allow it (unexpected_message).
    UnexpectedMessage,
    /// A protected record failed authentication (bad_record_mac).
    DecryptFailed,
    /// The peer shares nothing we need: TLS 1.3, our cipher suites, X25519, ECDSA P-256 with SHA-256
    /// (handshake_failure / protocol_version).
    PeerIncompatible,
    /// The peer broke a rule of the protocol (illegal_parameter and the like).
    PeerMisbehaved,
    /// The peer sent a fatal alert; the value is its AlertDescription (RFC 8446 §6).
    AlertReceived(u8),
    /// The random source failed.
    RandomFailed,
    /// [`MAX_INCOMING`] bytes are buffered and hold no complete message (a handshake message too large).
    IncomingOverflow,
    /// Data was written after the session was closed.
    Closed,
    /// rustls or a primitive failed in a way no peer input should cause.
    Internal,
}

impl TlsError {
    fn from_rustls(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::InvalidMessage(_) | E::PeerSentOversizedRecord => Self::InvalidMessage,
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                Self::UnexpectedMessage
            }
            E::DecryptError => Self::DecryptFailed,
            E::PeerIncompatible(_) => Self::PeerIncompatible,
            E::PeerMisbehaved(_) => Self::PeerMisbehaved,
            E::AlertReceived(description) => Self::AlertReceived(u8::from(*description)),
            E::FailedToGetRandomBytes => Self::RandomFailed,
            _ => Self::Internal,
        }
    }
}

impl From<IdentityError> for TlsError {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::Random => Self::RandomFailed,
            IdentityError::Signing => Self::Internal,
        }
    }
}

/// The appliance's TLS server: its identity and rustls configuration (TLS 1.3 only, no client
/// authentication, no session tickets, no early data).
#[derive(Debug)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    identity: ServerIdentity,
}

impl TlsServer {
    /// Generates a fresh key pair and certificate from `random` and builds the configuration. Call once per
    /// boot; `random` (the kernel's DRBG) also supplies every handshake's randomness.
    pub fn new(random: &'static dyn SecureRandom) -> Result<Self, TlsError> {
        let identity = ServerIdentity::generate(random)?;
        Self::with_identity(random, identity)
    }

    /// A server for an identity generated earlier.
    pub fn with_identity(
        random: &'static dyn SecureRandom,
        identity: ServerIdentity,
    ) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_details(
            Arc::new(crypto_provider(random)),
            Arc::new(NoClock),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| TlsError::Internal)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
        // No session cache exists without std, and resumption would skip the attestation binding's
        // fresh exporter anyway: issue no tickets (docs/ARCHITECTURE.md §2). Early data stays off (rustls' default 0).
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        // Already the no-std default; explicit so that host tests (where rustls has std and would default
        // to an in-memory cache) run the configuration the appliance runs.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(Self {
            config: Arc::new(config),
            identity,
        })
    }

    /// The key pair's public side and the certificate.
    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// A session for one newly accepted connection.
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        TlsSession::new(self)
    }
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Handshaking or exchanging data.
    Open,
    /// Both sides sent close_notify; nothing more happens.
    Closed,
    /// A fatal error; the alert (if any) is in the outgoing bytes.
    Failed(TlsError),
}

/// What one step of the record loop asks for next.
enum Step {
    /// Call rustls again.
    Continue,
    /// rustls needs more input (or nothing is left to do).
    Idle,
    /// rustls may encrypt application data; writes are flushed once the handshake is complete.
    Writable,
    Fail(TlsError),
}

/// One TLS connection, transport-agnostic.
pub struct TlsSession {
    connection: UnbufferedServerConnection,
    exporter: Arc<ExporterCapture>,
    status: Status,
    /// Received bytes rustls has not consumed yet (at most [`MAX_INCOMING`]).
    incoming: Vec<u8>,
    /// Records for the peer, not yet taken by the transport.
    outgoing: Vec<u8>,
    /// Decrypted bytes; `plaintext[plaintext_start..]` is unread.
    plaintext: Vec<u8>,
    plaintext_start: usize,
    /// Application data written before it could be encrypted (during the handshake).
    pending_write: Vec<u8>,
    /// `close` was called; close_notify goes out after the pending writes.
    close_requested: bool,
    close_notify_sent: bool,
    /// The peer's close_notify arrived: no plaintext follows what is buffered.
    peer_closed: bool,
}

impl core::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsSession")
            .field("status", &self.status)
            .field("handshaking", &self.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("plaintext", &self.plaintext().len())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A session awaiting the client's first flight.
    ///
    /// The server's configuration is copied with a key log of this session's own, which captures the
    /// exporter master secret for [`Self::export_keying_material`] (docs/ARCHITECTURE.md §4).
    pub fn new(server: &TlsServer) -> Result<Self, TlsError> {
        let exporter = Arc::new(ExporterCapture::default());
        let mut config = ServerConfig::clone(&server.config);
        config.key_log = exporter.clone();
        let connection = UnbufferedServerConnection::new(Arc::new(config))
            .map_err(|error| TlsError::from_rustls(&error))?;
        Ok(Self {
            connection,
            exporter,
            status: Status::Open,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plaintext: Vec::new(),
            plaintext_start: 0,
            pending_write: Vec::new(),
            close_requested: false,
            close_notify_sent: false,
            peer_closed: false,
        })
    }

    /// Takes bytes received from the transport and processes every complete record among them.
    ///
    /// Returns how many bytes were taken: fewer than offered (possibly 0) while decrypted data waits to be
    /// read, so the caller should offer the rest later (and leave it in the socket meanwhile). On `Err` the
    /// session has failed: send [`Self::take_outgoing`] (it holds the alert), then close the transport.
    pub fn feed_incoming(&mut self, bytes: &[u8]) -> Result<usize, TlsError> {
        self.check_open()?;
        let room = MAX_INCOMING - self.incoming.len();
        let taken = room.min(bytes.len());
        self.incoming.extend_from_slice(&bytes[..taken]);
        self.pump();
        if let Status::Failed(error) = self.status {
            return Err(error);
        }
        Ok(taken)
    }

    /// True while records wait for the transport.
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Moves the records for the peer (handshake, application data, alerts) to the end of `out`.
    pub fn take_outgoing(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.outgoing);
    }

    /// Decrypted application data not yet consumed.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext[self.plaintext_start..]
    }

    /// Drops the first `count` bytes of [`Self::plaintext`] (all of it if `count` is larger), and resumes
    /// decrypting buffered records if that was paused.
    pub fn consume_plaintext(&mut self, count: usize) {
        self.plaintext_start = (self.plaintext_start + count).min(self.plaintext.len());
        if self.plaintext_start == self.plaintext.len() {
            self.plaintext.clear();
            self.plaintext_start = 0;
        } else if self.plaintext_start >= PLAINTEXT_HIGH_WATER {
            self.plaintext.drain(..self.plaintext_start);
            self.plaintext_start = 0;
        }
        if self.status == Status::Open && !self.incoming.is_empty() {
            self.pump();
        }
    }

    /// Copies decrypted data into `buf` and consumes it; returns the number of bytes copied.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let available = self.plaintext();
        let count = available.len().min(buf.len());
        buf[..count].copy_from_slice(&available[..count]);
        self.consume_plaintext(count);
        count
    }

    /// Queues application data for the peer. It is encrypted at once when the handshake is complete,
    /// otherwise as soon as it completes; the records appear in [`Self::take_outgoing`].
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), TlsError> {
        self.check_open()?;
        if self.close_requested {
            return Err(TlsError::Closed);
        }
        self.pending_write.extend_from_slice(data);
        self.pump();
        match self.status {
            Status::Failed(error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Ends our side: after the pending writes, a close_notify alert (RFC 8446 §6.1) goes out. During the
    /// handshake rustls cannot send one; the transport should then simply be closed.
    pub fn close(&mut self) {
        self.close_requested = true;
        if self.status == Status::Open {
            self.pump();
        }
    }

    /// True until the client's Finished has been verified.
    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// True once the peer's close_notify arrived: [`Self::plaintext`] is all it will ever send.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True once our close_notify is in the outgoing bytes.
    pub fn close_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<TlsError> {
        match self.status {
            Status::Failed(error) => Some(error),
            _ => None,
        }
    }

    /// Fills `out` with TLS-Exporter(label, context, out.len()) of this connection (RFC 8446 §7.5). Available
    /// once the handshake is complete.
    pub fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExporterError> {
        if self.is_handshaking() || self.error().is_some() {
            return Err(ExporterError::NotReady);
        }
        self.exporter.export(label, context, out)
    }

    /// The exporter value the attestation binds: label [`ATTESTATION_EXPORTER_LABEL`], empty context, 32
    /// bytes (docs/ARCHITECTURE.md §4).
    pub fn attestation_exporter(&self) -> Result<[u8; ATTESTATION_EXPORTER_LEN], ExporterError> {
        let mut out = [0u8; ATTESTATION_EXPORTER_LEN];
        self.export_keying_material(&mut out, ATTESTATION_EXPORTER_LABEL, b"")?;
        Ok(out)
    }

    fn check_open(&self) -> Result<(), TlsError> {
        match self.status {
            Status::Open => Ok(()),
            Status::Closed => Err(TlsError::Closed),
            Status::Failed(error) => Err(error),
        }
    }

    /// Runs rustls over the buffered input until it needs more, moving its output into our buffers.
    fn pump(&mut self) {
        while self.status == Status::Open {
            let handshake_was_done = !self.connection.is_handshaking();
            // Pausing only ever happens right after an application-data record, when rustls holds no
            // partly joined handshake message in `incoming`; an empty slice then just lets it send.
            let paused = self.plaintext().len() >= PLAINTEXT_HIGH_WATER;
            let input: &mut [u8] = if paused { &mut [] } else { &mut self.incoming };
            let UnbufferedStatus { mut discard, state } =
                self.connection.process_tls_records(input);
            let step = match state {
                Err(error) => Step::Fail(TlsError::from_rustls(&error)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Continue;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plaintext.extend_from_slice(record.payload);
                            }
                            Err(error) => {
                                step = Step::Fail(TlsError::from_rustls(&error));
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    match append_with(&mut self.outgoing, |buf| match data.encode(buf) {
                        Ok(written) => Ok(written),
                        Err(EncodeError::InsufficientSize(size)) => Err(Some(size.required_size)),
                        Err(_) => Err(None),
                    }) {
                        Some(()) => Step::Continue,
                        None => Step::Fail(TlsError::Internal),
                    }
                }
                // The encoded records are already in `outgoing`, which the transport drains in order.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Step::Continue
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Idle,
                Ok(ConnectionState::WriteTraffic(mut writer)) => {
                    if handshake_was_done {
                        match flush_writes(
                            &mut writer,
                            &mut self.outgoing,
                            &mut self.pending_write,
                            self.close_requested && !self.close_notify_sent,
                        ) {
                            Ok(sent_close) => {
                                self.close_notify_sent |= sent_close;
                                Step::Idle
                            }
                            Err(error) => Step::Fail(error),
                        }
                    } else {
                        Step::Writable
                    }
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Step::Continue
                }
                Ok(ConnectionState::Closed) => {
                    self.status = Status::Closed;
                    Step::Idle
                }
                // Early data is refused (`max_early_data_size` is 0), so rustls never offers it; any other
                // state is one this rustls version does not have.
                Ok(_) => Step::Fail(TlsError::Internal),
            };
            if !paused {
                self.incoming.drain(..discard.min(self.incoming.len()));
            }
            match step {
                Step::Continue => {}
                Step::Idle => break,
                // The handshake may have completed within this call: run once more to flush the writes
                // with the application traffic keys in place.
                Step::Writable => {
                    let flush_due = !self.pending_write.is_empty()
                        || (self.close_requested && !self.close_notify_sent);
                    if self.connection.is_handshaking() || !flush_due {
                        break;
                    }
                }
                Step::Fail(error) => {
                    self.fail(error, paused);
                    return;
                }
            }
        }
        if self.status == Status::Open
            && !self.plaintext_paused()
            && self.incoming.len() == MAX_INCOMING
        {
            // A full buffer that rustls could not make progress on: no message fits our limit.
            self.fail(TlsError::IncomingOverflow, false);
        }
    }

    fn plaintext_paused(&self) -> bool {
        self.plaintext().len() >= PLAINTEXT_HIGH_WATER
    }

    /// Records the failure and collects the fatal alert rustls queued (docs/ARCHITECTURE.md §2: after an error,
    /// `process_tls_records` must be called again to get it).
    ///
    /// Two rustls details shape this. It hands out queued messages before it looks at the input, so the
    /// buffer passed is the one it saw before (less what it said to discard): a handshake message it was
    /// joining is tracked by position in that buffer, and a shorter one would make it index out of bounds.
    /// And once the queue is empty it would parse that input again, hit the same error and try to send a
    /// second fatal alert (a debug assertion in rustls), so it is called only while it has queued output.
    fn fail(&mut self, error: TlsError, paused: bool) {
        self.status = Status::Failed(error);
        self.pending_write = Vec::new();
        // Each call yields one queued message; the bound keeps this finite whatever rustls does.
        for _ in 0..8 {
            if !self.connection.wants_write() {
                break;
            }
            let input: &mut [u8] = if paused { &mut [] } else { &mut self.incoming };
            let status = self.connection.process_tls_records(input);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state else {
                break;
            };
            let encoded = append_with(&mut self.outgoing, |buf| match data.encode(buf) {
                Ok(written) => Ok(written),
                Err(EncodeError::InsufficientSize(size)) => Err(Some(size.required_size)),
                Err(_) => Err(None),
            });
            if encoded.is_none() {
                break;
            }
        }
        self.incoming = Vec::new();
    }
}

/// Encrypts the pending writes and, if `send_close`, a close_notify. Returns whether close_notify was sent.
fn flush_writes<Data>(
    writer: &mut rustls::unbuffered::WriteTraffic<'_, Data>,
    outgoing: &mut Vec<u8>,
    pending: &mut Vec<u8>,
    send_close: bool,
) -> Result<bool, TlsError> {
    if !pending.is_empty() {
        append_with(outgoing, |buf| match writer.encrypt(pending, buf) {
            Ok(written) => Ok(written),
            Err(EncryptError::InsufficientSize(size)) => Err(Some(size.required_size)),
            Err(_) => Err(None),
        })
        .ok_or(TlsError::Internal)?;
        pending.clear();
    }
    if send_close {
        append_with(outgoing, |buf| match writer.queue_close_notify(buf) {
            Ok(written) => Ok(written),
            Err(EncryptError::InsufficientSize(size)) => Err(Some(size.required_size)),
            Err(_) => Err(None),
        })
        .ok_or(TlsError::Internal)?;
    }
    Ok(send_close)
}

/// Lets `write` fill space at the end of `out`. `write` returns the bytes written, or `Err(Some(n))` when it
/// needs `n` bytes of room (rustls then wrote nothing), or `Err(None)` on any other failure. Returns `None`
/// on failure, leaving `out` as it was.
fn append_with(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Option<()> {
    let start = out.len();
    // Enough for every handshake flight and alert we send; larger writes say how much they need.
    let mut room = 4096;
    // Two tries: the second has exactly the room rustls asked for.
    for _ in 0..2 {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) if written <= room => {
                out.truncate(start + written);
                return Some(());
            }
            Err(Some(required)) if required > room => room = required,
            _ => break,
        }
    }
    out.truncate(start);
    None
}
