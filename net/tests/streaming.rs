//! Streamed generations through `net::Server` over the in-memory link, plaintext and TLS: fair
//! interleaving, back-pressure, cancel, and `Handler::stop` on every path that ends a generation early.
//! The bench's handler (`support::TestHandler`) panics on any call the `Handler` contract forbids.

mod support;

use net::frame::MAX_FRAME_LEN;
use net::proto::{
    Done, ErrorCode, FinishReason, GenerateRequest, Prompt, Request, Response, Sampling,
};
use net::Limits;
use smoltcp::time::Duration;
use support::{frame_of, generate_request, Bench, INFO};

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn bench(tls: bool) -> Bench {
    bench_with(tls, Limits::default())
}

fn bench_with(tls: bool, limits: Limits) -> Bench {
    if tls {
        Bench::tls_with_limits(limits)
    } else {
        Bench::with_limits(limits)
    }
}

/// Runs a test once over plaintext and once over TLS.
fn both(test: impl Fn(bool)) {
    test(false);
    test(true);
}

/// The text a client gets for `count` tokens labelled `label`.
fn expected_text(label: &str, count: u32) -> String {
    (0..count).map(|i| format!("{label}{i} ")).collect()
}

fn done(generated: u32) -> Response {
    Response::Done(Done {
        reason: FinishReason::Length,
        prompt_tokens: 1,
        generated_tokens: generated,
        prefill_us: 0,
        decode_us: 0,
    })
}

/// A generate request whose prompt is `prefill` token ids: that many `Pending` steps before the tokens.
fn long_prefill(prefill: usize, max_tokens: u32) -> Vec<u8> {
    frame_of(&Request::Generate(GenerateRequest {
        prompt: Prompt::Tokens(vec![7; prefill]),
        max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    }))
}

/// Waits until the client holds `count` token frames.
fn await_tokens(bench: &mut Bench, client: usize, count: usize, limit: Duration) {
    let got = bench.run_until(limit, |bench| {
        bench.clients[client].token_count() >= count || bench.is_finished(client)
    });
    assert!(
        got,
        "client {client}: {} tokens",
        bench.clients[client].token_count()
    );
}

/// The slot the server gave the (only) generation running now.
fn running_slot(bench: &Bench) -> usize {
    let slots: Vec<usize> = bench.handler.running.keys().copied().collect();
    assert_eq!(slots.len(), 1, "{slots:?}");
    slots[0]
}

#[test]
fn a_generation_streams_then_the_connection_serves_on() {
    both(|tls| {
        let mut bench = bench(tls);
        let client = bench.connect_as(tls);
        bench.send_generate(client, "a", 5);
        let responses = bench.await_responses(client, 6, SECOND);
        assert_eq!(responses.last(), Some(&done(5)));
        assert_eq!(bench.clients[client].text(), expected_text("a", 5));
        // Back to serving: another request, and another generation, on the same connection.
        bench.send_request(client);
        bench.send_generate(client, "b", 2);
        let responses = bench.await_responses(client, 10, SECOND);
        assert_eq!(responses[6], Response::ModelInfo(INFO));
        assert_eq!(responses[9], done(2));
        bench.close(client);
        bench.await_end(client, SECOND);
        let counters = bench.server.counters();
        assert_eq!(
            (
                counters.streams,
                counters.streams_finished,
                counters.stream_frames
            ),
            (2, 2, 9)
        );
        assert_eq!((counters.cancels, counters.streams_stopped), (0, 0));
        assert!(bench.handler.stops.is_empty());
        // One pending step, five tokens and the final frame; then one, two and the final frame.
        assert_eq!(bench.handler.steps.len(), 7 + 4);
    });
}

