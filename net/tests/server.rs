//! `net::Server` end to end over an in-memory link: requests and answers, bad input, timeouts, connection
//! storms, DHCP. Each test drives virtual time; nothing sleeps.

mod support;

use net::frame::MAX_FRAME_LEN;
use net::proto::{ErrorCode, Request, Response};
use net::{Limits, NetConfig, Server, ServerError};
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};
use support::{Bench, CLIENT_IP, INFO, PORT, SERVER_IP, SERVER_MAC};

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn request_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    Request::ModelInfo.emit(&mut frame).unwrap();
    frame
}

fn error(code: ErrorCode) -> Vec<Response> {
    vec![Response::Error(code)]
}

#[test]
fn answers_a_request() {
    let mut bench = Bench::new();
    let client = bench.connect();
    bench.send_request(client);
    let responses = bench.await_responses(client, 1, SECOND);
    assert_eq!(responses, vec![Response::ModelInfo(INFO)]);
    assert_eq!(bench.handler.calls, 1);
    // The connection stays open for more requests until the client closes it.
    assert_eq!(
        bench.state(client),
        smoltcp::socket::tcp::State::Established
    );
    bench.close(client);
    bench.await_end(client, SECOND);
    bench.await_idle_server(SECOND);
    let counters = bench.server.counters();
    assert_eq!(
        (counters.accepted, counters.requests, counters.aborted),
        (1, 1, 0)
    );
}

#[test]
fn many_requests_on_one_connection() {
    let mut bench = Bench::new();
    let client = bench.connect();
    // Pipelined: 300 requests in one write.
    for _ in 0..300 {
        bench.send_request(client);
    }
    let responses = bench.await_responses(client, 300, secs(5));
    assert_eq!(responses.len(), 300);
    assert!(responses
        .iter()
        .all(|response| *response == Response::ModelInfo(INFO)));
    // Then one at a time, each waiting for its answer.
    for round in 1..=20 {
        bench.send_request(client);
        let responses = bench.await_responses(client, 300 + round, SECOND);
        assert_eq!(responses.len(), 300 + round);
    }
    bench.close(client);
    assert_eq!(bench.await_end(client, SECOND).len(), 320);
    assert_eq!(bench.server.counters().requests, 320);
}

#[test]
fn responses_larger_than_the_send_buffer_arrive_whole() {
    // A model-info response frame is 39 bytes; a 16-byte send buffer forces it across several polls.
    let limits = Limits {
        tx_buffer: 16,
        ..Limits::default()
    };
    let mut bench = Bench::with_limits(limits);
    let client = bench.connect();
    for _ in 0..50 {
        bench.send_request(client);
    }
    bench.close(client);
    let responses = bench.await_end(client, secs(10));
    assert_eq!(responses, vec![Response::ModelInfo(INFO); 50]);
}

#[test]
fn several_clients_at_once_with_interleaved_pieces() {
    let mut bench = Bench::new();
    let frame = request_frame();
    let clients: Vec<usize> = (0..4).map(|_| bench.connect()).collect();
    // Every client sends its frame in single bytes, round-robin, so all four decoders are mid-frame at once.
    for byte in &frame {
        for &client in &clients {
            bench.send(client, std::slice::from_ref(byte));
        }
        bench.run_for(Duration::from_millis(20));
    }
    for &client in &clients {
        assert_eq!(
            bench.await_responses(client, 1, SECOND),
            vec![Response::ModelInfo(INFO)]
        );
    }
    for &client in &clients {
        bench.send_request(client);
        bench.close(client);
    }
    for &client in &clients {
        assert_eq!(bench.await_end(client, SECOND).len(), 2);
    }
}

