//! The one-method TPM transport (`transact(command, response)`) and, with the `std` feature, swtpm's TCP
//! socket interface.
//!
//! A transport moves one complete TPM 2.0 command frame to the TPM and one complete response frame back
//! (TPM 2.0 Library Part 1 §18: a response starts with tag, responseSize, responseCode). It checks only
//! the framing it needs to move bytes: the response header's size field against the bytes received and
//! the caller's buffer. Interpreting the response code is the job of [`crate::commands`].
//!
//! swtpm's data port speaks raw command bytes, one command at a time (docs/ARCHITECTURE.md §3); its control port speaks
//! swtpm's own big-endian u32 protocol (`man swtpm-ioctls`: CMD_INIT = 2, CMD_SHUTDOWN = 3, CMD_STOP = 0x0e).

/// Length of the TPM 2.0 command/response header: tag (2), size (4), code (4).
pub const HEADER_LEN: usize = 10;

/// Moves one TPM 2.0 command to the TPM and its response back.
pub trait Transport {
    /// Sends `command` (a complete frame) and writes the complete response frame into `response`.
    ///
    /// Returns the response length. On success the response is at least [`HEADER_LEN`] bytes and its header's
    /// size field equals the returned length.
    ///
    /// # Errors
    ///
    /// Any [`TransportError`]: the driver or the channel failed, as opposed to the TPM answering with an
    /// error code (which is a successful transaction carrying a nonzero response code).
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        (**self).transact(command, response)
    }
}

/// Where a TIS exchange was when a timeout hit (PTP FIFO state machine names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for TPM_ACCESS.activeLocality after requestUse (timeout A).
    RequestLocality,
    /// Waiting for TPM_STS.commandReady (timeout B).
    CommandReady,
    /// Waiting for a nonzero burstCount while writing the command.
    SendBurst,
    /// Waiting for TPM_STS.stsValid to check Expect while writing the command (timeout C).
    SendExpect,
    /// Waiting for TPM_STS.dataAvail after tpmGo (the command duration).
    Execute,
    /// Waiting for a nonzero burstCount while reading the response.
    ReceiveBurst,
    /// Waiting for TPM_STS.stsValid while reading the response (timeout C).
    ReceiveValid,
}

/// Failures of the driver or channel, never "the TPM said no" (see [`crate::rc`] for that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// No TPM answers at the register window: TPM_ACCESS.tpmRegValidSts never set, or DID_VID reads all ones.
    NoDevice,
    /// The TPM did not reach the awaited state in time.
    Timeout(Stage),
    /// The command is shorter than a header, or its size field disagrees with its length.
    MalformedCommand,
    /// The command is larger than the transport can carry.
    CommandTooLarge,
    /// While the command was being written, TPM_STS.Expect said the TPM wanted no more bytes although some
    /// remained, or still wanted bytes after the last one. The command was aborted (commandReady).
    ExpectMismatch,
    /// The response header announced fewer than [`HEADER_LEN`] bytes.
    ResponseSizeTooSmall {
        /// The size field as the TPM sent it.
        announced: u32,
    },
    /// The response header announced more bytes than the response buffer holds.
    ResponseTooLarge {
        /// The size field as the TPM sent it.
        announced: u32,
        /// The caller's buffer length.
        capacity: u32,
    },
    /// The TPM stopped offering response bytes (dataAvail clear, or the socket closed) before the announced size.
    ResponseTruncated {
        /// The size field as the TPM sent it.
        announced: u32,
        /// Bytes actually received.
        received: u32,
    },
    /// TPM_STS.dataAvail was still set after the announced number of bytes had been read.
    ResponseOverrun,
    /// The host channel (socket) failed.
    Io,
}

#[cfg(feature = "std")]
pub use self::swtpm::{SwtpmControl, SwtpmSocket};

#[cfg(feature = "std")]
mod swtpm {
    use super::{Transport, TransportError, HEADER_LEN};
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// swtpm's TCP data channel (`swtpm socket --tpm2 --server type=tcp,port=P`).
    ///
    /// After a failure in the middle of an exchange the stream's position in the byte stream is unknown, so
    /// the socket refuses every later command with [`TransportError::Io`]; connect again to go on.
    #[derive(Debug)]
    pub struct SwtpmSocket {
        stream: TcpStream,
        broken: bool,
    }

    impl SwtpmSocket {
        /// Connects to swtpm's data port. `timeout` bounds every read and write (a hung swtpm gives
        /// [`TransportError::Io`], never a hang).
        ///
        /// # Errors
        ///
        /// The connection or the socket options failed.
        pub fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
            Self::from_stream(TcpStream::connect_timeout(&address, timeout)?, timeout)
        }