/// `count` clients stream `tokens` tokens each at once; every client gets exactly its own tokens, and
/// while all run, their token counts never drift apart by more than one round.
fn streams_interleave(tls: bool, count: usize) {
    let tokens = 200;
    let mut bench = bench(tls);
    let clients: Vec<usize> = (0..count).map(|_| bench.connect_as(tls)).collect();
    let labels: Vec<String> = (0..count).map(|i| format!("c{i}-")).collect();
    // Everyone connected (and through TLS) first, so the generations start in the same poll.
    assert!(bench.run_until(secs(2), |bench| {
        clients.iter().all(|&client| {
            bench.clients[client].was_established
                && bench.clients[client]
                    .tls
                    .as_ref()
                    .is_none_or(|tls| !tls.is_handshaking())
        })
    }));
    for (&client, label) in clients.iter().zip(&labels) {
        bench.send_generate(client, label, tokens);
    }
    // Once all run, each poll steps each of them exactly once.
    assert!(bench.run_until(SECOND, |bench| bench.server.streaming() == count));
    bench.run_for(Duration::from_millis(5));
    for _ in 0..5 {
        let before = bench.handler.steps.len();
        bench.step();
        let mut round = bench.handler.steps[before..].to_vec();
        round.sort_unstable();
        round.dedup();
        assert_eq!(bench.handler.steps.len() - before, count, "tls {tls}");
        assert_eq!(round.len(), count, "tls {tls}");
    }
    let mut max_spread = 0;
    let finished = bench.run_until(secs(5), |bench| {
        let counts: Vec<usize> = clients
            .iter()
            .map(|&client| bench.clients[client].token_count())
            .collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        if *max < tokens as usize {
            max_spread = max_spread.max(max - min);
        }
        *min == tokens as usize
    });
    assert!(finished, "tls {tls}: not all streams finished");
    assert!(
        max_spread <= 2,
        "tls {tls}: token counts drifted {max_spread} apart"
    );
    for (&client, label) in clients.iter().zip(&labels) {
        bench.await_responses(client, tokens as usize + 1, SECOND);
        assert_eq!(bench.clients[client].text(), expected_text(label, tokens));
        assert_eq!(
            bench.clients[client].responses().last(),
            Some(&done(tokens))
        );
    }
    // On the handler's side: in every window of 2 * count consecutive steps taken while all ran, every
    // slot appears (one step each per poll, rotating start).
    let steps = &bench.handler.steps;
    let slots: std::collections::BTreeSet<usize> = steps.iter().copied().collect();
    assert_eq!(slots.len(), count);
    let first_of = |slot: &usize| steps.iter().position(|s| s == slot).unwrap();
    let last_of = |slot: &usize| steps.iter().rposition(|s| s == slot).unwrap();
    let from = slots.iter().map(first_of).max().unwrap();
    let to = slots.iter().map(last_of).min().unwrap();
    assert!(
        to - from > tokens as usize,
        "tls {tls}: the streams barely overlapped"
    );
    for window in steps[from..to].windows(2 * count) {
        for slot in &slots {
            assert!(
                window.contains(slot),
                "tls {tls}: slot {slot} starved in {window:?}"
            );
        }
    }
    // No slot is always first in its round.
    let firsts: std::collections::BTreeSet<usize> = steps[from..]
        .chunks(count)
        .take(10)
        .map(|round| round[0])
        .collect();
    assert!(
        firsts.len() > 1,
        "tls {tls}: rounds always start with {firsts:?}"
    );
    assert_eq!(bench.server.counters().streams_finished, count as u64);
}

#[test]
fn two_streams_interleave() {
    both(|tls| streams_interleave(tls, 2));
}

#[test]
fn four_streams_interleave() {
    both(|tls| streams_interleave(tls, 4));
}

#[test]
fn a_long_prefill_does_not_starve_a_short_stream() {
    let mut bench = bench(false);
    let long = bench.connect();
    let short = bench.connect();
    bench.send(long, &long_prefill(3000, 1));
    bench.run_for(Duration::from_millis(20));
    bench.send_generate(short, "s", 20);
    let start = bench.now;
    let responses = bench.await_responses(short, 21, SECOND);
    assert_eq!(responses.last(), Some(&done(20)));
    // One step per poll (1 ms each), whatever the other slot is doing.
    assert!(
        bench.now - start < Duration::from_millis(40),
        "{}",
        bench.now - start
    );
    assert!(bench.clients[long].responses().is_empty());
}

