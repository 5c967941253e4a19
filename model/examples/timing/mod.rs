//! Time measurement shared by the diagnostic examples.
//!
//! - `best`, for kernels: the wall-clock time of one call, the best of several samples. The best sample is the
//!   one a busy machine disturbed least.
//! - `cpu_s`, for whole runs: this thread's time on the CPU (`/proc/thread-self/schedstat`). On the VMs this
//!   project runs on it advances in scheduler ticks of 4 ms, so it is only meaningful over runs of a second or so.
//!   The best of several tick-counted samples reads too fast: a kernel sample of 3 calls once came out at half its
//!   wall-clock time. That is why `best` does not use it.

/// CPU time of the calling thread in seconds (Linux schedstat: first field, nanoseconds on the CPU); 0 where the
/// file cannot be read.
#[allow(dead_code, reason = "the kernel examples use only `best`")]
pub fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 * 1e-9)
}

/// Best per-call wall-clock time in seconds over `samples` samples of `inner` calls each.
#[allow(
    dead_code,
    reason = "`bench` measures whole runs and uses only `cpu_s`"
)]
pub fn best<F: FnMut()>(samples: usize, inner: usize, mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..samples {
        let started = std::time::Instant::now();
        for _ in 0..inner {
            f();
        }
        best = best.min(started.elapsed().as_secs_f64() / inner as f64);
    }
    best
}