        /// A stream already connected to swtpm's data channel, e.g. one end of a loopback pair whose other end
        /// swtpm was given with `--server type=tcp,fd=N`. `timeout` bounds every read and write, as in
        /// [`Self::connect`].
        ///
        /// # Errors
        ///
        /// The socket options failed.
        pub fn from_stream(stream: TcpStream, timeout: Duration) -> std::io::Result<Self> {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.set_nodelay(true)?;
            Ok(Self {
                stream,
                broken: false,
            })
        }

        fn exchange(
            &mut self,
            command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, TransportError> {
            self.stream
                .write_all(command)
                .map_err(|_| TransportError::Io)?;
            if response.len() < HEADER_LEN {
                return Err(TransportError::ResponseTooLarge {
                    announced: HEADER_LEN as u32,
                    capacity: response.len() as u32,
                });
            }
            let received = read_full(&mut self.stream, &mut response[..HEADER_LEN])?;
            if received < HEADER_LEN {
                return Err(TransportError::ResponseTruncated {
                    announced: HEADER_LEN as u32,
                    received: received as u32,
                });
            }
            let announced = super::check_response_size(&response[..HEADER_LEN], response.len())?;
            let rest = read_full(&mut self.stream, &mut response[HEADER_LEN..announced])?;
            if HEADER_LEN + rest < announced {
                return Err(TransportError::ResponseTruncated {
                    announced: announced as u32,
                    received: (HEADER_LEN + rest) as u32,
                });
            }
            Ok(announced)
        }
    }

    /// Reads exactly `buffer.len()` bytes; returns how many arrived before the peer closed.
    fn read_full(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<usize, TransportError> {
        let mut filled = 0;
        while filled < buffer.len() {
            match stream.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(TransportError::Io),
            }
        }
        Ok(filled)
    }

    impl Transport for SwtpmSocket {
        fn transact(
            &mut self,
            command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, TransportError> {
            super::check_command(command)?;
            if self.broken {
                return Err(TransportError::Io);
            }
            let result = self.exchange(command, response);
            self.broken = result.is_err();
            result
        }
    }

    /// swtpm's control channel (`--ctrl type=tcp,port=Q`): big-endian u32 commands, u32 result.
    #[derive(Debug)]
    pub struct SwtpmControl {
        stream: TcpStream,
    }

    /// `PTM_INIT_FLAG_DELETE_VOLATILE` is not set: INIT keeps the state, like a power cycle.
    const CMD_INIT: u32 = 2;
    const CMD_SHUTDOWN: u32 = 3;

    impl SwtpmControl {
        /// Connects to swtpm's control port with `timeout` on every read and write.
        ///
        /// # Errors
        ///
        /// The connection or the socket options failed.
        pub fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
            let stream = TcpStream::connect_timeout(&address, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Ok(Self { stream })
        }

        fn command(&mut self, request: &[u8]) -> std::io::Result<u32> {
            self.stream.write_all(request)?;
            let mut result = [0u8; 4];
            self.stream.read_exact(&mut result)?;
            Ok(u32::from_be_bytes(result))
        }

        /// CMD_INIT: (re)initialises the TPM as after power-on; the next command must be TPM2_Startup.
        /// Returns swtpm's result code (0 = success).
        ///
        /// # Errors
        ///
        /// The socket failed.
        pub fn init(&mut self) -> std::io::Result<u32> {
            let mut request = [0u8; 8];
            request[..4].copy_from_slice(&CMD_INIT.to_be_bytes());
            // init flags = 0: keep volatile state as stored.
            self.command(&request)
        }

        /// CMD_SHUTDOWN: swtpm stores its state and exits. Returns swtpm's result code (0 = success).
        ///
        /// # Errors
        ///
        /// The socket failed.
        pub fn shutdown(&mut self) -> std::io::Result<u32> {
            self.command(&CMD_SHUTDOWN.to_be_bytes())
        }
    }
}

/// Checks that `command` is a plausible frame: at least a header, and its size field equals its length.
pub(crate) fn check_command(command: &[u8]) -> Result<(), TransportError> {
    if command.len() < HEADER_LEN {
        return Err(TransportError::MalformedCommand);
    }
    let size = u32::from_be_bytes([command[2], command[3], command[4], command[5]]);
    if size as usize != command.len() {
        return Err(TransportError::MalformedCommand);
    }
    Ok(())
}

/// Validates a response header's size field against [`HEADER_LEN`] and `capacity`; returns the size.
pub(crate) fn check_response_size(header: &[u8], capacity: usize) -> Result<usize, TransportError> {
    let announced = match header {
        [_, _, a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    };
    if (announced as usize) < HEADER_LEN {
        return Err(TransportError::ResponseSizeTooSmall { announced });
    }
    if announced as usize > capacity {
        return Err(TransportError::ResponseTooLarge {
            announced,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        });
    }
    Ok(announced as usize)
}