#[test]
fn bad_frames_get_an_error_then_close() {
    let mut too_large_body = vec![0xff; MAX_FRAME_LEN + 4];
    too_large_body[..4].copy_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    let mut max_size_garbage = vec![0xff; MAX_FRAME_LEN + 4];
    max_size_garbage[..4].copy_from_slice(&(MAX_FRAME_LEN as u32).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "unknown request tag",
            vec![0, 0, 0, 1, 9],
            ErrorCode::BadFrame,
        ),
        (
            "trailing bytes",
            vec![0, 0, 0, 3, 0, 0, 0],
            ErrorCode::BadFrame,
        ),
        ("empty body", vec![0, 0, 0, 0], ErrorCode::BadFrame),
        (
            "length 2^32-1",
            u32::MAX.to_be_bytes().to_vec(),
            ErrorCode::TooLarge,
        ),
        (
            "length 2^32-1 and more bytes",
            [&u32::MAX.to_be_bytes()[..], &[7; 3000]].concat(),
            ErrorCode::TooLarge,
        ),
        ("one over the maximum", too_large_body, ErrorCode::TooLarge),
        (
            "maximum-size garbage",
            max_size_garbage,
            ErrorCode::BadFrame,
        ),
        (
            "text",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ErrorCode::TooLarge,
        ),
    ];
    let mut bench = Bench::new();
    for (name, bytes, code) in cases {
        let client = bench.connect();
        // A good request first: the error must not depend on a fresh connection.
        bench.send_request(client);
        bench.send(client, &bytes);
        let responses = bench.await_end(client, secs(5));
        assert_eq!(
            responses,
            vec![Response::ModelInfo(INFO), Response::Error(code)],
            "{name}"
        );
        bench.assert_serves_a_new_client();
    }
    bench.await_idle_server(secs(10));
    let counters = bench.server.counters();
    assert_eq!(
        (counters.bad_frames, counters.too_large, counters.aborted),
        (4, 4, 0)
    );
}

#[test]
fn random_garbage_never_hurts_the_server() {
    let mut bench = Bench::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..40 {
        let client = bench.connect();
        let mut bytes = Vec::new();
        for _ in 0..(round * 37 % 500 + 1) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        // Small announced lengths too, so bodies get decoded rather than refused by size.
        if round % 2 == 0 {
            let header = bytes.len().min(3);
            bytes[..header].fill(0);
        }
        bench.send(client, &bytes);
        bench.close(client);
        let responses = bench.await_end(client, secs(15));
        // Each connection ends, cleanly, with answers to any valid requests, then at most one error.
        let (last, answers) = match responses.split_last() {
            Some((last, answers)) => (Some(last), answers),
            None => (None, &[][..]),
        };
        assert!(
            answers
                .iter()
                .all(|answer| *answer == Response::ModelInfo(INFO)),
            "round {round}"
        );
        assert!(
            matches!(
                last,
                None | Some(Response::ModelInfo(_))
                    | Some(Response::Error(ErrorCode::BadFrame | ErrorCode::TooLarge))
            ),
            "round {round}: {responses:?}"
        );
        assert!(
            bench.clients[client].saw_eof,
            "round {round}: not closed with FIN"
        );
    }
    assert_eq!(bench.server.counters().aborted, 0);
    bench.assert_serves_a_new_client();
}

#[test]
fn every_truncation_just_closes() {
    let mut bench = Bench::new();
    let frame = request_frame();
    // A longer announced body as well, so cuts land inside a body that is still being collected.
    let mut long = vec![0, 0, 0, 200];
    long.extend_from_slice(&[0; 200]);
    let mut expected_truncated = 0;
    for whole in [&frame[..], &long[..]] {
        for cut in 0..whole.len() {
            let client = bench.connect();
            bench.send(client, &whole[..cut]);
            bench.close(client);
            let responses = bench.await_end(client, secs(2));
            assert_eq!(responses, vec![], "cut {cut} of {}", whole.len());
            assert!(
                bench.clients[client].saw_eof,
                "cut {cut}: closed without FIN"
            );
            expected_truncated += u64::from(cut > 0);
        }
    }
    bench.assert_serves_a_new_client();
    bench.await_idle_server(SECOND);
    let counters = bench.server.counters();
    assert_eq!(counters.truncated, expected_truncated);
    assert_eq!(
        (counters.bad_frames, counters.aborted, counters.requests),
        (0, 0, 1)
    );
}

