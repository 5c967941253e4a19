//! Tests of the TIS driver against the register-file model in `fake.rs`, honest and lying.

use super::model::{FakeClock, FakeTis};
use super::{Timeouts, Tis};
use crate::transport::{Stage, Transport, TransportError};

/// A command frame: TPM_ST_NO_SESSIONS, size, TPM_CC_GetRandom, then `body`.
fn command(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80, 0x01, 0, 0, 0, 0, 0x00, 0x00, 0x01, 0x7B];
    frame.extend_from_slice(body);
    let size = frame.len() as u32;
    frame[2..6].copy_from_slice(&size.to_be_bytes());
    frame
}

/// The model TPM's answer: a success header and the command body reversed, then `extra` counting bytes.
fn answer(command: &[u8], extra: usize) -> Vec<u8> {
    let mut response = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
    response.extend(command[10..].iter().rev());
    response.extend((0..extra).map(|i| i as u8));
    let size = response.len() as u32;
    response[2..6].copy_from_slice(&size.to_be_bytes());
    response
}

fn honest(extra: usize) -> FakeTis {
    FakeTis::new(move |command| answer(command, extra))
}

fn run(
    fake: &mut FakeTis,
    clock: &mut FakeClock,
    command: &[u8],
    capacity: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut tis = Tis::new(fake, clock, Timeouts::PTP);
    let mut response = vec![0u8; capacity];
    let size = tis.transact(command, &mut response)?;
    response.truncate(size);
    Ok(response)
}

#[test]
fn probe_reads_identification() {
    let mut fake = honest(0);
    let mut clock = FakeClock::default();
    let info = Tis::new(&mut fake, &mut clock, Timeouts::PTP)
        .probe()
        .unwrap();
    assert_eq!(info.did_vid, 0x0001_1014);
    assert_eq!(info.rid, 1);
}

#[test]
fn honest_round_trip_one_burst() {
    let mut fake = honest(100);
    let mut clock = FakeClock::default();
    let cmd = command(&[1, 2, 3, 4]);
    let response = run(&mut fake, &mut clock, &cmd, 4096).unwrap();
    assert_eq!(response, answer(&cmd, 100));
    assert_eq!(fake.commands_executed, 1);
    assert!(!fake.locality_active, "locality released");
    assert_eq!(
        fake.state,
        super::model::State::Ready,
        "TPM left idle/ready after the response"
    );
}

#[test]
fn honest_round_trip_small_bursts() {
    for burst in [1, 3, 7, 10, 11, 64] {
        let mut fake = honest(300);
        fake.burst = burst;
        let mut clock = FakeClock::default();
        let cmd = command(&(0..200u8).collect::<Vec<_>>());
        let response = run(&mut fake, &mut clock, &cmd, 4096).unwrap();
        assert_eq!(response, answer(&cmd, 300), "burst {burst}");
    }
}

#[test]
fn back_to_back_commands() {
    let mut fake = honest(5);
    let mut clock = FakeClock::default();
    for round in 0..5u8 {
        let cmd = command(&[round; 9]);
        assert_eq!(
            run(&mut fake, &mut clock, &cmd, 4096).unwrap(),
            answer(&cmd, 5)
        );
    }
    assert_eq!(fake.commands_executed, 5);
}

#[test]
fn absent_tpm_is_no_device() {
    let mut fake = honest(0);
    fake.lies.absent = true;
    let mut clock = FakeClock::default();
    assert_eq!(
        Tis::new(&mut fake, &mut clock, Timeouts::PTP).probe(),
        Err(TransportError::NoDevice)
    );
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[]), 64),
        Err(TransportError::NoDevice)
    );
}

#[test]
fn locality_never_granted_times_out_after_timeout_a() {
    let mut fake = honest(0);
    fake.lies.never_grant_locality = true;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[]), 64),
        Err(TransportError::Timeout(Stage::RequestLocality))
    );
    assert!(clock.now >= Timeouts::PTP.a_us && clock.now < Timeouts::PTP.a_us + 10_000);
}

#[test]
fn command_ready_never_set() {
    let mut fake = honest(0);
    fake.lies.never_ready = true;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1]), 64),
        Err(TransportError::Timeout(Stage::CommandReady))
    );
    assert_eq!(fake.commands_executed, 0);
}

#[test]
fn burst_count_stuck_at_zero_while_sending() {
    let mut fake = honest(0);
    fake.lies.send_burst_zero_for = u32::MAX;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1, 2]), 64),
        Err(TransportError::Timeout(Stage::SendBurst))
    );
    assert_eq!(fake.commands_executed, 0);
    assert!(!fake.locality_active);
}

#[test]
fn stuck_send_is_aborted_and_retried_once() {
    let mut fake = honest(2);
    // burstCount reads zero during the first attempt only.
    fake.lies.send_burst_zero_for = 1;
    let mut clock = FakeClock::default();
    let cmd = command(&[9, 8, 7]);
    assert_eq!(
        run(&mut fake, &mut clock, &cmd, 64).unwrap(),
        answer(&cmd, 2)
    );
    assert_eq!(fake.commands_executed, 1, "ran exactly once");
}

#[test]
fn expect_stuck_is_a_mismatch_and_never_executes() {
    let mut fake = honest(0);
    fake.lies.expect_stuck = true;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1, 2, 3]), 64),
        Err(TransportError::ExpectMismatch)
    );
    assert_eq!(fake.commands_executed, 0);
}

