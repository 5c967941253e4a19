//! The appliance's TLS record and handshake path, through the whole `net::Server` (smoltcp TCP, the connection
//! slot, rustls' unbuffered server, the frame decoder; docs/ARCHITECTURE.md §5): an unauthenticated client
//! sends the input as raw bytes on its TCP connection. Whatever it sends, its slot must come free within the
//! frame timeout, and a well-behaved TLS client must then be served, as `net/tests` require of every misbehaving
//! client. The test bench (an in-memory Ethernet link in virtual time) is net's own, shared with its tests.

#[path = "../../net/tests/support/mod.rs"]
mod support;

use net::Limits;
use smoltcp::time::Duration;

use support::Bench;

/// The appliance's protections (lifetime, request caps, eviction of idle connections), with short timeouts so that
/// each input costs little virtual time.
const LIMITS: Limits = Limits {
    connections: 2,
    rx_buffer: 8 * 1024,
    tx_buffer: 8 * 1024,
    frame_timeout: Duration::from_millis(300),
    close_timeout: Duration::from_millis(200),
    lifetime: Some(Duration::from_secs(600)),
    request_caps: true,
    evict_idle: true,
};

/// Sends `data` in pieces (the first byte picks how many milliseconds pass between 512-byte pieces), closes,
/// then checks that the slot comes free and that a new TLS client gets its answer.
pub fn tls_server(data: &[u8]) {
    let Some((&pause, stream)) = data.split_first() else {
        return;
    };
    let mut bench = Bench::tls_with_limits(LIMITS);
    let attacker = bench.connect();
    for piece in stream.chunks(512) {
        bench.send(attacker, piece);
        bench.run_for(Duration::from_millis(u64::from(pause % 8)));
    }
    bench.close(attacker);
    bench.await_idle_server(Duration::from_secs(2));
    bench.assert_serves_a_new_client();
}

/// A TLS 1.3 client's first flight (its ClientHello record) from a rustls client, the seed that takes the
/// fuzzer past the record layer into the handshake.
pub fn client_hello() -> Vec<u8> {
    let mut client = support::rustls_client();
    let mut flight = Vec::new();
    client.write_tls(&mut flight).expect("a ClientHello");
    flight
}
