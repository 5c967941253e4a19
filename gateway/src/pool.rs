//! The gateway's upstream: a pool of verified TLS sessions with the appliance, at most one per generation session the
//! appliance's measured command line reserves (docs/ARCHITECTURE.md §4, §5; "The OpenAI-compatible gateway").
//!
//! Every session is made by [`client::UnverifiedSession::verify`] with a fresh nonce before its first prompt; a
//! session that failed in any way, or that the appliance refused, is dropped, never handed out again. A session
//! left idle is reused only for [`IDLE_REUSE`]: the appliance closes connections that stay silent longer than its
//! frame timeout, and a fresh verification is cheaper to reason about than a dead socket. The client library is
//! synchronous, so verification and generation run on blocking threads (`tokio::task::spawn_blocking`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use client::manifest::Manifest;
use client::session::{ApplianceError, StreamEvent, UnverifiedSession, VerifiedSession};
use client::verify::{Report, TrustAnchors, VerifyOptions};
use net::proto::{Done, ErrorCode, GenerateRequest};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// How long an idle verified session may wait in the pool and still be used (under the appliance's default frame
/// timeout of 10 s, after which it closes a silent connection: `net::server::Limits`).
pub const IDLE_REUSE: Duration = Duration::from_secs(5);

/// How often the generation loop wakes to see whether the HTTP client is still there.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Where the upstream is and what it must prove.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The appliance's address.
    pub endpoint: SocketAddr,
    /// The manifest every session is verified against.
    pub manifest: Manifest,
    /// The EK CA.
    pub trust: TrustAnchors,
    /// Verification options (timeout, observation store, trust in the host).
    pub options: VerifyOptions,
}

/// One passed verification: the report, what the gateway's response header says about it, and when it passed.
#[derive(Debug)]
pub struct Verification {
    /// The report (`cloister verify --json` prints the same).
    pub report: Report,
    /// When it passed.
    pub verified_at: SystemTime,
    /// How long connecting, the handshake and the attestation exchange took.
    pub duration: Duration,
}

/// The response header naming the verification a response relied on.
pub const ATTESTATION_HEADER: &str = "cloister-attestation";

impl Verification {
    /// The digest the event log recorded for events of `kind` (as the report names kinds).
    fn measured(&self, kind: &str) -> &str {
        self.report
            .events
            .iter()
            .find(|event| event.kind == kind)
            .map_or("", |event| event.digest.as_str())
    }

    /// The value of [`ATTESTATION_HEADER`]: the measured kernel (PCR 12) and model (PCR 13) digests and the time of
    /// the verification, RFC 3339 in UTC.
    pub fn header_value(&self) -> String {
        format!(
            "kernel={}; model={}; verified-at={}",
            self.measured("kernel image"),
            self.measured("model"),
            rfc3339(self.verified_at)
        )
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 §5.6, UTC); days to a civil date as in Howard Hinnant's
/// `civil_from_days` ("chrono-Compatible Low-Level Date Algorithms").
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Why a request got no (complete) answer from upstream; the server turns each into an HTTP status.
#[derive(Debug)]
pub enum UpstreamError {
    /// Every pooled session is in use (the gateway's own limit, the appliance's session count).
    PoolFull,
    /// The appliance answered with a protocol error (`Busy`, `ContextExceeded`, ...).
    Appliance(ErrorCode),
    /// A verification check failed: nothing of the request was sent.
    Verification {
        /// The check's name.
        check: &'static str,
        /// The whole error chain.
        message: String,
    },
    /// No answer within the timeout.
    Timeout(String),
    /// Connecting, the TLS session or the protocol failed.
    Failed(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PoolFull => {
                out.write_str("every session with the appliance is in use; try again in a moment")
            }
            Self::Appliance(code) => write!(out, "{}", ApplianceError(*code)),
            Self::Verification { check, message } => write!(
                out,
                "the appliance failed verification (check: {check}); nothing of the request was sent: {message}"
            ),
            Self::Timeout(message) => write!(out, "the appliance did not answer in time: {message}"),
            Self::Failed(message) => write!(out, "the appliance could not be reached: {message}"),
        }
    }
}

impl UpstreamError {
    /// Classifies an error of the client library.
    pub fn from_error(error: &anyhow::Error) -> Self {
        if let Some(failure) = error.downcast_ref::<client::verify::VerifyError>() {
            return Self::Verification {
                check: failure.check(),
                message: format!("{error:#}"),
            };
        }
        if let Some(ApplianceError(code)) = error.downcast_ref::<ApplianceError>() {
            return Self::Appliance(*code);
        }
        let timed_out = error.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|error| {
                matches!(
                    error.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                )
            })
        });
        if timed_out {
            Self::Timeout(format!("{error:#}"))
        } else {
            Self::Failed(format!("{error:#}"))
        }
    }
}

