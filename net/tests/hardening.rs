//! What an unauthenticated client can hold (issue 12, item 4; docs/ARCHITECTURE.md §5), in virtual time over the
//! in-memory link: request caps (`Limits::request_caps`), the connection lifetime (`Limits::lifetime`),
//! eviction of idle connections from a full pool (`Limits::evict_idle`), and requests the handler defers
//! (`Reply::Defer`). Each test ends with a working client served.

mod support;

use net::proto::{ErrorCode, Request, Response};
use net::serving::ApplianceConfig;
use net::Limits;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;
use support::*;

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The appliance's own limits (every cap on), with the bench's pool of 4 slots.
fn hardened() -> Limits {
    let appliance = ApplianceConfig::from_cmdline("").unwrap().limits;
    Limits {
        connections: 4,
        ..appliance
    }
}

fn attest() -> Request {
    Request::Attest {
        nonce: [7; 32],
        pcr_mask: 0x7000,
    }
}

fn activate() -> Request {
    Request::ActivateCredential {
        credential_blob: vec![1, 2, 3],
        secret: vec![4, 5, 6],
    }
}

/// The bench's handler answers attestation requests `BadRequest` (the kernel's handler does the real
/// ones); the cap counts an answered request whatever the answer.
const REFUSED: Response = Response::Error(ErrorCode::BadRequest);

#[test]
fn each_capped_request_is_answered_once_per_connection() {
    for (second, what) in [
        (Request::ModelInfo, "model info before a generation"),
        (attest(), "attest"),
        (activate(), "activation"),
    ] {
        let mut bench = Bench::with_limits(hardened());
        let client = bench.connect();
        // One of each kind pipelined in one write, then the second of one kind.
        for request in [Request::ModelInfo, attest(), activate(), second] {
            bench.send(client, &frame_of(&request));
        }
        let responses = bench.await_end(client, secs(2));
        assert_eq!(
            responses,
            [Response::ModelInfo(INFO), REFUSED, REFUSED, REFUSED],
            "{what}"
        );
        let counters = bench.server.counters();
        assert_eq!((counters.over_cap, counters.requests), (1, 4), "{what}");
        bench.assert_serves_a_new_client();
    }
    // After a generation, model info is free (a verified client's keep-alive); the TPM's requests are not.
    let mut bench = Bench::with_limits(hardened());
    let client = bench.connect();
    for request in [Request::ModelInfo, attest(), activate()] {
        bench.send(client, &frame_of(&request));
    }
    bench.send_generate(client, "g", 2);
    bench.await_responses(client, 6, secs(2));
    for _ in 0..5 {
        bench.send_request(client);
    }
    bench.await_responses(client, 11, secs(2));
    bench.send(client, &frame_of(&attest()));
    let responses = bench.await_end(client, secs(2));
    assert_eq!(responses.len(), 12, "{responses:?}");
    assert!(matches!(responses[5], Response::Done(_)));
    assert_eq!(responses[6..11], vec![Response::ModelInfo(INFO); 5]);
    assert_eq!(responses[11], REFUSED);
    assert_eq!(bench.server.counters().over_cap, 1);
}

#[test]
fn a_client_asking_every_nine_seconds_loses_its_slot() {
    let mut bench = Bench::with_limits(hardened());
    let client = bench.connect();
    bench.send_request(client);
    assert_eq!(
        bench.await_responses(client, 1, SECOND),
        [Response::ModelInfo(INFO)]
    );
    bench.run_for(secs(9));
    // Within its frame timeout, but a second model info: refused and closed.
    bench.send_request(client);
    let responses = bench.await_end(client, SECOND);
    assert_eq!(responses, [Response::ModelInfo(INFO), REFUSED]);
    bench.await_idle_server(secs(6));
    bench.assert_serves_a_new_client();
}