#[test]
fn idle_client_times_out() {
    let mut bench = Bench::new();
    let client = bench.connect();
    bench.run_until(SECOND, |bench| bench.clients[client].was_established);
    let connected_at = bench.now;
    let responses = bench.await_end(client, secs(15));
    assert_eq!(responses, error(ErrorCode::Timeout));
    let waited = bench.now - connected_at;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_500),
        "{waited}"
    );
    assert_eq!(bench.server.counters().timeouts, 1);
}

#[test]
fn idle_timeout_counts_from_the_last_answer() {
    let mut bench = Bench::new();
    let client = bench.connect();
    // A request every 6 s keeps the connection alive past any single 10 s window.
    for round in 1..=4 {
        bench.run_for(secs(6));
        bench.send_request(client);
        assert_eq!(bench.await_responses(client, round, SECOND).len(), round);
    }
    let responses = bench.await_end(client, secs(15));
    assert_eq!(responses.last(), Some(&Response::Error(ErrorCode::Timeout)));
    assert_eq!(responses.len(), 5);
}

#[test]
fn slow_dribbling_client_is_cut_off() {
    let mut bench = Bench::new();
    let client = bench.connect();
    bench.run_until(SECOND, |bench| bench.clients[client].was_established);
    let connected_at = bench.now;
    // A frame announcing 1000 bytes, then one byte every 400 ms: always active, never done.
    bench.send(client, &[0, 0, 3, 232]);
    while !bench.is_finished(client) && bench.now - connected_at < secs(30) {
        bench.send(client, &[0]);
        bench.run_for(Duration::from_millis(400));
    }
    assert_eq!(bench.clients[client].responses(), error(ErrorCode::Timeout));
    let lasted = bench.now - connected_at;
    assert!(lasted < Duration::from_secs(11), "slot held for {lasted}");
}

#[test]
fn a_slow_client_does_not_delay_a_fast_one() {
    let mut bench = Bench::new();
    let slow = bench.connect();
    bench.send(slow, &[0, 0]);
    let fast = bench.connect();
    let garbage = bench.connect();
    bench.send(garbage, &[0, 0, 0, 1, 0xee]);
    for round in 1..=10 {
        bench.send_request(fast);
        let start = bench.now;
        assert_eq!(bench.await_responses(fast, round, SECOND).len(), round);
        assert!(bench.now - start < Duration::from_millis(50));
    }
    assert_eq!(bench.await_end(garbage, SECOND), error(ErrorCode::BadFrame));
    // The slow client finishes its frame and is answered as if nothing had happened.
    bench.send(slow, &[0, 1, 0]);
    assert_eq!(
        bench.await_responses(slow, 1, SECOND),
        vec![Response::ModelInfo(INFO)]
    );
}

#[test]
fn half_closed_client_still_gets_its_answers() {
    let mut bench = Bench::new();
    let client = bench.connect();
    for _ in 0..3 {
        bench.send_request(client);
    }
    bench.close(client);
    assert_eq!(
        bench.await_end(client, SECOND),
        vec![Response::ModelInfo(INFO); 3]
    );
}

#[test]
fn client_reset_frees_the_slot() {
    let limits = Limits {
        connections: 1,
        ..Limits::default()
    };
    let mut bench = Bench::with_limits(limits);
    let client = bench.connect();
    bench.send(client, &[0, 0]);
    bench.run_for(Duration::from_millis(50));
    assert_eq!(bench.server.busy_connections(), 1);
    bench.abort(client);
    bench.await_idle_server(SECOND);
    assert_eq!(bench.server.counters().reset, 1);
    bench.assert_serves_a_new_client();
}

#[test]
fn client_that_stops_reading_is_aborted() {
    let mut bench = Bench::new();
    // A small receive window that the client never drains, and requests that keep coming.
    let client = bench.connect_with_buffers(256, 64 * 1024);
    bench.clients[client].reading = false;
    for _ in 0..2000 {
        bench.send_request(client);
    }
    assert!(bench.run_until(SECOND, |bench| bench.clients[client].was_established));
    let started = bench.now;
    bench.await_idle_server(secs(30));
    assert!(
        bench.now - started < Duration::from_secs(16),
        "took {}",
        bench.now - started
    );
    assert_eq!(
        bench.server.counters().aborted,
        1,
        "{:?} client {}",
        bench.server.counters(),
        bench.state(client)
    );
    bench.assert_serves_a_new_client();
}

