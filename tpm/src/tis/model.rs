//! A model of a TIS register file (PTP FIFO state machine, locality 0), honest or lying, for host tests.
//! Built only for tests and with the `std` feature; the kernel image never contains it.
//!
//! The model keeps the states Idle, Ready, Reception, Execution and Completion, computes TPM_STS from them,
//! and answers each command through a backend closure. Each `Lie` makes it break the protocol in one way
//! a faulty or hostile TPM could.

use super::{
    Clock, TisRegisters, ACCESS_ACTIVE_LOCALITY, ACCESS_REQUEST_USE, ACCESS_VALID,
    STS_COMMAND_READY, STS_DATA_AVAIL, STS_EXPECT, STS_GO, STS_RESPONSE_RETRY, STS_VALID,
    TPM_ACCESS, TPM_DATA_FIFO, TPM_DID_VID, TPM_INTF_CAPABILITY, TPM_RID, TPM_STS,
};

/// A clock that only moves when the driver waits (or never, when `frozen`).
#[derive(Debug, Default)]
pub struct FakeClock {
    /// Microseconds.
    pub now: u64,
    /// When set, `delay_us` does not advance `now` (a broken timer).
    pub frozen: bool,
    /// How many times the driver waited.
    pub delays: u64,
}

impl Clock for FakeClock {
    fn now_us(&mut self) -> u64 {
        self.now
    }
    fn delay_us(&mut self, us: u32) {
        self.delays += 1;
        if !self.frozen {
            self.now += u64::from(us);
        }
    }
}

/// The TIS states of the PTP FIFO state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Ready,
    Reception,
    Execution,
    Completion,
}

/// Ways the model misbehaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lies {
    /// TPM_ACCESS reads as all ones (no device).
    pub absent: bool,
    /// requestUse is never granted.
    pub never_grant_locality: bool,
    /// commandReady is never set.
    pub never_ready: bool,
    /// burstCount reads zero while receiving a command, for the first `n` commands (u32::MAX: always).
    pub send_burst_zero_for: u32,
    /// burstCount reads zero while the response is available.
    pub receive_burst_zero: bool,
    /// Expect stays set after the command is complete.
    pub expect_stuck: bool,
    /// Execution never completes.
    pub hang: bool,
    /// The response header's size field is replaced by this value.
    pub announced_size: Option<u32>,
    /// Only this many response bytes are offered; for the first `truncate_times` reads (u32::MAX: always).
    pub truncate_to: Option<usize>,
    pub truncate_times: u32,
    /// This many extra bytes follow the response.
    pub extra_bytes: usize,
}

/// Computes the model TPM's response to a command.
pub type Backend = Box<dyn FnMut(&[u8]) -> Vec<u8>>;

/// The register file. `burst` is the burstCount it offers (QEMU's tpm-tis: 4096).
pub struct FakeTis {
    pub state: State,
    pub locality_active: bool,
    pub burst: u32,
    pub command: Vec<u8>,
    pub response: Vec<u8>,
    pub read_position: usize,
    pub offered: usize,
    pub execution_polls: u32,
    pub execution_polls_left: u32,
    pub backend: Backend,
    pub lies: Lies,
    /// Statistics the tests assert on.
    pub commands_executed: u32,
    pub aborts: u32,
    pub response_retries: u32,
    pub send_attempts: u32,
    pub ready_entries: u32,
}

impl FakeTis {
    /// An honest model answering through `backend`.
    pub fn new(backend: impl FnMut(&[u8]) -> Vec<u8> + 'static) -> Self {
        Self {
            state: State::Idle,
            locality_active: false,
            burst: 4096,
            command: Vec::new(),
            response: Vec::new(),
            read_position: 0,
            offered: 0,
            execution_polls: 3,
            execution_polls_left: 0,
            backend: Box::new(backend),
            lies: Lies::default(),
            commands_executed: 0,
            aborts: 0,
            response_retries: 0,
            send_attempts: 0,
            ready_entries: 0,
        }
    }

    fn expected_command_len(&self) -> usize {
        if self.command.len() < 6 {
            return usize::MAX;
        }
        u32::from_be_bytes([
            self.command[2],
            self.command[3],
            self.command[4],
            self.command[5],
        ]) as usize
    }

    fn expect(&self) -> bool {
        if self.lies.expect_stuck {
            return true;
        }
        match self.state {
            State::Ready => true,
            State::Reception => self.command.len() < self.expected_command_len(),
            _ => false,
        }
    }