#[test]
fn the_lifetime_ends_a_connection_at_its_next_request_boundary() {
    let limits = Limits {
        lifetime: Some(secs(30)),
        ..hardened()
    };
    let mut bench = Bench::with_limits(limits);
    let client = bench.connect();
    let mut generations = 0;
    // Generations every 9 s (each within the frame timeout): the connection would live forever.
    loop {
        bench.send_generate(client, "g", 3);
        bench.run_for(secs(9));
        if bench.is_finished(client) || bench.clients[client].saw_eof {
            break;
        }
        generations += 1;
        assert!(generations < 10, "the connection outlived its lifetime");
    }
    bench.await_end(client, SECOND);
    let responses = bench.clients[client].responses();
    assert_eq!(
        responses.last(),
        Some(&Response::Error(ErrorCode::Timeout)),
        "{responses:?}"
    );
    // Generations at 0, 9, 18 and 27 s completed; at 30 s the idle connection was closed.
    let done = responses
        .iter()
        .filter(|response| matches!(response, Response::Done(_)))
        .count();
    assert_eq!(done, 4);
    assert_eq!(bench.server.counters().expired, 1);

    // A generation running when the lifetime passes streams to its end, then the connection closes.
    let mut bench = Bench::with_limits(limits);
    let client = bench.connect();
    for _ in 0..3 {
        bench.send_generate(client, "g", 3);
        bench.run_for(secs(9));
    }
    // At 27 s: 5000 tokens at one per 1 ms step run past 30 s.
    bench.send_generate(client, "long", 5000);
    let responses = bench.await_end(client, secs(30));
    assert!(matches!(responses[responses.len() - 2], Response::Done(_)));
    assert_eq!(responses.last(), Some(&Response::Error(ErrorCode::Timeout)));
    assert!(bench.clients[client].text().contains("long4999 "));
    bench.assert_serves_a_new_client();
}

#[test]
fn a_full_pool_of_idle_connections_makes_room_for_a_new_client() {
    let mut bench = Bench::with_limits(hardened());
    let squatters: Vec<usize> = (0..4).map(|_| bench.connect()).collect();
    bench.run_for(Duration::from_millis(100));
    // The fourth squatter filled the pool; the oldest was reset so that a slot listens.
    assert_eq!(bench.server.busy_connections(), 3);
    assert_eq!(bench.server.counters().evicted, 1);
    assert_eq!(bench.state(squatters[0]), State::Closed);
    bench.assert_serves_a_new_client();
    // A connection with an answered request is never evicted: four of them fill the pool, and a fifth
    // client is refused with RST as before.
    let mut bench = Bench::with_limits(hardened());
    let mut talkers = Vec::new();
    for _ in 0..4 {
        let client = bench.connect();
        bench.send_request(client);
        bench.await_responses(client, 1, SECOND);
        talkers.push(client);
    }
    let refused = bench.connect();
    assert!(bench.await_end(refused, SECOND).is_empty());
    assert!(!bench.clients[refused].was_established);
    assert_eq!(bench.server.counters().evicted, 0);
    for &client in &talkers {
        assert_eq!(bench.state(client), State::Established);
    }
}

/// A storm of ten times the pool (4 slots) in half-open and silent connections: 20 spoofed SYNs and 20
/// silent clients, then one new attacker every 5 ms (200 a second, alternating SYN and silent connection,
/// as evicted attackers reconnect) while a TLS client connects (retrying if refused), asks for model
/// info and streams a generation. Returns the virtual time from the client's first attempt to its
/// `Done`.
fn storm_while_a_client_works(bench: &mut Bench) -> Duration {
    let mut syn_port = 50000;
    let mut attacker = |bench: &mut Bench, index: usize| {
        if index.is_multiple_of(2) {
            bench.inject_syn(syn_port);
            syn_port += 1;
        } else {
            bench.connect();
        }
    };
    for index in 0..40 {
        attacker(bench, index);
        bench.step();
    }
    bench.run_for(Duration::from_millis(10));
    let started = bench.now;
    let mut attempts = 0;
    let mut index = 40;
    let client = loop {
        attempts += 1;
        assert!(attempts <= 5, "refused {attempts} times");
        let client = bench.connect_tls();
        bench.send_request(client);
        bench.send_generate(client, "mine", 8);
        for step in 0..2000 {
            if bench.is_finished(client) || bench.clients[client].responses().len() >= 10 {
                break;
            }
            if step % 5 == 4 {
                attacker(bench, index);
                index += 1;
            }
            bench.step();
        }
        if bench.clients[client].was_established && bench.clients[client].responses().len() >= 10 {
            break client;
        }
    };
    let took = bench.now - started;
    let responses = bench.clients[client].responses();
    assert_eq!(responses[0], Response::ModelInfo(INFO));
    assert!(matches!(responses[9], Response::Done(_)));
    assert_eq!(
        bench.clients[client].text(),
        "mine0 mine1 mine2 mine3 mine4 mine5 mine6 mine7 "
    );
    took
}