#[test]
fn client_that_never_closes_its_side_is_aborted() {
    let mut bench = Bench::new();
    let client = bench.connect();
    bench.clients[client].close_on_eof = false;
    bench.send(client, &[0, 0, 0, 1, 0x77]);
    // The server answers BadFrame and sends FIN; the client never sends its own FIN.
    bench.run_until(SECOND, |bench| bench.clients[client].saw_eof);
    assert_eq!(
        bench.clients[client].responses(),
        error(ErrorCode::BadFrame)
    );
    let closed_at = bench.now;
    bench.await_idle_server(secs(10));
    let waited = bench.now - closed_at;
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_millis(5500),
        "{waited}"
    );
    assert_eq!(bench.server.counters().aborted, 1);
    // The RST reached the client.
    assert!(bench.run_until(SECOND, |bench| bench.state(client)
        == smoltcp::socket::tcp::State::Closed));
}

#[test]
fn connection_storm_is_served_or_refused_then_recovers() {
    let mut bench = Bench::new();
    let storm: Vec<usize> = (0..24).map(|_| bench.connect()).collect();
    for &client in &storm {
        bench.send_request(client);
        bench.close(client);
    }
    for &client in &storm {
        bench.await_end(client, secs(5));
    }
    let mut served = 0;
    for &client in &storm {
        let responses = bench.clients[client].responses();
        if bench.clients[client].was_established {
            assert_eq!(
                responses,
                vec![Response::ModelInfo(INFO)],
                "client {client}"
            );
            served += 1;
        } else {
            // Refused with RST: never connected, nothing received.
            assert!(responses.is_empty());
        }
    }
    assert!(served >= 4, "only {served} served");
    assert!(
        served < storm.len() as u64,
        "the storm never exceeded the pool"
    );
    assert_eq!(bench.server.counters().requests, served);
    bench.await_idle_server(SECOND);
    bench.assert_serves_a_new_client();
}

