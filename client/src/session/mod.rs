//! Sessions with the appliance: one TLS 1.3 connection (rustls with std, ring provider), the channel binding a
//! quote must carry, and the type-state that lets a prompt out only on a verified session (docs/ARCHITECTURE.md §4, §5;
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
//! [`UnverifiedSession::verify`] consumes it and, only when every check of docs/ARCHITECTURE.md §4 passes, returns a
//! [`VerifiedSession`]. `generate` exists only on [`VerifiedSession`], and there is no other way to make
//! one, so a prompt cannot be sent on an unverified connection: code that tries does not compile. The
//! requests an unverified session can send are [`AttestationRequest`]s, a type with no prompt in it.
//!
//! This does not compile (the doctest checks it):
//!
//! ```compile_fail
//! fn leak(session: &mut client::session::UnverifiedSession, prompt: net::proto::GenerateRequest) {
//!     let _ = session.generate(prompt);
//! }
//! ```
//!
//! while the same call on a verified session does (the pair makes sure the first fails for the right reason):
//!
//! ```
//! fn ask(session: &mut client::session::VerifiedSession, prompt: net::proto::GenerateRequest) {
//!     let _ = session.generate(prompt);
//! }
//! ```

mod attestation;
mod channel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use net::proto::{
    ChannelBinding, Done, ErrorCode, GenerateRequest, ModelInfo, Request, Response, Token,
};

pub use channel::{
    subject_public_key_info, ApplianceError, RequestKind, Sent, Transcript, SERVER_NAME,
};
// Accepts any certificate: for tests that speak raw TLS to the appliance, never for a shipped client.
#[cfg(feature = "test-support")]
pub use channel::handshake_config;

use crate::manifest::Manifest;
use crate::verify::{Report, TrustAnchors, VerifyOptions};
use channel::Channel;

/// How often a blocked read wakes up to look at a cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

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
        self.channel.endpoint()
    }

    /// What a quote made for this session must bind: the server key's SPKI hash and this session's exporter.
    pub fn binding(&self) -> ChannelBinding {
        self.channel.binding()
    }

    /// The server certificate's SubjectPublicKeyInfo (DER).
    pub fn server_spki(&self) -> &[u8] {
        self.channel.spki()
    }

    /// Time from the TCP connect to the end of the TLS handshake.
    pub fn handshake_duration(&self) -> Duration {
        self.channel.handshake_duration()
    }

    /// A handle on the list of requests this session sends (it stays readable after `verify` consumed the
    /// session).
    pub fn transcript(&self) -> Transcript {
        self.channel.transcript().clone()
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

    /// Attests the appliance on this session (fresh nonce, every check of docs/ARCHITECTURE.md §4 including the channel
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
        let report = attestation::verify_channel(&mut self.channel, manifest, trust, options)?;
        Ok((
            VerifiedSession {
                channel: self.channel,
                report: report.clone(),
            },
            report,
        ))
    }
}

/// Connects to `endpoint` over TLS and verifies the appliance against `manifest` and the EK CA in `trust`; the
/// session is closed afterwards (use [`UnverifiedSession::verify`] to keep it for prompts).
///
/// A failed check is returned as an error whose root cause is a [`crate::verify::VerifyError`]
/// (`error.downcast_ref::<VerifyError>()`); connection and protocol failures are other errors with a message
/// saying what to do.
pub fn verify_appliance(
    endpoint: SocketAddr,
    manifest: &Manifest,
    trust: &TrustAnchors,
    options: &VerifyOptions,
) -> Result<Report> {
    let session = UnverifiedSession::connect(endpoint, options.timeout)?;
    let (_, report) = session.verify(manifest, trust, options)?;
    Ok(report)
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
        self.channel.endpoint()
    }

    /// The channel binding the verified quote carried.
    pub fn binding(&self) -> ChannelBinding {
        self.channel.binding()
    }

    /// The list of requests this session sent.
    pub fn transcript(&self) -> Transcript {
        self.channel.transcript().clone()
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
                self.channel.desynchronize();
                Err(anyhow!(
                    "the appliance answered a generate request with {}",
                    other.name()
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
            self.channel.desynchronize();
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
            channel.transcript().kinds(),
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
