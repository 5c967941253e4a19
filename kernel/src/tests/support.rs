//! Test support: a provisioned swtpm started per test (free ports, private state, killed on drop), from the same
//! source as the tpm crate's tests (`tpm/tests/support/swtpm_process.rs`), and a transport to its data port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tpm::transport::{Transport, TransportError};

#[path = "../../../tpm/tests/support/swtpm_process.rs"]
mod swtpm_process;

pub use swtpm_process::{Swtpm, TempDir};

impl Swtpm {
    pub fn connect(&self) -> Socket {
        let stream = TcpStream::connect(self.data).expect("connect to swtpm data port");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        Socket(stream)
    }
}

/// swtpm's data port: raw TPM command and response frames over TCP. (`tpm`'s own socket transport
/// needs its `std` feature, which would pull std into the freestanding binary's dependency graph.)
pub struct Socket(TcpStream);

impl Transport for Socket {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.0.write_all(command).map_err(|_| TransportError::Io)?;
        let mut header = [0u8; 10];
        self.0
            .read_exact(&mut header)
            .map_err(|_| TransportError::Io)?;
        let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if size < header.len() || size > response.len() {
            return Err(TransportError::Io);
        }
        response[..10].copy_from_slice(&header);
        self.0
            .read_exact(&mut response[10..size])
            .map_err(|_| TransportError::Io)?;
        Ok(size)
    }
}