#[test]
fn poll_reports_zero_delay_while_a_generation_can_step() {
    let mut bench = bench(false);
    let client = bench.connect();
    bench.send(client, &long_prefill(500, 1));
    assert!(bench.run_until(SECOND, |bench| bench.server.streaming() == 1));
    let outcome = bench.step_server_only();
    assert!(outcome.activity);
    assert_eq!(outcome.poll_delay, Some(Duration::ZERO));
    assert_eq!(outcome.streaming, 1);
    bench.await_responses(client, 2, SECOND);
    bench.run_for(Duration::from_millis(20));
    let outcome = bench.step_server_only();
    assert_eq!(outcome.streaming, 0);
    assert_ne!(outcome.poll_delay, Some(Duration::ZERO));
    assert!(!outcome.activity);
}

#[test]
fn waiting_for_tokens_is_not_a_timeout() {
    both(|tls| {
        let mut bench = bench(tls);
        let client = bench.connect_as(tls);
        // 15 s of prefill (one pending step per 1 ms poll): longer than the 10 s frame timeout, during
        // which the client neither sends nor receives anything.
        bench.send(client, &long_prefill(15_000, 3));
        let responses = bench.await_responses(client, 4, secs(20));
        assert_eq!(responses.len(), 4, "tls {tls}: {responses:?}");
        assert!(matches!(responses[3], Response::Done(_)), "{responses:?}");
        let counters = bench.server.counters();
        assert_eq!((counters.timeouts, counters.aborted), (0, 0));
        // Serving again: the idle timeout applies from the final frame on.
        let finished_at = bench.now;
        let responses = bench.await_end(client, secs(12));
        assert_eq!(responses.last(), Some(&Response::Error(ErrorCode::Timeout)));
        assert!(bench.now - finished_at > Duration::from_millis(9_900));
    });
}

#[test]
fn cancel_mid_stream_frees_the_session_within_one_step() {
    both(|tls| {
        let mut bench = bench(tls);
        bench.handler.sessions = 1;
        let client = bench.connect_as(tls);
        let other = bench.connect_as(tls);
        bench.send_generate(client, "a", 5000);
        await_tokens(&mut bench, client, 10, SECOND);
        let slot = running_slot(&bench);
        // The session is taken: another client is told so.
        bench.send_generate(other, "b", 1);
        assert_eq!(
            bench.await_responses(other, 1, SECOND),
            vec![Response::Error(ErrorCode::Busy)]
        );
        // The cancel on the link; the server's next poll reads it before it steps anything.
        bench.send_cancel(client);
        bench.flush_clients();
        let steps_before = bench.handler.steps.len();
        bench.step();
        assert_eq!(bench.handler.stops, vec![slot], "tls {tls}");
        assert!(
            !bench.handler.steps[steps_before..].contains(&slot),
            "tls {tls}: stepped after the cancel arrived"
        );
        let responses = bench.await_responses(client, 11, SECOND);
        assert_eq!(
            responses.last(),
            Some(&Response::Error(ErrorCode::Cancelled))
        );
        let tokens = bench.clients[client].token_count();
        assert_eq!(
            bench.clients[client].text(),
            expected_text("a", tokens as u32)
        );
        // The freed session serves the other client at once, and the cancelled connection serves on.
        bench.send_generate(other, "b", 3);
        assert_eq!(
            bench.await_responses(other, 5, SECOND).last(),
            Some(&done(3))
        );
        bench.send_request(client);
        let responses = bench.await_responses(client, tokens + 2, SECOND);
        assert_eq!(responses.last(), Some(&Response::ModelInfo(INFO)));
        let counters = bench.server.counters();
        assert_eq!(
            (
                counters.streams,
                counters.cancels,
                counters.streams_stopped,
                counters.streams_finished
            ),
            (2, 1, 0, 1)
        );
        assert_eq!(bench.handler.stops.len(), 1);
    });
}