#[test]
fn a_storm_of_idle_connections_cannot_keep_a_client_out() {
    let mut bench = Bench::tls_with_limits(hardened());
    let took = storm_while_a_client_works(&mut bench);
    let counters = bench.server.counters();
    eprintln!(
        "served through the storm in {took} (virtual), {} connections evicted",
        counters.evicted
    );
    assert!(took < secs(2), "took {took}");
    assert!(counters.evicted >= 20, "{counters:?}");
    bench.await_idle_server(secs(13));
    bench.assert_serves_a_new_client();
}

#[test]
fn without_eviction_the_same_storm_keeps_the_client_out() {
    // The test's own check: the storm above is one that matters.
    let limits = Limits {
        evict_idle: false,
        ..hardened()
    };
    let mut bench = Bench::tls_with_limits(limits);
    let kept_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        storm_while_a_client_works(&mut bench)
    }));
    assert!(kept_out.is_err(), "the client got through without eviction");
}

#[test]
fn a_deferred_request_is_answered_later_without_timing_out() {
    let mut bench = Bench::with_limits(hardened());
    let client = bench.connect();
    // Deferred for longer than the frame timeout (one offer per 1 ms step): still answered, once.
    bench.handler.defer = 12_000;
    bench.send_request(client);
    let responses = bench.await_responses(client, 1, secs(15));
    assert_eq!(responses, [Response::ModelInfo(INFO)]);
    assert!(bench.now.total_millis() >= 1000 * 1000 + 12_000);
    let counters = bench.server.counters();
    assert_eq!((counters.deferrals, counters.requests), (1, 1));
    assert_eq!(bench.handler.calls, 1);
    // A deferred connection is not idle: a full pool does not evict it.
    let mut bench = Bench::with_limits(hardened());
    let waiting = bench.connect();
    bench.handler.defer = 3_000;
    bench.send_request(waiting);
    bench.run_for(Duration::from_millis(50));
    for _ in 0..6 {
        bench.connect();
        bench.run_for(Duration::from_millis(50));
    }
    assert_eq!(bench.state(waiting), State::Established);
    assert_eq!(
        bench.await_responses(waiting, 1, secs(4)),
        [Response::ModelInfo(INFO)]
    );
}

#[test]
fn a_client_sending_only_cancels_is_still_idle() {
    let mut bench = Bench::with_limits(hardened());
    // A cancel with nothing running is ignored (no answer): it does not protect its connection from eviction.
    let canceller = bench.connect();
    bench.send(canceller, &frame_of(&Request::Cancel));
    bench.run_for(Duration::from_millis(50));
    // Two clients with answers (not evictable), then a fourth that fills the pool.
    for _ in 0..2 {
        let client = bench.connect();
        bench.send_request(client);
        bench.await_responses(client, 1, SECOND);
    }
    bench.connect();
    bench.run_for(Duration::from_millis(50));
    assert_eq!(bench.state(canceller), State::Closed);
    assert_eq!(bench.server.counters().evicted, 1);
    bench.assert_serves_a_new_client();
}
