//! The kernel's random numbers: a ChaCha20 DRBG seeded from RDSEED/RDRAND and the TSC.
//!
//! Intel's DRNG guide recommends RDSEED for seeding other generators and RDRAND otherwise; both
//! are mixed when present, each after the health checks of `kernel::entropy` (many samples, none missing,
//! degenerate or repeated). The TPM's GetRandom joins the seed once the TPM driver is up (issue 3).
//! An appliance without a hardware entropy instruction, or with one that fails a check, refuses to run: it never
//! opens its port.
//!
//! Once seeded, the generator is installed in [`DRBG`], behind a spin lock, so that `'static` users (rustls'
//! `SecureRandom`, through [`TLS_RANDOM`]) and the appliance share one stream. The kernel runs on one CPU and takes
//! interrupts only inside `sti; hlt; cli`, whose handlers never draw randomness, so the lock is never contended.

use kernel::entropy::{self, EntropyError, Instruction};
use net::tls::RandomFn;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::arch::cpu;

/// The kernel's one DRBG after boot; empty until [`install`] runs.
static DRBG: spin::Mutex<Option<Random>> = spin::Mutex::new(None);

/// rustls' randomness: the installed DRBG (a handshake fails with a typed error before [`install`]).
pub static TLS_RANDOM: RandomFn = RandomFn(fill);

/// Makes `random` the generator behind [`fill`] and [`TLS_RANDOM`].
pub fn install(random: Random) {
    *DRBG.lock() = Some(random);
}

/// Fills `buffer` from the installed DRBG; false (and `buffer` untouched) when none is installed.
pub fn fill(buffer: &mut [u8]) -> bool {
    match DRBG.lock().as_mut() {
        Some(random) => {
            random.fill(buffer);
            true
        }
        None => false,
    }
}

/// One random 64-bit value from the installed DRBG (0 before [`install`]).
pub fn next_u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// The DRBG.
pub struct Random {
    generator: ChaCha20Rng,
}

fn has_rdrand() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 30) != 0
}

fn has_rdseed() -> bool {
    cpu::max_leaf() >= 7 && cpu::cpuid(7, 0).ebx & (1 << 18) != 0
}

/// RDSEED, as `cpu::rdseed` retries it.
struct Rdseed;

impl Instruction for Rdseed {
    fn sample(&mut self) -> Option<u64> {
        cpu::rdseed()
    }
}

/// RDRAND, as `cpu::rdrand` retries it.
struct Rdrand;

impl Instruction for Rdrand {
    fn sample(&mut self) -> Option<u64> {
        cpu::rdrand()
    }
}

impl Random {
    /// Seeds a generator from the CPU's entropy instructions, each health-checked (`kernel::entropy`).
    pub fn from_hardware() -> Result<Self, EntropyError> {
        let (mut rdseed, mut rdrand) = (Rdseed, Rdrand);
        let seed = entropy::seed(
            has_rdseed().then_some(&mut rdseed as &mut dyn Instruction),
            has_rdrand().then_some(&mut rdrand as &mut dyn Instruction),
            cpu::rdtsc(),
        )?;
        Ok(Self {
            generator: ChaCha20Rng::from_seed(seed),
        })
    }

    /// Reseeds from the generator's own output and `extra` (the TPM's GetRandom bytes), so the
    /// result is at least as unpredictable as the better of the two sources.
    pub fn mix(&mut self, extra: &[u8; 32]) {
        let mut current = [0u8; 32];
        self.generator.fill_bytes(&mut current);
        let mut hasher = Sha256::new();
        hasher.update(b"cloister drbg reseed");
        hasher.update(current);
        hasher.update(extra);
        self.generator = ChaCha20Rng::from_seed(hasher.finalize().into());
    }

    /// Fills `buffer` with random bytes.
    pub fn fill(&mut self, buffer: &mut [u8]) {
        self.generator.fill_bytes(buffer);
    }
}