/// A verified session and the verification that made it.
struct Pooled {
    session: VerifiedSession,
    verification: Arc<Verification>,
    idle_since: Instant,
}

/// The pool.
pub struct Pool {
    config: UpstreamConfig,
    /// One permit per appliance generation session.
    permits: Arc<Semaphore>,
    sessions: usize,
    idle: Mutex<Vec<Pooled>>,
    /// Verifications run one at a time: they all use the appliance's one TPM, and the observation store is one
    /// file that each of them reads and then rewrites.
    verifying: Mutex<()>,
    last: Mutex<Option<Arc<Verification>>>,
    /// How long generation may wait for the appliance's next frame.
    timeout: Duration,
}

/// What a running generation reports to the HTTP side, in order: `Verified` first, then tokens, then one ending.
#[derive(Debug)]
pub enum Upstream {
    /// The verification of the session the prompt goes out on.
    Verified(Arc<Verification>),
    /// A token's text.
    Token(String),
    /// The appliance finished.
    Done(Done),
    /// The generation stopped after a cancel.
    Cancelled,
    /// It failed; nothing more follows.
    Failed(UpstreamError),
}

/// Lock a mutex whose data stays consistent even if a holder panicked (each critical section is one push, pop or
/// assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A pool for `config`'s appliance with one slot per generation session its manifest's command line reserves.
    pub fn new(config: UpstreamConfig) -> Result<Arc<Self>> {
        let appliance =
            net::serving::ApplianceConfig::from_cmdline(&config.manifest.command_line.text)
                .map_err(|error| {
                    anyhow::anyhow!("the manifest's command line does not parse: {error:?}")
                })?;
        let sessions = appliance.serving.sessions as usize;
        let timeout = config.options.timeout;
        Ok(Arc::new(Self {
            config,
            permits: Arc::new(Semaphore::new(sessions)),
            sessions,
            idle: Mutex::new(Vec::new()),
            verifying: Mutex::new(()),
            last: Mutex::new(None),
            timeout,
        }))
    }

    /// How many sessions the pool holds at most.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.config.manifest
    }

    /// The most recent verification that passed.
    pub fn last_verification(&self) -> Option<Arc<Verification>> {
        lock(&self.last).clone()
    }

    /// Takes a slot, or fails with [`UpstreamError::PoolFull`] when every session is in use.
    pub fn try_reserve(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, UpstreamError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| UpstreamError::PoolFull)
    }

    /// Connects and verifies a new session (blocking). A failure leaves nothing behind.
    fn verify_new(&self) -> Result<Pooled> {
        let _one_at_a_time = lock(&self.verifying);
        let started = Instant::now();
        let session = UnverifiedSession::connect(self.config.endpoint, self.config.options.timeout)
            .with_context(|| format!("no TLS session with {}", self.config.endpoint))?;
        let (session, report) = session.verify(
            &self.config.manifest,
            &self.config.trust,
            &self.config.options,
        )?;
        let verification = Arc::new(Verification {
            report,
            verified_at: SystemTime::now(),
            duration: started.elapsed(),
        });
        *lock(&self.last) = Some(Arc::clone(&verification));
        Ok(Pooled {
            session,
            verification,
            idle_since: Instant::now(),
        })
    }

    /// Verifies a new session and keeps it idle (blocking): the gateway's start and `GET /v1/attestation` before any
    /// request use it. Needs a slot of its own.
    pub fn verify_one(self: &Arc<Self>) -> Result<Arc<Verification>, UpstreamError> {
        let _permit = self.try_reserve()?;
        let pooled = self
            .verify_new()
            .map_err(|error| UpstreamError::from_error(&error))?;
        let verification = Arc::clone(&pooled.verification);
        lock(&self.idle).push(pooled);
        Ok(verification)
    }

    /// An idle session still fresh enough to use, or none.
    fn take_idle(&self) -> Option<Pooled> {
        let mut idle = lock(&self.idle);
        idle.retain(|pooled| pooled.idle_since.elapsed() < IDLE_REUSE);
        idle.pop()
    }

    fn give_back(&self, mut pooled: Pooled) {
        pooled.idle_since = Instant::now();
        lock(&self.idle).push(pooled);
    }

    /// Runs `request` on a verified session (blocking; call it on a blocking thread while holding `permit`), sending
    /// what happens to `events`. Dropping the receiver (the HTTP client went away) sends `Cancel` to the appliance;
    /// the session returns to the pool once the appliance confirmed the end of the stream.
    pub fn generate(
        &self,
        _permit: OwnedSemaphorePermit,
        request: GenerateRequest,
        events: &mpsc::UnboundedSender<Upstream>,
    ) {
        // A reused idle session may have been closed by the appliance since: when it fails before any frame came
        // back, the request goes out once more on a freshly verified session.
        let mut reused = true;
        let mut pooled = match self.take_idle() {
            Some(pooled) => pooled,
            None => {
                reused = false;
                match self.verify_new() {
                    Ok(pooled) => pooled,
                    Err(error) => {
                        let _ = events.send(Upstream::Failed(UpstreamError::from_error(&error)));
                        return;
                    }
                }
            }
        };
        let _ = events.send(Upstream::Verified(Arc::clone(&pooled.verification)));
        loop {
            match self.run(&mut pooled.session, request.clone(), events) {
                // The session is idle again before the HTTP side hears of the end: a client that sends its next
                // request as soon as this answer arrives finds it in the pool instead of paying a verification.
                Ok(ending) => {
                    self.give_back(pooled);
                    let _ = events.send(ending);
                    return;
                }
                Err(Attempt::Retry(_)) if reused => {
                    reused = false;
                    pooled = match self.verify_new() {
                        Ok(pooled) => pooled,
                        Err(error) => {
                            let _ =
                                events.send(Upstream::Failed(UpstreamError::from_error(&error)));
                            return;
                        }
                    };
                    let _ = events.send(Upstream::Verified(Arc::clone(&pooled.verification)));
                }
                // The session is dropped: it failed, or the appliance refused the request.
                Err(Attempt::Retry(error) | Attempt::Failed(error)) => {
                    let _ = events.send(Upstream::Failed(error));
                    return;
                }
            }
        }
    }

    /// One generation on `session`, its tokens forwarded to `events`; returns the event that ends it (`Done` or
    /// `Cancelled`) for the caller to send once the session is back in the pool.
    fn run(
        &self,
        session: &mut VerifiedSession,
        request: GenerateRequest,
        events: &mpsc::UnboundedSender<Upstream>,
    ) -> Result<Upstream, Attempt> {
        let mut generation = session
            .generate(request)
            .map_err(|error| Attempt::Retry(UpstreamError::from_error(&error)))?;
        let mut any_frame = false;
        let mut last_frame = Instant::now();
        loop {
            // The HTTP side went away (the client disconnected): stop the appliance's work too.
            if events.is_closed() {
                generation
                    .cancel()
                    .map_err(|error| Attempt::Failed(UpstreamError::from_error(&error)))?;
            }
            if last_frame.elapsed() > self.timeout {
                return Err(Attempt::Failed(UpstreamError::Timeout(format!(
                    "the appliance sent nothing for {} s",
                    self.timeout.as_secs()
                ))));
            }
            let event = match generation.next_event(CANCEL_POLL) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(error) => {
                    let error = UpstreamError::from_error(&error);
                    return Err(match error {
                        UpstreamError::Failed(_) if !any_frame => Attempt::Retry(error),
                        error => Attempt::Failed(error),
                    });
                }
            };
            any_frame = true;
            last_frame = Instant::now();
            return Ok(match event {
                // An empty text (a token that completes no character yet) makes no delta.
                StreamEvent::Token(token) if token.text.is_empty() => continue,
                StreamEvent::Token(token) => {
                    let _ = events.send(Upstream::Token(token.text));
                    continue;
                }
                StreamEvent::Done(done) => Upstream::Done(done),
                StreamEvent::Cancelled => Upstream::Cancelled,
            });
        }
    }
}

