//! The TIS FIFO protocol for locality 0, over a register-access trait, implementing [`Transport`].
//!
//! Follows the TCG PC Client Platform TPM Profile (PTP) Specification for TPM 2.0, chapter "FIFO Interface":
//! register map (Table "Allocation of Register Space for FIFO Interface"), TPM_ACCESS and TPM_STS bit layout,
//! the command flow of its state machine (Idle → Ready → Command Reception → Command Execution →
//! Command Completion), and its timeouts A-D (A = 750 ms, B = 2000 ms, C = 200 ms, D = 30 ms).
//!
//! The TPM is not trusted to be well behaved: every wait has a deadline taken from [`Clock`] and, in case the
//! clock itself is broken, an iteration cap; every length the TPM announces is checked against the caller's
//! buffer before a byte is stored. A command that stalls while it is being written (no burstCount, Expect
//! wrong, commandReady never set) is aborted with commandReady and sent again once: the TPM had not started it,
//! so sending it again cannot run it twice. A command that stalls after tpmGo is aborted and reported as
//! [`Stage::Execute`] without a retry, because it may already have changed TPM state (a PCR extend run twice
//! would break the event log). A response that arrives short or long is read again once with responseRetry.

use crate::transport::{
    check_command, check_response_size, Stage, Transport, TransportError, HEADER_LEN,
};

/// TPM_ACCESS_0 (8 bit).
pub const TPM_ACCESS: u32 = 0x000;
/// TPM_INT_ENABLE_0 (32 bit).
pub const TPM_INT_ENABLE: u32 = 0x008;
/// TPM_INTF_CAPABILITY_0 (32 bit).
pub const TPM_INTF_CAPABILITY: u32 = 0x014;
/// TPM_STS_0 (32 bit: flags, burstCount in bits 8-23, family/cancel/resetEstablishment above).
pub const TPM_STS: u32 = 0x018;
/// TPM_DATA_FIFO_0 (8 bit accesses).
pub const TPM_DATA_FIFO: u32 = 0x024;
/// TPM_INTERFACE_ID_0 (32 bit).
pub const TPM_INTERFACE_ID: u32 = 0x030;
/// TPM_DID_VID_0 (32 bit: device id in bits 16-31, vendor id in bits 0-15).
pub const TPM_DID_VID: u32 = 0xF00;
/// TPM_RID_0 (8 bit).
pub const TPM_RID: u32 = 0xF04;

/// TPM_ACCESS.tpmRegValidSts: the other bits of TPM_ACCESS are valid.
pub const ACCESS_VALID: u8 = 0x80;
/// TPM_ACCESS.activeLocality (read: this locality is active; write 1: relinquish it).
pub const ACCESS_ACTIVE_LOCALITY: u8 = 0x20;
/// TPM_ACCESS.requestUse (write 1: request this locality).
pub const ACCESS_REQUEST_USE: u8 = 0x02;

/// TPM_STS.stsValid: dataAvail and Expect are valid.
pub const STS_VALID: u32 = 0x80;
/// TPM_STS.commandReady (read: ready for a command; write 1: go to Ready, aborting what runs).
pub const STS_COMMAND_READY: u32 = 0x40;
/// TPM_STS.tpmGo (write 1: execute the command in the FIFO).
pub const STS_GO: u32 = 0x20;
/// TPM_STS.dataAvail: response bytes are available in the FIFO.
pub const STS_DATA_AVAIL: u32 = 0x10;
/// TPM_STS.Expect: the TPM expects more command bytes.
pub const STS_EXPECT: u32 = 0x08;
/// TPM_STS.responseRetry (write 1: send the response again from its first byte).
pub const STS_RESPONSE_RETRY: u32 = 0x02;

/// Register access for one TIS register window (locality 0 at offset 0). The kernel implements it over
/// uncached MMIO at 0xFED40000; tests implement it over a model of the TIS state machine.
pub trait TisRegisters {
    /// Reads the 8-bit register at `offset`.
    fn read8(&mut self, offset: u32) -> u8;
    /// Writes the 8-bit register at `offset`.
    fn write8(&mut self, offset: u32, value: u8);
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: u32) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: u32, value: u32);
}