#[test]
fn refused_clients_that_retry_are_all_served() {
    let mut bench = Bench::new();
    let mut pending: Vec<usize> = (0..16).map(|_| bench.connect()).collect();
    let mut served = 0;
    let mut refusals = 0;
    for _round in 0..50 {
        for &client in &pending {
            bench.send_request(client);
            bench.close(client);
        }
        for &client in &pending {
            bench.await_end(client, secs(2));
        }
        let mut retry = Vec::new();
        for client in pending {
            if bench.clients[client].was_established {
                assert_eq!(
                    bench.clients[client].responses(),
                    vec![Response::ModelInfo(INFO)]
                );
                served += 1;
            } else {
                refusals += 1;
                retry.push(bench.connect());
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
    }
    assert_eq!(served, 16);
    assert!(refusals > 0, "the pool was never full");
}

#[test]
fn unfinished_handshakes_hold_slots_only_until_their_timeout() {
    let mut bench = Bench::new();
    for port in 50000..50004 {
        bench.inject_syn(port);
    }
    bench.run_for(Duration::from_millis(100));
    assert_eq!(bench.server.busy_connections(), 4);
    let refused = bench.connect();
    assert!(bench.await_end(refused, SECOND).is_empty());
    assert!(!bench.clients[refused].was_established);
    bench.await_idle_server(secs(11));
    assert_eq!(bench.server.counters().aborted, 4);
    assert_eq!(bench.server.counters().accepted, 0);
    bench.assert_serves_a_new_client();
}

#[test]
fn silent_connections_hold_slots_only_until_their_timeout() {
    let mut bench = Bench::new();
    let squatters: Vec<usize> = (0..4).map(|_| bench.connect()).collect();
    bench.run_for(Duration::from_millis(100));
    assert_eq!(bench.server.busy_connections(), 4);
    // All slots are taken: the next client is refused.
    let refused = bench.connect();
    bench.send_request(refused);
    assert!(bench.await_end(refused, SECOND).is_empty());
    assert!(!bench.clients[refused].was_established);
    // Each squatter gets its timeout, and then there is room again.
    for client in squatters {
        assert_eq!(bench.await_end(client, secs(11)), error(ErrorCode::Timeout));
    }
    bench.assert_serves_a_new_client();
}

#[test]
fn poll_reports_deadlines_and_quiet() {
    let mut bench = Bench::new();
    let client = bench.connect();
    bench.run_for(Duration::from_millis(200));
    // A connected, silent client: the next thing due is its frame deadline, under 10 s away.
    let outcome = poll_once(&mut bench);
    let delay = outcome.poll_delay.expect("a deadline is pending");
    assert!(
        delay <= Duration::from_secs(10) && delay > Duration::from_secs(9),
        "{delay}"
    );
    // Nothing arrived since the last poll: nothing happens.
    assert!(!poll_once(&mut bench).activity);
    bench.send_request(client);
    bench.await_responses(client, 1, SECOND);
    let _ = client;
}

/// Polls only the server, without advancing time or touching the link.
fn poll_once(bench: &mut Bench) -> net::PollOutcome {
    bench.step_server_only()
}

#[test]
fn static_configuration_is_applied() {
    let bench = Bench::new();
    assert_eq!(bench.server.ipv4_cidr(), Some(Ipv4Cidr::new(SERVER_IP, 24)));
    assert_eq!(bench.server.gateway(), Some(CLIENT_IP));
    assert_eq!(bench.server.port(), PORT);
    assert_eq!(bench.server.mac(), SERVER_MAC);
}

#[test]
fn dhcp_lease_brings_the_server_up() {
    let mut bench = Bench::with(&format!("ip=dhcp port={PORT}"), Limits::default());
    assert_eq!(bench.server.ipv4_cidr(), None);
    let leased = bench.run_until(secs(10), |bench| bench.server.ipv4_cidr().is_some());
    assert!(leased, "no lease");
    assert_eq!(bench.server.ipv4_cidr(), Some(Ipv4Cidr::new(SERVER_IP, 24)));
    assert_eq!(bench.server.gateway(), Some(CLIENT_IP));
    assert_eq!((bench.dhcp().offers, bench.dhcp().acks), (1, 1));
    assert_eq!(bench.server.counters().leases, 1);
    bench.assert_serves_a_new_client();
}

#[test]
fn without_a_lease_nothing_is_served() {
    let mut bench = Bench::with(&format!("ip=dhcp port={PORT}"), Limits::default());
    bench.dhcp().silent = true;
    let client = bench.connect();
    bench.send_request(client);
    bench.run_for(secs(3));
    assert_eq!(bench.server.ipv4_cidr(), None);
    assert!(!bench.clients[client].was_established);
    assert_eq!(bench.server.counters().accepted, 0);
}

#[test]
fn bad_construction_is_an_error() {
    let config = NetConfig::parse("ip=10.0.2.15/24").unwrap();
    let mut bench = Bench::new();
    let device = bench.server_device();
    let now = smoltcp::time::Instant::ZERO;
    let multicast = EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]);
    assert_eq!(
        Server::new(config, multicast, device, now, 1).err(),
        Some(ServerError::BadMac)
    );
    assert_eq!(
        Server::new(config, EthernetAddress::BROADCAST, device, now, 1).err(),
        Some(ServerError::BadMac)
    );
    let port_zero = NetConfig { port: 0, ..config };
    assert_eq!(
        Server::new(port_zero, SERVER_MAC, device, now, 1).err(),
        Some(ServerError::BadPort)
    );
    for limits in [
        Limits {
            connections: 0,
            ..Limits::default()
        },
        Limits {
            connections: net::server::MAX_CONNECTIONS + 1,
            ..Limits::default()
        },
        Limits {
            rx_buffer: 0,
            ..Limits::default()
        },
        Limits {
            tx_buffer: 0,
            ..Limits::default()
        },
        Limits {
            frame_timeout: Duration::from_secs(3601),
            ..Limits::default()
        },
        Limits {
            close_timeout: Duration::from_secs(u64::MAX / 1_000_000),
            ..Limits::default()
        },
    ] {
        let result = Server::with_limits(config, limits, SERVER_MAC, device, now, 1);
        assert_eq!(result.err(), Some(ServerError::BadLimits));
    }
}
