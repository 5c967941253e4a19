//! What the golden tests share: turns at the process-wide kernel choice (`model::simd::force`).

use model::simd::Level;

/// The kernel set is chosen process-wide (`model::simd::force`), so the tests take turns.
static KERNELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the turn and forces the engine's kernels to `kernels` (at most the CPU's best set) until dropped.
pub struct Kernels(
    #[allow(dead_code, reason = "held for its drop")] std::sync::MutexGuard<'static, ()>,
);

impl Kernels {
    pub fn force(kernels: Option<Level>) -> Kernels {
        let turn = KERNELS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        model::simd::force(kernels);
        Kernels(turn)
    }

    /// [`Kernels::force`], and with `withheld` the AVX-512 level run as on a CPU without AVX512_VNNI
    /// (`model::simd::withhold_vnni`) until dropped.
    #[allow(
        dead_code,
        reason = "only the golden and interleaved-layout tests use it"
    )]
    pub fn force_vnni_withheld(kernels: Option<Level>, withheld: bool) -> Kernels {
        let turn = Kernels::force(kernels);
        model::simd::withhold_vnni(withheld);
        turn
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        model::simd::withhold_vnni(false);
        model::simd::force(None);
    }
}
