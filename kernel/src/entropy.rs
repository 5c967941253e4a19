//! Health checks on the CPU's entropy instructions before their output seeds the DRBG (docs/ARCHITECTURE.md §2).
//!
//! Each instruction the CPU offers (RDSEED, RDRAND) gives [`SAMPLES_PER_SOURCE`] 64-bit samples, each already
//! retried as the vendors advise (Intel SDM Vol. 1 §7.3.17.1 and the Intel DRNG Software Implementation Guide §5.2:
//! RDRAND up to 10 times, RDSEED with PAUSE; `arch::cpu`). The samples then pass the checks the vendors and NIST
//! describe, and a source that fails any of them fails the seed, so the image never opens its port on it:
//!
//! - every sample arrives (a source that keeps clearing CF after its retries is broken, Intel DRNG guide §5.2.1);
//! - no sample is all zeros or all ones (AMD's family 17h erratum: RDRAND returning 0xFFFFFFFF with CF set after
//!   resume, AMD "RDRAND/RDSEED" guidance);
//! - no two consecutive samples are equal (NIST SP 800-90B §4.4.1, repetition count test, at a cutoff of 2 for
//!   64-bit samples), and no sample repeats anywhere in the window (a short cycle; for a working source the chance
//!   of any repeat among 64 samples is about 2^-53).
//!
//! The accepted samples of every source, the TSC and a domain label are hashed with SHA-256 into the 32-byte seed.
//! The TPM's GetRandom bytes join it later (`Random::mix` in the kernel binary).

use sha2::{Digest, Sha256};

/// Samples taken from each instruction the CPU has (4096 bits each).
pub const SAMPLES_PER_SOURCE: usize = 64;

/// An entropy instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// RDSEED: the conditioned entropy source itself.
    Rdseed,
    /// RDRAND: the DRBG the CPU seeds from that source.
    Rdrand,
}

/// Why the CPU's entropy was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyError {
    /// The CPU offers neither RDSEED nor RDRAND.
    NoSource,
    /// The instruction failed (CF clear) on every retry.
    Exhausted(Source),
    /// A sample was all zeros or all ones.
    Degenerate(Source),
    /// A sample repeated.
    Stuck(Source),
}

/// One entropy instruction: a sample after the vendor's retries, or `None` when they all failed.
pub trait Instruction {
    /// The next sample.
    fn sample(&mut self) -> Option<u64>;
}

/// Takes [`SAMPLES_PER_SOURCE`] samples from `instruction` and checks them.
///
/// # Errors
///
/// [`EntropyError::Exhausted`], [`EntropyError::Degenerate`] or [`EntropyError::Stuck`], naming `source`.
pub fn checked_samples(
    source: Source,
    instruction: &mut dyn Instruction,
) -> Result<[u64; SAMPLES_PER_SOURCE], EntropyError> {
    let mut samples = [0u64; SAMPLES_PER_SOURCE];
    for index in 0..SAMPLES_PER_SOURCE {
        let value = instruction
            .sample()
            .ok_or(EntropyError::Exhausted(source))?;
        if value == 0 || value == u64::MAX {
            return Err(EntropyError::Degenerate(source));
        }
        if samples[..index].contains(&value) {
            return Err(EntropyError::Stuck(source));
        }
        samples[index] = value;
    }
    Ok(samples)
}