#[test]
fn cancel_with_nothing_running_is_ignored() {
    both(|tls| {
        let mut bench = bench(tls);
        let client = bench.connect_as(tls);
        bench.send_cancel(client);
        bench.send_request(client);
        assert_eq!(
            bench.await_responses(client, 1, SECOND),
            vec![Response::ModelInfo(INFO)]
        );
        // A cancel racing the final frame: sent right after the generate, answered by nothing extra.
        bench.send_generate(client, "a", 1);
        bench.await_responses(client, 3, SECOND);
        bench.send_cancel(client);
        bench.send_request(client);
        let responses = bench.await_responses(client, 4, SECOND);
        assert_eq!(
            responses,
            vec![
                Response::ModelInfo(INFO),
                Response::Token(net::proto::Token {
                    id: 0,
                    text: "a0 ".into()
                }),
                done(1),
                Response::ModelInfo(INFO)
            ]
        );
        bench.run_for(Duration::from_millis(50));
        assert_eq!(bench.clients[client].responses().len(), 4);
        assert!(bench.handler.stops.is_empty());
        assert_eq!(bench.server.counters().cancels, 0);
    });
}

/// How a client leaves in the middle of a stream.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// FIN.
    Close,
    /// FIN after half a request frame.
    CloseMidFrame,
    /// RST.
    Reset,
}

#[test]
fn disconnect_mid_stream_calls_stop_once() {
    both(|tls| {
        for leave in [Leave::Close, Leave::CloseMidFrame, Leave::Reset] {
            let mut bench = bench(tls);
            let client = bench.connect_as(tls);
            let bystander = bench.connect_as(tls);
            bench.send_generate(client, "a", 5000);
            bench.send_generate(bystander, "b", 400);
            await_tokens(&mut bench, client, 20, SECOND);
            let slot = running_slot_of(&bench, "a");
            match leave {
                Leave::Close => bench.close(client),
                Leave::CloseMidFrame => {
                    bench.send(client, &frame_of(&Request::Cancel)[..3]);
                    bench.close(client);
                }
                Leave::Reset => bench.abort(client),
            }
            let stopped = bench.run_until(SECOND, |bench| bench.handler.stops_of(slot) > 0);
            assert!(stopped, "tls {tls} {leave:?}: never stopped");
            bench.run_for(Duration::from_millis(100));
            assert_eq!(bench.handler.stops, vec![slot], "tls {tls} {leave:?}");
            let counters = bench.server.counters();
            assert_eq!(counters.streams_stopped, 1, "tls {tls} {leave:?}");
            assert_eq!(
                counters.truncated,
                u64::from(matches!(leave, Leave::CloseMidFrame))
            );
            // The bystander's stream is whole.
            let responses = bench.await_responses(bystander, 401, SECOND);
            assert_eq!(responses.last(), Some(&done(400)), "tls {tls} {leave:?}");
            assert_eq!(bench.clients[bystander].text(), expected_text("b", 400));
            bench.close(bystander);
            bench.await_idle_server(secs(2));
            assert_eq!(bench.handler.stops.len(), 1);
        }
    });
}

/// The slot of the running generation whose tokens are labelled `label`.
fn running_slot_of(bench: &Bench, label: &str) -> usize {
    let slots: Vec<usize> = bench
        .handler
        .running
        .iter()
        .filter(|(_, generation)| generation.label == label)
        .map(|(&slot, _)| slot)
        .collect();
    assert_eq!(slots.len(), 1);
    slots[0]
}