impl<T: TisRegisters + ?Sized> TisRegisters for &mut T {
    fn read8(&mut self, offset: u32) -> u8 {
        (**self).read8(offset)
    }
    fn write8(&mut self, offset: u32, value: u8) {
        (**self).write8(offset, value);
    }
    fn read32(&mut self, offset: u32) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&mut self, offset: u32, value: u32) {
        (**self).write32(offset, value);
    }
}

/// Time as the driver sees it: a monotonic microsecond counter and a way to wait.
pub trait Clock {
    /// Microseconds since an arbitrary fixed point; never goes backwards.
    fn now_us(&mut self) -> u64;
    /// Waits about `us` microseconds (polling back-off).
    fn delay_us(&mut self, us: u32);
}

impl<T: Clock + ?Sized> Clock for &mut T {
    fn now_us(&mut self) -> u64 {
        (**self).now_us()
    }
    fn delay_us(&mut self, us: u32) {
        (**self).delay_us(us);
    }
}

/// The waits the driver allows, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Timeout A: locality request and burstCount (PTP: 750 ms).
    pub a_us: u64,
    /// Timeout B: commandReady (PTP: 2000 ms).
    pub b_us: u64,
    /// Timeout C: stsValid after a FIFO access (PTP: 200 ms).
    pub c_us: u64,
    /// Timeout D: short register waits (PTP: 30 ms). Kept for completeness; the driver uses A-C.
    pub d_us: u64,
    /// Longest command execution: from tpmGo to dataAvail. RSA-2048 key generation in TPM2_CreatePrimary
    /// dominates; Linux allows 300 s for it (TPM2_DURATION_LONG_LONG).
    pub duration_us: u64,
}

impl Timeouts {
    /// The PTP's values, and 300 s for command execution.
    pub const PTP: Self = Self {
        a_us: 750_000,
        b_us: 2_000_000,
        c_us: 200_000,
        d_us: 30_000,
        duration_us: 300_000_000,
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::PTP
    }
}

/// What [`Tis::probe`] found in the identification registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// TPM_DID_VID: device id (high 16 bits) and vendor id (low 16 bits). swtpm under QEMU: 0x0001_1014.
    pub did_vid: u32,
    /// TPM_RID: revision id.
    pub rid: u8,
    /// TPM_INTF_CAPABILITY.
    pub interface_capability: u32,
}

/// Shortest and longest pause between two polls, in microseconds.
const POLL_MIN_US: u32 = 10;
const POLL_MAX_US: u32 = 1_000;
/// How many times a command that stalled before tpmGo is sent again.
const SEND_RETRIES: u32 = 1;
/// How many times a bad response is read again with responseRetry.
const RESPONSE_RETRIES: u32 = 1;

/// The TIS driver: locality 0, FIFO transfers, timeouts.
#[derive(Debug)]
pub struct Tis<R, C> {
    registers: R,
    clock: C,
    timeouts: Timeouts,
}

impl<R: TisRegisters, C: Clock> Tis<R, C> {
    /// Wraps a register window and a clock.
    pub const fn new(registers: R, clock: C, timeouts: Timeouts) -> Self {
        Self {
            registers,
            clock,
            timeouts,
        }
    }

    /// Gives the register window and clock back.
    pub fn into_parts(self) -> (R, C) {
        (self.registers, self.clock)
    }

    /// Reads the identification registers and checks that a TPM answers (not all ones, the value of an
    /// unclaimed bus). Interrupts stay disabled: the driver polls.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoDevice`] when DID_VID or TPM_ACCESS read as all ones (or DID_VID as zero).
    pub fn probe(&mut self) -> Result<DeviceInfo, TransportError> {
        let did_vid = self.registers.read32(TPM_DID_VID);
        let access = self.registers.read8(TPM_ACCESS);
        if did_vid == u32::MAX || did_vid == 0 || access == u8::MAX {
            return Err(TransportError::NoDevice);
        }
        Ok(DeviceInfo {
            did_vid,
            rid: self.registers.read8(TPM_RID),
            interface_capability: self.registers.read32(TPM_INTF_CAPABILITY),
        })
    }