/// The DRBG seed from every instruction the CPU has (`None` for one it lacks) and the TSC. Every present source
/// must pass its checks: a broken one is a broken machine, not a reason to rely on the other alone.
///
/// # Errors
///
/// [`EntropyError::NoSource`] when both are absent, else the first failing source's error.
pub fn seed(
    rdseed: Option<&mut dyn Instruction>,
    rdrand: Option<&mut dyn Instruction>,
    tsc: u64,
) -> Result<[u8; 32], EntropyError> {
    if rdseed.is_none() && rdrand.is_none() {
        return Err(EntropyError::NoSource);
    }
    let mut hasher = Sha256::new();
    hasher.update(b"cloister drbg seed v1");
    hasher.update(tsc.to_le_bytes());
    if let Some(instruction) = rdseed {
        for sample in checked_samples(Source::Rdseed, instruction)? {
            hasher.update(sample.to_le_bytes());
        }
    }
    if let Some(instruction) = rdrand {
        for sample in checked_samples(Source::Rdrand, instruction)? {
            hasher.update(sample.to_le_bytes());
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a stand-in for a working source.
    struct Working(u64);

    impl Instruction for Working {
        fn sample(&mut self) -> Option<u64> {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            Some(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d))
        }
    }

    /// Replays `values` in a loop.
    struct Fixed<'a> {
        values: &'a [Option<u64>],
        at: usize,
    }

    impl Instruction for Fixed<'_> {
        fn sample(&mut self) -> Option<u64> {
            let value = self.values[self.at % self.values.len()];
            self.at += 1;
            value
        }
    }

    fn fixed(values: &[Option<u64>]) -> Fixed<'_> {
        Fixed { values, at: 0 }
    }

    #[test]
    fn working_sources_give_a_seed_that_depends_on_every_input() {
        let first = seed(Some(&mut Working(1)), Some(&mut Working(2)), 7).unwrap();
        assert_eq!(
            first,
            seed(Some(&mut Working(1)), Some(&mut Working(2)), 7).unwrap()
        );
        assert_ne!(
            first,
            seed(Some(&mut Working(3)), Some(&mut Working(2)), 7).unwrap()
        );
        assert_ne!(
            first,
            seed(Some(&mut Working(1)), Some(&mut Working(4)), 7).unwrap()
        );
        assert_ne!(
            first,
            seed(Some(&mut Working(1)), Some(&mut Working(2)), 8).unwrap()
        );
        // One instruction is enough when the CPU has only that one.
        assert!(seed(None, Some(&mut Working(2)), 7).is_ok());
        assert!(seed(Some(&mut Working(1)), None, 7).is_ok());
        assert_eq!(seed(None, None, 7), Err(EntropyError::NoSource));
    }

    #[test]
    fn every_sample_is_taken_and_checked() {
        let mut counted = Working(5);
        let samples = checked_samples(Source::Rdrand, &mut counted).unwrap();
        assert_eq!(samples.len(), SAMPLES_PER_SOURCE);
        let mut again = Working(5);
        for sample in samples {
            assert_eq!(again.sample(), Some(sample));
        }
    }

    #[test]
    fn a_failing_source_fails_the_seed_even_beside_a_working_one() {
        // Retries exhausted, at once or after a while.
        assert_eq!(
            seed(Some(&mut fixed(&[None])), Some(&mut Working(2)), 0),
            Err(EntropyError::Exhausted(Source::Rdseed))
        );
        let mut late = [Some(1u64); SAMPLES_PER_SOURCE];
        for (index, value) in late.iter_mut().enumerate() {
            *value = Some(index as u64 + 1);
        }
        late[SAMPLES_PER_SOURCE - 1] = None;
        assert_eq!(
            seed(Some(&mut Working(1)), Some(&mut fixed(&late)), 0),
            Err(EntropyError::Exhausted(Source::Rdrand))
        );
        // All ones (AMD's erratum) and all zeros.
        assert_eq!(
            seed(
                Some(&mut Working(1)),
                Some(&mut fixed(&[Some(u64::MAX)])),
                0
            ),
            Err(EntropyError::Degenerate(Source::Rdrand))
        );
        assert_eq!(
            seed(Some(&mut fixed(&[Some(0)])), None, 0),
            Err(EntropyError::Degenerate(Source::Rdseed))
        );
        // A stuck value, and a short cycle.
        assert_eq!(
            seed(None, Some(&mut fixed(&[Some(0x1234_5678)])), 0),
            Err(EntropyError::Stuck(Source::Rdrand))
        );
        let cycle = [Some(11), Some(22), Some(33), Some(44)];
        assert_eq!(
            checked_samples(Source::Rdseed, &mut fixed(&cycle)),
            Err(EntropyError::Stuck(Source::Rdseed))
        );
    }
}