#[test]
fn a_client_that_stops_reading_gets_no_compute_then_is_aborted_and_stopped() {
    both(|tls| {
        let mut bench = bench(tls);
        let stalled = bench.connect_with_buffers(256, 64 * 1024);
        if tls {
            bench.clients[stalled].tls = Some(Box::new(support::rustls_client()));
        }
        let reader = bench.connect_as(tls);
        // The stalled client reads until its generation starts (the TLS handshake needs reading), then
        // stops; its socket buffers fill and the server's steps for it stop too.
        bench.send_generate(stalled, "x", 10_000);
        assert!(bench.run_until(secs(2), |bench| bench.server.streaming() == 1));
        bench.clients[stalled].reading = false;
        let slot = running_slot(&bench);
        bench.send_generate(reader, "r", 8000);
        let steps_of = |bench: &Bench| {
            bench
                .handler
                .steps
                .iter()
                .filter(|&&stepped| stepped == slot)
                .count()
        };
        // Let the buffers fill: the steps for the stalled slot must stop well before its 10,000 tokens.
        // Note when its last step ran: the frame it queued is the one the client never takes.
        let mut last_step_at = bench.now;
        let mut seen = steps_of(&bench);
        for _ in 0..2000 {
            bench.step();
            if steps_of(&bench) != seen {
                seen = steps_of(&bench);
                last_step_at = bench.now;
            }
        }
        let blocked_at = steps_of(&bench);
        assert!(
            blocked_at < 3000,
            "tls {tls}: {blocked_at} steps for a client that does not read"
        );
        assert!(
            bench.now - last_step_at > SECOND,
            "tls {tls}: still stepping"
        );
        bench.run_for(secs(3));
        assert_eq!(
            steps_of(&bench),
            blocked_at,
            "tls {tls}: stepped while blocked"
        );
        // The other client's stream went on meanwhile: one token per poll.
        assert!(bench.clients[reader].token_count() >= 4900);
        // Aborted frame_timeout after the frame the socket would not take was queued.
        let aborted = bench.run_until(secs(10), |bench| bench.handler.stops_of(slot) == 1);
        assert!(aborted, "tls {tls}: not stopped");
        let waited = bench.now - last_step_at;
        assert!(
            waited >= secs(10) && waited < Duration::from_millis(10_050),
            "tls {tls}: aborted {waited} after the last step"
        );
        let counters = bench.server.counters();
        assert_eq!((counters.aborted, counters.streams_stopped), (1, 1));
        assert!(bench.run_until(SECOND, |bench| bench.state(stalled)
            == smoltcp::socket::tcp::State::Closed));
        let responses = bench.await_responses(reader, 8001, secs(5));
        assert_eq!(responses.last(), Some(&done(8000)), "tls {tls}");
        assert_eq!(bench.handler.stops, vec![slot]);
    });
}

#[test]
fn a_blocked_stream_does_not_spin_the_poll_loop() {
    let mut bench = bench(false);
    let client = bench.connect_with_buffers(256, 64 * 1024);
    bench.send_generate(client, "x", 10_000);
    assert!(bench.run_until(SECOND, |bench| bench.server.streaming() == 1));
    bench.clients[client].reading = false;
    bench.run_for(secs(2));
    let outcome = bench.step_server_only();
    assert_eq!(outcome.streaming, 1);
    let delay = outcome.poll_delay.expect("the send deadline is pending");
    assert!(delay > Duration::ZERO, "{delay}");
}

#[test]
fn busy_and_other_handler_errors_pass_through() {
    both(|tls| {
        let mut bench = bench(tls);
        bench.handler.sessions = 2;
        let clients: Vec<usize> = (0..3).map(|_| bench.connect_as(tls)).collect();
        bench.send_generate(clients[0], "a", 300);
        await_tokens(&mut bench, clients[0], 1, SECOND);
        bench.send_generate(clients[1], "b", 300);
        await_tokens(&mut bench, clients[1], 1, SECOND);
        bench.send_generate(clients[2], "c", 3);
        assert_eq!(
            bench.await_responses(clients[2], 1, SECOND),
            vec![Response::Error(ErrorCode::Busy)]
        );
        // Busy is an answer, not a close: the client retries on the same connection once a session frees.
        assert_eq!(
            bench.state(clients[2]),
            smoltcp::socket::tcp::State::Established
        );
        bench.await_responses(clients[0], 301, SECOND);
        bench.send_generate(clients[2], "c", 3);
        assert_eq!(
            bench.await_responses(clients[2], 5, SECOND).last(),
            Some(&done(3))
        );
        // The handler's refusals of bad generate requests come through as they are.
        bench.send(clients[2], &long_prefill(0, 1_000_000));
        bench.send(
            clients[2],
            &frame_of(&Request::Generate(GenerateRequest {
                prompt: Prompt::Tokens(vec![1, 2, 5000]),
                max_tokens: 1,
                sampling: Sampling::GREEDY,
                stop: Vec::new(),
            })),
        );
        let responses = bench.await_responses(clients[2], 7, SECOND);
        assert_eq!(
            responses[5..],
            [
                Response::Error(ErrorCode::ContextExceeded),
                Response::Error(ErrorCode::InvalidToken)
            ]
        );
        assert!(bench.handler.stops.is_empty());
    });
}

