//! CPU-time measurement shared by the diagnostic examples: this thread's time on the CPU
//! (`/proc/thread-self/schedstat`), so that a busy machine disturbs the figures less than wall time would.

/// CPU time of the calling thread in seconds (Linux schedstat: first field, nanoseconds on the CPU); 0 where the
/// file cannot be read.
pub fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 * 1e-9)
}

/// Best per-call CPU time over `samples` samples of `inner` calls each.
#[allow(
    dead_code,
    reason = "`bench` measures whole runs and uses only `cpu_s`"
)]
pub fn best<F: FnMut()>(samples: usize, inner: usize, mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..samples {
        let t = cpu_s();
        for _ in 0..inner {
            f();
        }
        best = best.min((cpu_s() - t) / inner as f64);
    }
    best
}
