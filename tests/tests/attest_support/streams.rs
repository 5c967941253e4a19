//! Generation over verified sessions, shared by the test binaries that boot an appliance (`generation.rs` on one
//! vCPU, `smp.rs` on two): the verified session, usage checks against the host reference, and four sessions
//! streaming at once (docs/ARCHITECTURE.md §5, the main loop's one step per stream per round).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use client::session::{ApplianceError, Completion, Ending, UnverifiedSession, VerifiedSession};
use model::session::FinishReason as HostFinish;
use net::proto::{Done, ErrorCode, FinishReason};

use super::*;

/// Generation slots of the appliance (`sessions=` defaults to 4, `net::serving::DEFAULT_SESSIONS`).
pub const SLOTS: usize = net::serving::DEFAULT_SESSIONS as usize;

/// Tokens each concurrent stream generates: enough that the streams run for a while side by side under TCG.
pub const CONCURRENT_TOKENS: u32 = 160;

/// How often a verified session waiting for the others sends a one-token generation, so the appliance's
/// per-request deadline (`net::serving::FRAME_TIMEOUT`, 10 s) never closes it as idle.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

pub fn verified_session(booted: &Booted) -> VerifiedSession {
    let session = UnverifiedSession::connect(booted.endpoint(), CLIENT_TIMEOUT)
        .expect("TLS 1.3 handshake with the appliance");
    let (session, report) = session
        .verify(&booted.manifest, &booted.trust, &verify_options())
        .unwrap_or_else(|error| panic!("the honest appliance failed verification: {error:#}"));
    eprintln!(
        "verified: TLS handshake {:.1} ms, attest round trip {:.1} ms, credential activation {:.1} ms",
        report.timing.tls_handshake_ms,
        report.timing.attest_round_trip_ms,
        report.timing.activation_round_trip_ms
    );
    session
}

pub fn done_of(completion: &Completion) -> Done {
    match completion.ending {
        Ending::Done(done) => done,
        Ending::Cancelled => panic!("a generation nobody cancelled ended Cancelled"),
    }
}

pub fn wire_reason(reason: HostFinish) -> FinishReason {
    match reason {
        HostFinish::Length => FinishReason::Length,
        HostFinish::EndOfText => FinishReason::EndOfText,
        HostFinish::Stop => FinishReason::Stop,
    }
}

/// Usage that agrees with what the client saw and what the host computed.
pub fn assert_usage(done: &Done, completion: &Completion, host: &HostOutput, what: &str) {
    assert_eq!(
        done.reason,
        wire_reason(host.finish),
        "{what}: finish reason"
    );
    assert_eq!(
        done.prompt_tokens as usize,
        host.prompt_ids.len(),
        "{what}: prompt tokens"
    );
    assert_eq!(
        done.generated_tokens as usize,
        completion.tokens.len(),
        "{what}: generated_tokens is not the number of token frames"
    );
    assert!(done.prefill_us > 0, "{what}: no prefill time: {done:?}");
    if completion.tokens.len() > 1 {
        assert!(done.decode_us > 0, "{what}: no decode time: {done:?}");
    }
    // The guest's clock is not the host's, but a generation cannot take longer inside than the client waited
    // for it (allowing a generous factor for a TCG guest's clock).
    let inside = Duration::from_micros(done.prefill_us + done.decode_us);
    assert!(
        inside <= completion.elapsed * 3 + Duration::from_secs(1),
        "{what}: the appliance reports {inside:?} for a generation the client saw take {:?}",
        completion.elapsed
    );
}

pub fn tokens_per_second(done: &Done) -> f64 {
    f64::from(done.generated_tokens.saturating_sub(1)) / (done.decode_us as f64 / 1e6).max(1e-9)
}

/// Prompts whose greedy generation runs to `CONCURRENT_TOKENS` on the host (no early end of text), so the
/// concurrent streams all last equally long.
pub fn long_prompts(count: usize) -> Vec<(TestPrompt, HostOutput)> {
    let mut found = Vec::new();
    for index in 0..64 {
        let prompt = TestPrompt::Raw(format!(
            "Stream {index}: tell me a long story about the sea"
        ));
        let host = host_generate(tiny_model(), &prompt, CONCURRENT_TOKENS as usize);
        if host.finish == HostFinish::Length {
            found.push((prompt, host));
            if found.len() == count {
                return found;
            }
        }
    }
    panic!(
        "only {} of 64 prompts run to {CONCURRENT_TOKENS} tokens on the host",
        found.len()
    );
}

/// Keeps `session` open (a one-token generation every [`KEEP_ALIVE`]) until `count` sessions are verified.
/// Not model info: the appliance answers that once before a connection's first generation
/// (`net::Limits::request_caps`). `Busy`, while other keep-alives hold every session, keeps it open too.
pub fn keep_alive_until(session: &mut VerifiedSession, verified: &AtomicUsize, count: usize) {
    let mut last = Instant::now();
    while verified.load(Ordering::Acquire) < count {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= KEEP_ALIVE {
            let keep_alive = TestPrompt::Raw("keep".into()).request(1);
            if let Err(error) = session.complete(keep_alive, None, |_| {}) {
                assert_eq!(
                    error.downcast_ref::<ApplianceError>(),
                    Some(&ApplianceError(ErrorCode::Busy)),
                    "keep-alive generation: {error:#}"
                );
            }
            last = Instant::now();
        }
    }
}

/// What one concurrent stream saw.
pub struct Stream {
    completion: Completion,
    /// Arrival time of each token frame.
    arrivals: Vec<Instant>,
    /// Arrival time of the Done frame.
    ended: Instant,
}