    /// Polls `check` until it yields a value, `timeout_us` passes, or the iteration cap is hit.
    fn poll<T>(
        &mut self,
        timeout_us: u64,
        stage: Stage,
        mut check: impl FnMut(&mut R) -> Option<Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let start = self.clock.now_us();
        // Each failed poll waits at least POLL_MIN_US, so an honest clock ends the loop first; the cap ends it
        // when the clock is broken (never advances).
        let cap = timeout_us / u64::from(POLL_MIN_US) + 64;
        let mut interval = POLL_MIN_US;
        let mut iterations = 0u64;
        loop {
            if let Some(result) = check(&mut self.registers) {
                return result;
            }
            iterations += 1;
            let elapsed = self.clock.now_us().saturating_sub(start);
            if elapsed >= timeout_us || iterations >= cap {
                return Err(TransportError::Timeout(stage));
            }
            self.clock.delay_us(interval);
            interval = (interval * 2).min(POLL_MAX_US);
        }
    }

    fn request_locality(&mut self) -> Result<(), TransportError> {
        let access = self.registers.read8(TPM_ACCESS);
        if access == u8::MAX {
            return Err(TransportError::NoDevice);
        }
        if access & (ACCESS_VALID | ACCESS_ACTIVE_LOCALITY) == ACCESS_VALID | ACCESS_ACTIVE_LOCALITY
        {
            return Ok(());
        }
        self.registers.write8(TPM_ACCESS, ACCESS_REQUEST_USE);
        self.poll(self.timeouts.a_us, Stage::RequestLocality, |registers| {
            let access = registers.read8(TPM_ACCESS);
            (access & (ACCESS_VALID | ACCESS_ACTIVE_LOCALITY)
                == ACCESS_VALID | ACCESS_ACTIVE_LOCALITY)
                .then_some(Ok(()))
        })
    }

    fn release_locality(&mut self) {
        self.registers.write8(TPM_ACCESS, ACCESS_ACTIVE_LOCALITY);
    }

    /// Moves the TPM to Ready (PTP state machine, "Ready"), aborting whatever it was doing.
    fn command_ready(&mut self) -> Result<(), TransportError> {
        if self.registers.read32(TPM_STS) & STS_COMMAND_READY != 0 {
            return Ok(());
        }
        self.registers.write32(TPM_STS, STS_COMMAND_READY);
        self.poll(self.timeouts.b_us, Stage::CommandReady, |registers| {
            (registers.read32(TPM_STS) & STS_COMMAND_READY != 0).then_some(Ok(()))
        })
    }

    /// Waits for a nonzero burstCount while writing.
    fn send_burst(&mut self) -> Result<usize, TransportError> {
        self.poll(self.timeouts.a_us, Stage::SendBurst, |registers| {
            let burst = (registers.read32(TPM_STS) >> 8) & 0xffff;
            (burst != 0).then_some(Ok(burst as usize))
        })
    }

    /// Waits for stsValid and returns TPM_STS.
    fn valid_status(&mut self, stage: Stage) -> Result<u32, TransportError> {
        self.poll(self.timeouts.c_us, stage, |registers| {
            let status = registers.read32(TPM_STS);
            (status & STS_VALID != 0).then_some(Ok(status))
        })
    }

    /// Command Reception (PTP state machine): writes the command in bursts, checking Expect after each.
    fn send(&mut self, command: &[u8]) -> Result<(), TransportError> {
        self.command_ready()?;
        let mut sent = 0;
        while sent < command.len() {
            let burst = self.send_burst()?;
            let end = command.len().min(sent.saturating_add(burst));
            for &byte in &command[sent..end] {
                self.registers.write8(TPM_DATA_FIFO, byte);
            }
            sent = end;
            let expect = self.valid_status(Stage::SendExpect)? & STS_EXPECT != 0;
            if expect != (sent < command.len()) {
                return Err(TransportError::ExpectMismatch);
            }
        }
        self.registers.write32(TPM_STS, STS_GO);
        Ok(())
    }

