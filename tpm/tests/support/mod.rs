//! Test support: a provisioned swtpm started per test (`swtpm_process`), the transports to it, and
//! recording/replaying transports.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::time::Duration;
use tpm::transport::{SwtpmControl, SwtpmSocket, Transport, TransportError};

mod swtpm_process;

#[allow(
    unused_imports,
    reason = "each test binary uses a different part of this module"
)]
pub use swtpm_process::{provisioned, Swtpm, TempDir};

impl Swtpm {
    pub fn connect(&self) -> SwtpmSocket {
        SwtpmSocket::connect(self.data, Duration::from_secs(60))
            .expect("connect to swtpm data port")
    }

    pub fn control(&self) -> SwtpmControl {
        SwtpmControl::connect(self.control, Duration::from_secs(10))
            .expect("connect to swtpm control port")
    }
}

/// A transport that records every exchange of an inner transport.
pub struct Recording<T> {
    pub inner: T,
    pub exchanges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<T: Transport> Transport for Recording<T> {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let size = self.inner.transact(command, response)?;
        self.exchanges
            .push((command.to_vec(), response[..size].to_vec()));
        Ok(size)
    }
}

/// A transport that answers the first command with canned bytes and fails every later one.
pub struct Replay {
    pub response: Option<Vec<u8>>,
}

impl Transport for Replay {
    fn transact(&mut self, _command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let bytes = self.response.take().ok_or(TransportError::Io)?;
        let target = response
            .get_mut(..bytes.len())
            .ok_or(TransportError::ResponseTooLarge {
                announced: bytes.len() as u32,
                capacity: 0,
            })?;
        target.copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}