    fn offer_response(&mut self) {
        self.read_position = 0;
        self.offered = match self.lies.truncate_to {
            Some(limit) if self.lies.truncate_times > 0 => {
                if self.lies.truncate_times != u32::MAX {
                    self.lies.truncate_times -= 1;
                }
                limit.min(self.response.len())
            }
            _ => self.response.len(),
        };
    }

    fn status(&mut self) -> u32 {
        if !self.locality_active {
            return 0xffff_ffff;
        }
        if self.state == State::Execution && !self.lies.hang {
            if self.execution_polls_left == 0 {
                self.state = State::Completion;
                self.commands_executed += 1;
                let command = std::mem::take(&mut self.command);
                let mut response = (self.backend)(&command);
                if let Some(size) = self.lies.announced_size {
                    if response.len() >= 6 {
                        response[2..6].copy_from_slice(&size.to_be_bytes());
                    }
                }
                response.extend(std::iter::repeat_n(0xAB, self.lies.extra_bytes));
                self.response = response;
                self.offer_response();
            } else {
                self.execution_polls_left -= 1;
            }
        }
        let mut status = STS_VALID;
        let burst = match self.state {
            State::Ready | State::Reception => {
                if self.ready_entries <= self.lies.send_burst_zero_for {
                    0
                } else {
                    self.burst
                }
            }
            State::Completion => {
                let left = self.offered.saturating_sub(self.read_position) as u32;
                if self.lies.receive_burst_zero {
                    0
                } else {
                    left.min(self.burst)
                }
            }
            _ => 0,
        };
        status |= (burst & 0xffff) << 8;
        if self.state == State::Ready && !self.lies.never_ready {
            status |= STS_COMMAND_READY;
        }
        // Idle is not Ready: software writes commandReady first.
        if self.expect() && matches!(self.state, State::Ready | State::Reception) {
            status |= STS_EXPECT;
        }
        if self.state == State::Completion && self.read_position < self.offered {
            status |= STS_DATA_AVAIL;
        }
        status
    }
}

impl TisRegisters for FakeTis {
    fn read8(&mut self, offset: u32) -> u8 {
        if self.lies.absent {
            return 0xff;
        }
        match offset {
            TPM_ACCESS => {
                let mut access = ACCESS_VALID;
                if self.locality_active {
                    access |= ACCESS_ACTIVE_LOCALITY;
                }
                access
            }
            TPM_DATA_FIFO => {
                if self.state == State::Completion && self.read_position < self.offered {
                    let byte = self.response[self.read_position];
                    self.read_position += 1;
                    byte
                } else {
                    0xff
                }
            }
            TPM_RID => 1,
            _ => (self.read32(offset & !3) >> ((offset & 3) * 8)) as u8,
        }
    }

    fn write8(&mut self, offset: u32, value: u8) {
        match offset {
            TPM_ACCESS => {
                if value & ACCESS_REQUEST_USE != 0 && !self.lies.never_grant_locality {
                    self.locality_active = true;
                }
                if value & ACCESS_ACTIVE_LOCALITY != 0 {
                    self.locality_active = false;
                }
            }
            TPM_DATA_FIFO => {
                if !self.locality_active {
                    return;
                }
                if matches!(self.state, State::Ready | State::Reception) {
                    if self.state == State::Ready {
                        self.send_attempts += 1;
                    }
                    self.state = State::Reception;
                    // A real TIS drops bytes beyond the command size (and the model drops them while burstCount
                    // is zero, as a TPM whose FIFO is full would).
                    if self.command.len() < self.expected_command_len() {
                        self.command.push(value);
                    }
                }
            }
            _ => self.write32(offset & !3, u32::from(value) << ((offset & 3) * 8)),
        }
    }

    fn read32(&mut self, offset: u32) -> u32 {
        if self.lies.absent {
            return 0xffff_ffff;
        }
        match offset {
            TPM_STS => self.status(),
            TPM_DID_VID => 0x0001_1014,
            TPM_INTF_CAPABILITY => 0x3000_0697,
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u32, value: u32) {
        if offset != TPM_STS || !self.locality_active {
            return;
        }
        if value & STS_COMMAND_READY != 0 {
            if self.state == State::Execution {
                self.aborts += 1;
            }
            if self.state == State::Reception {
                self.aborts += 1;
            }
            self.command.clear();
            self.response.clear();
            self.read_position = 0;
            self.offered = 0;
            self.state = State::Ready;
            self.ready_entries += 1;
        }
        if value & STS_GO != 0
            && self.state == State::Reception
            && self.command.len() == self.expected_command_len()
        {
            self.state = State::Execution;
            self.execution_polls_left = self.execution_polls;
        }
        if value & STS_RESPONSE_RETRY != 0 && self.state == State::Completion {
            self.response_retries += 1;
            self.offer_response();
        }
    }
}