#[test]
fn hang_times_out_aborts_and_does_not_retry() {
    let mut fake = honest(0);
    fake.lies.hang = true;
    let mut clock = FakeClock::default();
    let mut timeouts = Timeouts::PTP;
    timeouts.duration_us = 5_000_000;
    let mut tis = Tis::new(&mut fake, &mut clock, timeouts);
    let mut response = [0u8; 64];
    assert_eq!(
        tis.transact(&command(&[1]), &mut response),
        Err(TransportError::Timeout(Stage::Execute))
    );
    let _ = tis.into_parts();
    assert_eq!(
        fake.aborts, 1,
        "the hung command was aborted with commandReady"
    );
    assert_eq!(
        fake.send_attempts, 1,
        "a command that may have run is not sent again"
    );
    // The TPM recovers: the next command works.
    fake.lies.hang = false;
    let cmd = command(&[4]);
    assert_eq!(
        run(&mut fake, &mut clock, &cmd, 64).unwrap(),
        answer(&cmd, 0)
    );
}

#[test]
fn hang_with_frozen_clock_still_terminates() {
    let mut fake = honest(0);
    fake.lies.hang = true;
    let mut clock = FakeClock {
        frozen: true,
        ..FakeClock::default()
    };
    let mut timeouts = Timeouts::PTP;
    timeouts.duration_us = 1_000_000;
    let mut tis = Tis::new(&mut fake, &mut clock, timeouts);
    let mut response = [0u8; 64];
    assert_eq!(
        tis.transact(&command(&[1]), &mut response),
        Err(TransportError::Timeout(Stage::Execute))
    );
    let _ = tis.into_parts();
    assert!(
        clock.delays < 1_000_000 / 10 + 64 + 100_000,
        "bounded by the iteration cap"
    );
}

#[test]
fn burst_count_stuck_at_zero_while_receiving() {
    let mut fake = honest(0);
    fake.lies.receive_burst_zero = true;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1]), 64),
        Err(TransportError::Timeout(Stage::ReceiveBurst))
    );
    assert_eq!(fake.response_retries, 1);
}

#[test]
fn announced_size_larger_than_buffer() {
    let mut fake = honest(0);
    fake.lies.announced_size = Some(5000);
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1]), 4096),
        Err(TransportError::ResponseTooLarge {
            announced: 5000,
            capacity: 4096
        })
    );
}

#[test]
fn announced_size_smaller_than_header() {
    for size in [0, 1, 9] {
        let mut fake = honest(0);
        fake.lies.announced_size = Some(size);
        let mut clock = FakeClock::default();
        assert_eq!(
            run(&mut fake, &mut clock, &command(&[1]), 4096),
            Err(TransportError::ResponseSizeTooSmall { announced: size })
        );
    }
}

#[test]
fn fewer_bytes_than_announced() {
    let mut fake = honest(40);
    fake.lies.truncate_to = Some(30);
    fake.lies.truncate_times = u32::MAX;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1, 2]), 4096),
        Err(TransportError::ResponseTruncated {
            announced: 52,
            received: 30
        })
    );
    assert_eq!(fake.response_retries, 1, "responseRetry was tried once");
}

#[test]
fn header_cut_short() {
    let mut fake = honest(0);
    fake.lies.truncate_to = Some(4);
    fake.lies.truncate_times = u32::MAX;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[]), 4096),
        Err(TransportError::ResponseTruncated {
            announced: 10,
            received: 4
        })
    );
}

#[test]
fn transient_truncation_recovers_with_response_retry() {
    let mut fake = honest(40);
    fake.lies.truncate_to = Some(25);
    fake.lies.truncate_times = 1;
    let mut clock = FakeClock::default();
    let cmd = command(&[1, 2]);
    assert_eq!(
        run(&mut fake, &mut clock, &cmd, 4096).unwrap(),
        answer(&cmd, 40)
    );
    assert_eq!(fake.response_retries, 1);
    assert_eq!(fake.commands_executed, 1);
}

#[test]
fn bytes_beyond_announced_size_are_an_overrun() {
    let mut fake = honest(3);
    fake.lies.extra_bytes = 5;
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &command(&[1]), 4096),
        Err(TransportError::ResponseOverrun)
    );
}

#[test]
fn malformed_commands_are_refused_before_touching_registers() {
    let mut fake = honest(0);
    let mut clock = FakeClock::default();
    assert_eq!(
        run(&mut fake, &mut clock, &[0x80, 0x01], 64),
        Err(TransportError::MalformedCommand)
    );
    let mut bad_size = command(&[1, 2, 3]);
    bad_size[5] = 99;
    assert_eq!(
        run(&mut fake, &mut clock, &bad_size, 64),
        Err(TransportError::MalformedCommand)
    );
    assert!(!fake.locality_active);
    assert_eq!(fake.send_attempts, 0);
}

/// A register file that answers every read with pseudo-random bytes: the driver must end with some result,
/// never panic or spin forever.
struct RandomRegisters {
    state: u64,
}

impl RandomRegisters {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl super::TisRegisters for RandomRegisters {
    fn read8(&mut self, _offset: u32) -> u8 {
        self.next() as u8
    }
    fn write8(&mut self, _offset: u32, _value: u8) {}
    fn read32(&mut self, _offset: u32) -> u32 {
        self.next() as u32
    }
    fn write32(&mut self, _offset: u32, _value: u32) {}
}

#[test]
fn random_registers_never_panic_or_hang() {
    let cmd = command(&[1, 2, 3, 4, 5]);
    for seed in 1..300u64 {
        let mut clock = FakeClock::default();
        let mut timeouts = Timeouts::PTP;
        timeouts.duration_us = 50_000;
        let mut tis = Tis::new(RandomRegisters { state: seed }, &mut clock, timeouts);
        let mut response = [0u8; 256];
        if let Ok(size) = tis.transact(&cmd, &mut response) {
            assert!((10..=256).contains(&size));
            assert_eq!(
                u32::from_be_bytes(response[2..6].try_into().unwrap()) as usize,
                size
            );
        }
    }
}
