//! A plain-TCP client for the appliance protocol: framed postcard messages (`net::frame`, `net::proto`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use net::frame::{self, HEADER_LEN};
use net::proto::{ModelInfo, Request, Response};

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

/// Connects with `timeout` for the connection and for every later read and write.
pub fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&endpoint, timeout)
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one request as one frame.
pub fn send_request(stream: &mut impl Write, request: &Request) -> Result<()> {
    let mut bytes = Vec::new();
    request
        .emit(&mut bytes)
        .map_err(|error| anyhow!("cannot frame {request:?}: {error:?}"))?;
    stream
        .write_all(&bytes)
        .context("cannot send the request")?;
    stream.flush()?;
    Ok(())
}

/// Reads exactly one framed response; the announced length is checked before the body is allocated.
pub fn read_response(stream: &mut impl Read) -> Result<Response> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .context("the appliance closed the connection or sent no complete frame header")?;
    let length =
        frame::parse_header(header).map_err(|error| anyhow!("bad frame header: {error:?}"))?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .with_context(|| format!("the appliance announced {length} bytes but sent fewer"))?;
    Response::parse(&body).map_err(|error| anyhow!("malformed response ({error:?}): {body:02x?}"))
}

/// Sends `request` on a fresh connection and returns the appliance's one response.
pub fn request(endpoint: SocketAddr, request: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = connect(endpoint, timeout)?;
    send_request(&mut stream, request)?;
    read_response(&mut stream)
}

/// Asks the appliance for the length and SHA-256 of the model it booted with.
pub fn model_info(endpoint: SocketAddr, timeout: Duration) -> Result<ModelInfo> {
    match request(endpoint, &Request::ModelInfo, timeout)? {
        Response::ModelInfo(info) => Ok(info),
        Response::Error(code) => bail!("the appliance answered with error {code:?}"),
        other => bail!("the appliance answered a model-info request with {other:?}"),
    }
}

/// Model information as the JSON object `runner info` prints.
pub fn model_info_json(info: &ModelInfo) -> String {
    format!(
        "{{\"length\":{},\"sha256\":\"{}\"}}",
        info.length,
        crate::models::hex(&info.sha256)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::proto::ErrorCode;
    use std::net::TcpListener;

    /// Serves one connection: reads one request frame, checks it, then writes `answer` raw.
    fn one_shot_server(answer: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 5];
            stream.read_exact(&mut request).unwrap();
            assert_eq!(request, [0, 0, 0, 1, 0], "a framed Request::ModelInfo");
            stream.write_all(&answer).unwrap();
        });
        address
    }

    #[test]
    fn model_info_round_trip() {
        let info = ModelInfo {
            length: 98_362_432,
            sha256: [0x5a; 32],
        };
        let mut answer = Vec::new();
        Response::ModelInfo(info).emit(&mut answer).unwrap();
        let address = one_shot_server(answer);
        assert_eq!(model_info(address, Duration::from_secs(10)).unwrap(), info);
        let json = model_info_json(&info);
        assert_eq!(
            json,
            format!("{{\"length\":98362432,\"sha256\":\"{}\"}}", "5a".repeat(32))
        );
    }

    #[test]
    fn error_and_garbage_answers_are_errors() {
        let mut answer = Vec::new();
        Response::Error(ErrorCode::Busy).emit(&mut answer).unwrap();
        let error = model_info(one_shot_server(answer), Duration::from_secs(10)).unwrap_err();
        assert!(error.to_string().contains("Busy"), "{error}");

        let error =
            model_info(one_shot_server(vec![0xff; 8]), Duration::from_secs(10)).unwrap_err();
        assert!(error.to_string().contains("bad frame header"), "{error}");

        let error = model_info(
            one_shot_server(vec![0, 0, 0, 9, 0]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("announced 9 bytes"),
            "{error:#}"
        );

        let error = model_info(
            one_shot_server(vec![0, 0, 0, 1, 7]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(error.to_string().contains("malformed"), "{error}");
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let error = model_info(address, Duration::from_millis(200)).unwrap_err();
        drop(listener);
        assert!(
            format!("{error:#}").contains("no complete frame header"),
            "{error:#}"
        );
    }
}