#[test]
fn protocol_violations_while_streaming_close_the_connection() {
    let mut too_large = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    too_large.extend_from_slice(&[0; 16]);
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "model info",
            frame_of(&Request::ModelInfo),
            ErrorCode::BadRequest,
        ),
        (
            "second generate",
            frame_of(&generate_request("z", 1)),
            ErrorCode::BadRequest,
        ),
        ("unknown tag", vec![0, 0, 0, 1, 9], ErrorCode::BadFrame),
        (
            "trailing bytes",
            vec![0, 0, 0, 2, 4, 0],
            ErrorCode::BadFrame,
        ),
        ("empty frame", vec![0, 0, 0, 0], ErrorCode::BadFrame),
        ("too large", too_large, ErrorCode::TooLarge),
        (
            "length 2^32-1",
            u32::MAX.to_be_bytes().to_vec(),
            ErrorCode::TooLarge,
        ),
    ];
    both(|tls| {
        for (name, bytes, code) in &cases {
            let mut bench = bench(tls);
            let bad = bench.connect_as(tls);
            let good = bench.connect_as(tls);
            bench.send_generate(bad, "a", 5000);
            bench.send_generate(good, "g", 300);
            await_tokens(&mut bench, bad, 10, SECOND);
            let slot = running_slot_of(&bench, "a");
            bench.send(bad, bytes);
            let responses = bench.await_end(bad, secs(2));
            assert_eq!(
                responses.last(),
                Some(&Response::Error(*code)),
                "tls {tls} {name}"
            );
            assert!(
                bench.clients[bad].saw_eof,
                "tls {tls} {name}: not closed with FIN"
            );
            let tokens = responses.len() - 1;
            assert_eq!(bench.clients[bad].text(), expected_text("a", tokens as u32));
            assert_eq!(bench.handler.stops, vec![slot], "tls {tls} {name}");
            // The other client is untouched.
            let responses = bench.await_responses(good, 301, SECOND);
            assert_eq!(responses.last(), Some(&done(300)), "tls {tls} {name}");
            assert_eq!(bench.clients[good].text(), expected_text("g", 300));
            let counters = bench.server.counters();
            assert_eq!(
                (counters.streams_stopped, counters.violations),
                (1, u64::from(*code == ErrorCode::BadRequest)),
                "tls {tls} {name}"
            );
            bench.close(good);
            bench.await_idle_server(secs(2));
            bench.assert_serves_a_new_client();
        }
    });
}

#[test]
fn a_broken_tls_record_while_streaming_stops_the_generation() {
    let mut bench = bench(true);
    let client = bench.connect_tls();
    bench.send_generate(client, "a", 5000);
    await_tokens(&mut bench, client, 10, SECOND);
    let slot = running_slot(&bench);
    // An application-data record that cannot decrypt, written under the client's TLS layer.
    bench.clients[client].wire_out.extend_from_slice(&[
        23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ]);
    bench.await_end(client, secs(2));
    assert_eq!(bench.handler.stops, vec![slot]);
    let counters = bench.server.counters();
    assert_eq!((counters.tls_failures, counters.streams_stopped), (1, 1));
    bench.await_idle_server(secs(2));
}

