//! The client's entry points that need no verification: resolving an endpoint and asking a running appliance for
//! its model information over TLS ([`crate::session`], wire types `net::proto`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use net::proto::ModelInfo;

use crate::session::UnverifiedSession;

/// Resolves `HOST:PORT` to the first address it names.
pub fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr> {
    endpoint
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve {endpoint}; expected HOST:PORT, e.g. 127.0.0.1:7000")
        })?
        .next()
        .ok_or_else(|| anyhow!("{endpoint} resolves to no address"))
}

/// Asks the appliance for the length and SHA-256 of the model it booted with, on a fresh TLS session. The answer
/// is unverified (the quote is what proves the model); it serves as a readiness probe and for `cloister info`.
pub fn model_info(endpoint: SocketAddr, timeout: Duration) -> Result<ModelInfo> {
    UnverifiedSession::connect(endpoint, timeout)?.model_info()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::{Loopback, Reply};
    use net::proto::{ErrorCode, Request, Response};
    use std::io::Write as _;
    use std::net::TcpListener;

    #[test]
    fn model_info_round_trip_over_tls() {
        let info = ModelInfo {
            length: 98_362_432,
            sha256: [0x5a; 32],
        };
        let server = Loopback::start(1, move |request, _| {
            assert_eq!(request, &Request::ModelInfo);
            Reply::Respond(Response::ModelInfo(info))
        })
        .unwrap();
        assert_eq!(
            model_info(server.address(), Duration::from_secs(10)).unwrap(),
            info
        );
        let served = server.join().unwrap();
        assert_eq!(served.requests, [Request::ModelInfo]);
        assert!(served.failures.is_empty(), "{:?}", served.failures);
    }

    #[test]
    fn error_answers_are_typed_errors() {
        let server =
            Loopback::start(1, |_, _| Reply::Respond(Response::Error(ErrorCode::Busy))).unwrap();
        let error = model_info(server.address(), Duration::from_secs(10)).unwrap_err();
        assert_eq!(
            error.downcast_ref::<crate::session::ApplianceError>(),
            Some(&crate::session::ApplianceError(ErrorCode::Busy))
        );
        assert!(error.to_string().contains("busy"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn a_plain_tcp_server_fails_the_handshake() {
        // The old plaintext protocol: a framed answer where a TLS ServerHello belongs.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut answer = Vec::new();
            Response::Error(ErrorCode::BadFrame)
                .emit(&mut answer)
                .unwrap();
            let _ = stream.write_all(&answer);
        });
        let error = model_info(address, Duration::from_secs(10)).unwrap_err();
        assert!(
            format!("{error:#}").contains("TLS 1.3 handshake"),
            "{error:#}"
        );
        thread.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let error = model_info(address, Duration::from_millis(300)).unwrap_err();
        drop(listener);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(format!("{error:#}").contains("handshake"), "{error:#}");
    }
}
