//! The swtpm socket transport against a fake TCP peer that lies: each lie gives a typed error, bounded in time,
//! and a socket left mid-stream refuses further commands instead of reading someone else's bytes.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tpm::transport::{SwtpmSocket, Transport, TransportError};

const COMMAND: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8];

/// Serves one connection: reads each command and answers it with the next entry of `answers`, then closes
/// (or, for `None`, keeps the connection open without answering).
fn peer(answers: Vec<Option<Vec<u8>>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        for answer in answers {
            let mut command = [0u8; 12];
            if stream.read_exact(&mut command).is_err() {
                return;
            }
            match answer {
                Some(bytes) => {
                    let _ = stream.write_all(&bytes);
                }
                None => {
                    std::thread::sleep(Duration::from_secs(3));
                    return;
                }
            }
        }
    });
    address
}

fn response(size_field: u32, total: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; total];
    bytes[..2].copy_from_slice(&[0x80, 0x01]);
    bytes[2..6].copy_from_slice(&size_field.to_be_bytes());
    bytes
}

fn connect(address: std::net::SocketAddr) -> SwtpmSocket {
    SwtpmSocket::connect(address, Duration::from_millis(300)).unwrap()
}

#[test]
fn honest_peer() {
    let mut socket = connect(peer(vec![Some(response(20, 20)), Some(response(10, 10))]));
    let mut buffer = [0u8; 64];
    assert_eq!(socket.transact(&COMMAND, &mut buffer), Ok(20));
    assert_eq!(socket.transact(&COMMAND, &mut buffer), Ok(10));
}

#[test]
fn size_smaller_than_a_header() {
    let mut socket = connect(peer(vec![Some(response(3, 10))]));
    let mut buffer = [0u8; 64];
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::ResponseSizeTooSmall { announced: 3 })
    );
}

#[test]
fn size_larger_than_the_buffer_then_refuses_more() {
    let mut socket = connect(peer(vec![Some(response(100, 100)), Some(response(10, 10))]));
    let mut buffer = [0u8; 64];
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::ResponseTooLarge {
            announced: 100,
            capacity: 64
        })
    );
    // 90 unread bytes sit in the stream: the next response would be garbage, so the socket refuses.
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::Io)
    );
}

#[test]
fn fewer_bytes_than_announced() {
    let mut socket = connect(peer(vec![Some(response(40, 25))]));
    let mut buffer = [0u8; 64];
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::ResponseTruncated {
            announced: 40,
            received: 25
        })
    );
}

#[test]
fn header_cut_short() {
    let mut socket = connect(peer(vec![Some(vec![0x80, 0x01, 0, 0])]));
    let mut buffer = [0u8; 64];
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::ResponseTruncated {
            announced: 10,
            received: 4
        })
    );
}

#[test]
fn a_silent_peer_times_out() {
    let mut socket = connect(peer(vec![None]));
    let mut buffer = [0u8; 64];
    let start = Instant::now();
    assert_eq!(
        socket.transact(&COMMAND, &mut buffer),
        Err(TransportError::Io)
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn malformed_command_is_not_sent() {
    let mut socket = connect(peer(vec![Some(response(10, 10))]));
    let mut buffer = [0u8; 64];
    assert_eq!(
        socket.transact(&COMMAND[..8], &mut buffer),
        Err(TransportError::MalformedCommand)
    );
    assert_eq!(socket.transact(&COMMAND, &mut buffer), Ok(10));
}