#[test]
fn a_dribbling_client_times_out_while_streaming() {
    both(|tls| {
        let mut bench = bench(tls);
        let client = bench.connect_as(tls);
        // A long prefill: nothing is sent to the client, so only the frame it starts can time it out.
        bench.send(client, &long_prefill(30_000, 1));
        assert!(bench.run_until(secs(2), |bench| bench.server.streaming() == 1));
        let slot = running_slot(&bench);
        let started = bench.now;
        // A cancel frame, one byte every 3 s: it would complete after 12 s.
        let cancel = frame_of(&Request::Cancel);
        let mut sent = 0;
        while !bench.is_finished(client) && bench.now - started < secs(20) {
            if sent < cancel.len() {
                bench.send(client, &cancel[sent..sent + 1]);
                sent += 1;
            }
            bench.run_for(secs(3));
        }
        assert_eq!(
            bench.clients[client].responses(),
            vec![Response::Error(ErrorCode::Timeout)],
            "tls {tls}"
        );
        let lasted = bench.now - started;
        assert!(lasted < secs(13), "tls {tls}: lasted {lasted}");
        assert_eq!(bench.handler.stops, vec![slot]);
        let counters = bench.server.counters();
        assert_eq!(
            (
                counters.timeouts,
                counters.streams_stopped,
                counters.cancels
            ),
            (1, 1, 0)
        );
    });
}

#[test]
fn an_unsendable_frame_ends_the_stream_and_the_connection() {
    let mut bench = bench(false);
    let client = bench.connect();
    bench.send_generate(client, support::HUGE, 3);
    bench.await_end(client, secs(2));
    assert_eq!(bench.handler.stops.len(), 1);
    let counters = bench.server.counters();
    assert_eq!((counters.unsendable, counters.streams_stopped), (1, 1));
    bench.assert_serves_a_new_client();
}

#[test]
fn more_clients_than_slots_are_refused_at_once_while_streams_run() {
    let limits = Limits {
        connections: 8,
        ..Limits::default()
    };
    let mut bench = bench_with(false, limits);
    let clients: Vec<usize> = (0..8).map(|_| bench.connect()).collect();
    for (i, &client) in clients.iter().enumerate() {
        bench.send_generate(client, &format!("c{i}-"), 2000);
    }
    bench.run_for(Duration::from_millis(100));
    // Four generate, four were told Busy and stay connected; a ninth client is refused with RST.
    assert_eq!(bench.server.streaming(), 4);
    let busy = clients
        .iter()
        .filter(|&&client| {
            bench.clients[client].responses() == vec![Response::Error(ErrorCode::Busy)]
        })
        .count();
    assert_eq!(busy, 4);
    let refused = bench.connect();
    assert!(bench.run_until(Duration::from_millis(50), |bench| bench
        .is_finished(refused)));
    assert!(!bench.clients[refused].was_established);
}

#[test]
fn a_cancel_pipelined_behind_its_generate_stops_it_before_any_step() {
    both(|tls| {
        let mut bench = bench(tls);
        let client = bench.connect_as(tls);
        // Generate, cancel and a model-info request in one write, then more of the same.
        let mut bytes = frame_of(&generate_request("a", 100));
        bytes.extend(frame_of(&Request::Cancel));
        bytes.extend(frame_of(&Request::ModelInfo));
        for _ in 0..3 {
            bench.send(client, &bytes);
        }
        let responses = bench.await_responses(client, 6, SECOND);
        assert_eq!(
            responses,
            (0..3)
                .flat_map(|_| [
                    Response::Error(ErrorCode::Cancelled),
                    Response::ModelInfo(INFO)
                ])
                .collect::<Vec<_>>(),
            "tls {tls}"
        );
        assert!(bench.handler.steps.is_empty(), "tls {tls}");
        assert_eq!(bench.handler.stops.len(), 3);
        let counters = bench.server.counters();
        assert_eq!((counters.streams, counters.cancels), (3, 3));
    });
}