    /// Reads `buffer.len()` response bytes in bursts. `announced` is only for the error report.
    fn receive_bytes(
        &mut self,
        buffer: &mut [u8],
        announced: u32,
        offset: usize,
    ) -> Result<(), TransportError> {
        let mut filled = 0;
        while filled < buffer.len() {
            let received = (offset + filled) as u32;
            let burst = self.poll(self.timeouts.a_us, Stage::ReceiveBurst, |registers| {
                let status = registers.read32(TPM_STS);
                let burst = (status >> 8) & 0xffff;
                if status & (STS_VALID | STS_DATA_AVAIL) == STS_VALID {
                    // The TPM says it has nothing more to give.
                    return Some(Err(TransportError::ResponseTruncated {
                        announced,
                        received,
                    }));
                }
                (burst != 0 && status & STS_DATA_AVAIL != 0).then_some(Ok(burst as usize))
            })?;
            let end = buffer.len().min(filled.saturating_add(burst));
            for slot in &mut buffer[filled..end] {
                *slot = self.registers.read8(TPM_DATA_FIFO);
            }
            filled = end;
        }
        Ok(())
    }

    /// Command Completion (PTP state machine): header, size check, body, then dataAvail must be clear.
    fn receive(&mut self, response: &mut [u8]) -> Result<usize, TransportError> {
        if response.len() < HEADER_LEN {
            return Err(TransportError::ResponseTooLarge {
                announced: HEADER_LEN as u32,
                capacity: response.len() as u32,
            });
        }
        self.receive_bytes(&mut response[..HEADER_LEN], HEADER_LEN as u32, 0)?;
        let size = check_response_size(&response[..HEADER_LEN], response.len())?;
        self.receive_bytes(&mut response[HEADER_LEN..size], size as u32, HEADER_LEN)?;
        if self.valid_status(Stage::ReceiveValid)? & STS_DATA_AVAIL != 0 {
            return Err(TransportError::ResponseOverrun);
        }
        Ok(size)
    }

    /// Aborts the current command (commandReady) and waits for Ready; an error here is dropped because the
    /// caller is already reporting the failure that led to the abort.
    fn abort(&mut self) {
        self.registers.write32(TPM_STS, STS_COMMAND_READY);
        let _ = self.poll(self.timeouts.b_us, Stage::CommandReady, |registers| {
            (registers.read32(TPM_STS) & STS_COMMAND_READY != 0).then_some(Ok(()))
        });
    }

    fn exchange(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let mut attempt = 0;
        loop {
            match self.send(command) {
                Ok(()) => break,
                Err(error) => {
                    self.abort();
                    if attempt >= SEND_RETRIES {
                        return Err(error);
                    }
                    attempt += 1;
                }
            }
        }
        // Command Execution: wait for the response (no retry from here on, see the module docs).
        let duration = self.timeouts.duration_us;
        self.poll(duration, Stage::Execute, |registers| {
            let status = registers.read32(TPM_STS);
            (status & (STS_VALID | STS_DATA_AVAIL) == STS_VALID | STS_DATA_AVAIL).then_some(Ok(()))
        })?;
        let mut retries = 0;
        loop {
            match self.receive(response) {
                Ok(size) => return Ok(size),
                Err(
                    error @ (TransportError::ResponseTruncated { .. }
                    | TransportError::ResponseOverrun
                    | TransportError::Timeout(Stage::ReceiveBurst | Stage::ReceiveValid)),
                ) if retries < RESPONSE_RETRIES => {
                    retries += 1;
                    self.registers.write32(TPM_STS, STS_RESPONSE_RETRY);
                    // After responseRetry the whole response is offered again.
                    let again = self.poll(self.timeouts.c_us, Stage::ReceiveValid, |registers| {
                        let status = registers.read32(TPM_STS);
                        (status & (STS_VALID | STS_DATA_AVAIL) == STS_VALID | STS_DATA_AVAIL)
                            .then_some(Ok(()))
                    });
                    if again.is_err() {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl<R: TisRegisters, C: Clock> Transport for Tis<R, C> {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        check_command(command)?;
        self.request_locality()?;
        let result = self.exchange(command, response);
        // Back to Idle (or abort what still runs), then give the locality up.
        self.abort();
        self.release_locality();
        result
    }
}

/// A model of a TIS register file, honest or lying, for host tests (here and in the kernel's).
#[cfg(any(test, feature = "std"))]
pub mod model;
#[cfg(test)]
mod tests;