/// How one attempt at a generation failed.
enum Attempt {
    /// Before any frame came back, on what may be a stale connection.
    Retry(UpstreamError),
    /// Otherwise.
    Failed(UpstreamError),
}

/// Starts `request` on a blocking thread, returning the receiver of its events. The generation is cancelled when
/// the receiver is dropped.
pub fn spawn_generation(
    pool: &Arc<Pool>,
    permit: OwnedSemaphorePermit,
    request: GenerateRequest,
) -> mpsc::UnboundedReceiver<Upstream> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || pool.generate(permit, request, &sender));
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        for (seconds, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_394_514, "2026-12-04T14:28:34Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(
                rfc3339(UNIX_EPOCH + Duration::from_secs(seconds)),
                text,
                "{seconds}"
            );
        }
    }

    #[test]
    fn errors_are_classified_by_their_root_cause() {
        let busy = anyhow::Error::from(ApplianceError(ErrorCode::Busy)).context("generating");
        assert!(matches!(
            UpstreamError::from_error(&busy),
            UpstreamError::Appliance(ErrorCode::Busy)
        ));
        let timeout = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            .context("reading");
        assert!(matches!(
            UpstreamError::from_error(&timeout),
            UpstreamError::Timeout(_)
        ));
        let refused =
            anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            UpstreamError::from_error(&refused),
            UpstreamError::Failed(_)
        ));
    }
}
