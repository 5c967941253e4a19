//! The monotonic clock: the TSC, calibrated once against the 8254 PIT.
//!
//! PIT channel 2 (gate and output on port 0x61, Intel 8254 data sheet; osdev "Programmable Interval
//! Timer") counts 1,193,182 Hz independently of the CPU, so timing a known count with RDTSC gives
//! the TSC rate. Everything else (smoltcp, timeouts) reads time through [`Clock`].

use crate::arch::cpu;

const PIT_HZ: u64 = 1_193_182;
/// 10 ms worth of PIT ticks.
const CALIBRATION_TICKS: u16 = 11_932;

/// TSC-based time since boot.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    tsc_hz: u64,
    tsc_at_start: u64,
}

/// Why calibration failed.
#[derive(Clone, Copy, Debug)]
pub enum ClockError {
    /// The PIT never signalled the end of its count (no PIT on this machine?).
    PitSilent,
}

fn measure_once() -> Result<u64, ClockError> {
    // SAFETY: port 0x61 (system control port B) and the PIT's ports 0x42/0x43; only this
    // calibration drives them, once at boot, and PIT channel 2 only gates the speaker (kept off).
    unsafe {
        let control = cpu::inb(0x61);
        cpu::outb(0x61, (control & !0x02) | 0x01); // speaker off, channel 2 gate on
        cpu::outb(0x43, 0b1011_0000); // channel 2, low then high byte, mode 0, binary
        cpu::outb(0x42, CALIBRATION_TICKS as u8);
        cpu::outb(0x42, (CALIBRATION_TICKS >> 8) as u8);
    }
    let start = cpu::rdtsc();
    // Bound the wait: 10 ms is at most ~1e8 cycles on any CPU we run on; allow 100x.
    // SAFETY: as above; reading port B has no side effects.
    while unsafe { cpu::inb(0x61) } & 0x20 == 0 {
        if cpu::rdtsc().wrapping_sub(start) > 10_000_000_000 {
            return Err(ClockError::PitSilent);
        }
    }
    let elapsed = cpu::rdtsc().wrapping_sub(start);
    Ok(elapsed * PIT_HZ / u64::from(CALIBRATION_TICKS))
}

impl Clock {
    /// Calibrates the TSC: the median of three 10 ms measurements.
    pub fn calibrate() -> Result<Self, ClockError> {
        let mut rates = [measure_once()?, measure_once()?, measure_once()?];
        rates.sort_unstable();
        Ok(Self {
            tsc_hz: rates[1].max(1),
            tsc_at_start: cpu::rdtsc(),
        })
    }

    /// TSC ticks per second.
    #[allow(dead_code, reason = "reported only on the debug console")]
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Microseconds since calibration.
    pub fn now_us(&self) -> u64 {
        let ticks = cpu::rdtsc().wrapping_sub(self.tsc_at_start);
        (u128::from(ticks) * 1_000_000 / u128::from(self.tsc_hz)) as u64
    }
}
