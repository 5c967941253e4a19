//! `net::Server` with TLS 1.3 over the in-memory link: a rustls client on the bench's TCP socket asks for
//! model info, and a plaintext client on the TLS port gets an alert and a close.
mod support;

use net::proto::Response;
use net::Limits;
use smoltcp::time::Duration;
use support::{Bench, INFO};

#[test]
fn model_info_over_tls() {
    let mut bench = Bench::tls_with_limits(Limits::default());
    let client = bench.connect_tls();
    for _ in 0..3 {
        bench.send_request(client);
    }
    let responses = bench.await_responses(client, 3, Duration::from_secs(2));
    assert_eq!(responses, vec![Response::ModelInfo(INFO); 3]);
    assert!(!bench.clients[client].tls.as_ref().unwrap().is_handshaking());
    assert_eq!(bench.server.counters().requests, 3);
    // Every request came with this session's channel binding.
    assert_eq!(bench.handler.bindings.len(), 3);
    assert!(bench.handler.bindings.iter().all(Option::is_some));
    bench.close(client);
    bench.await_end(client, Duration::from_secs(2));
    assert!(bench.clients[client].tls_error.is_none());
}

#[test]
fn plaintext_frame_on_a_tls_server_gets_an_alert_and_close() {
    let mut bench = Bench::tls_with_limits(Limits::default());
    let index = bench.connect();
    bench.send_request(index);
    bench.close(index);
    assert!(bench.run_until(Duration::from_secs(3), |b| b.is_finished(index)));
    let inbox = &bench.clients[index].inbox;
    assert_eq!(inbox[..5], [0x15, 0x03, 0x03, 0x00, 0x02], "{inbox:02x?}");
    assert_eq!(inbox[5], 2);
    assert_eq!(bench.server.counters().tls_failures, 1);
    assert_eq!(bench.server.counters().requests, 0);
    bench.await_idle_server(Duration::from_secs(2));
}