/// Four verified sessions stream at once and interleave fairly (every stream has tokens before any ends, and
/// each has at least half of its tokens when the first ends), each giving the host's greedy ids; a fifth is
/// refused `Busy` while they run; the sessions are free again after. `cpus` only labels the report.
pub fn four_sessions_stream_at_once_interleaved_and_a_fifth_is_busy(booted: &Booted, cpus: u32) {
    let prompts = long_prompts(SLOTS);
    // Five verified sessions, verified in parallel; each keeps itself alive until all are verified.
    let verified = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(SLOTS + 1));
    let first_tokens = Arc::new(AtomicUsize::new(0));
    let endpoint_booted: &Booted = booted;
    let (streams, fifth) = std::thread::scope(|scope| {
        let workers: Vec<_> = prompts
            .iter()
            .map(|(prompt, _)| {
                let (verified, start, first_tokens) = (&verified, &start, &first_tokens);
                scope.spawn(move || {
                    let mut session = verified_session(endpoint_booted);
                    verified.fetch_add(1, Ordering::AcqRel);
                    keep_alive_until(&mut session, verified, SLOTS + 1);
                    start.wait();
                    let mut arrivals = Vec::new();
                    let completion = session
                        .complete(prompt.request(CONCURRENT_TOKENS), None, |_| {
                            if arrivals.is_empty() {
                                first_tokens.fetch_add(1, Ordering::AcqRel);
                            }
                            arrivals.push(Instant::now());
                        })
                        .unwrap_or_else(|error| panic!("{prompt:?}: {error:#}"));
                    Stream {
                        completion,
                        arrivals,
                        ended: Instant::now(),
                    }
                })
            })
            .collect();
        let mut fifth = verified_session(endpoint_booted);
        verified.fetch_add(1, Ordering::AcqRel);
        keep_alive_until(&mut fifth, &verified, SLOTS + 1);
        start.wait();
        // Once every stream has its first token, all four slots are busy generating.
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while first_tokens.load(Ordering::Acquire) < SLOTS {
            assert!(
                Instant::now() < deadline,
                "the four streams did not all start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let refused = fifth.complete(
            TestPrompt::Raw("one too many".into()).request(8),
            None,
            |_| {},
        );
        let refused_at = Instant::now();
        let error = refused.expect_err("a fifth generation while four run was accepted");
        assert_eq!(
            error.downcast_ref::<ApplianceError>(),
            Some(&ApplianceError(ErrorCode::Busy)),
            "{error:#}"
        );
        let streams: Vec<Stream> = workers
            .into_iter()
            .map(|worker| worker.join().expect("stream thread"))
            .collect();
        (streams, refused_at)
    });
    let refused_at = fifth;

    // The fifth was refused while all four were still streaming.
    for stream in &streams {
        assert!(
            stream.ended > refused_at,
            "a stream had ended before the fifth was refused, so Busy proves nothing"
        );
    }
    // Each stream is what it would be alone: the host's greedy ids, and usage to match.
    for (stream, (prompt, host)) in streams.iter().zip(&prompts) {
        let ids: Vec<u32> = stream.completion.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, host.generated_ids, "{prompt:?}: ids under concurrency");
        let done = done_of(&stream.completion);
        assert_usage(&done, &stream.completion, host, &format!("{prompt:?}"));
        assert_eq!(done.generated_tokens, CONCURRENT_TOKENS);
    }
    // Interleaved: every stream had tokens before any stream finished, and when the first finished, each had
    // received at least half of its tokens (one step per stream per round, docs/ARCHITECTURE.md §5 fairness).
    let first_done = streams.iter().map(|s| s.ended).min().expect("streams");
    let last_start = streams
        .iter()
        .map(|s| s.arrivals[0])
        .max()
        .expect("streams");
    assert!(
        last_start < first_done,
        "a stream got its first token only after another had finished"
    );
    let origin = streams
        .iter()
        .map(|s| s.arrivals[0])
        .min()
        .expect("streams");
    for (index, (stream, (_, host))) in streams.iter().zip(&prompts).enumerate() {
        let before = stream
            .arrivals
            .iter()
            .filter(|at| **at <= first_done)
            .count();
        eprintln!(
            "stream {index}: first token at {:.0} ms, done at {:.0} ms, {before}/{} tokens before the first stream \
             finished; appliance decode {:.1} tok/s while sharing {cpus} vCPU(s) with 3 others (host alone: {:.0} tok/s)",
            (stream.arrivals[0] - origin).as_secs_f64() * 1e3,
            (stream.ended - origin).as_secs_f64() * 1e3,
            stream.arrivals.len(),
            tokens_per_second(&done_of(&stream.completion)),
            host.decode_tok_s
        );
        assert!(
            before * 2 >= stream.arrivals.len(),
            "stream {index} got only {before} of {} tokens while the first stream ran: not interleaved",
            stream.arrivals.len()
        );
    }
    let total: u32 = streams
        .iter()
        .map(|s| done_of(&s.completion).generated_tokens)
        .sum();
    let wall = first_done.max(streams.iter().map(|s| s.ended).max().expect("streams")) - origin;
    eprintln!(
        "4 concurrent streams on {cpus} vCPU(s): {total} tokens in {:.2} s (client clock) = {:.1} tok/s aggregate",
        wall.as_secs_f64(),
        f64::from(total) / wall.as_secs_f64()
    );

    // The slots are free again: a new session generates.
    let mut after = verified_session(booted);
    let host = host_generate(tiny_model(), &TestPrompt::Raw("one too many".into()), 8);
    let completion = after
        .complete(
            TestPrompt::Raw("one too many".into()).request(8),
            None,
            |_| {},
        )
        .expect("a generation after the four ended");
    let ids: Vec<u32> = completion.tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, host.generated_ids);
}
