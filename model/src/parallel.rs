//! The parallel-for the engine calls for its row-parallel matrix products, and its implementations: [`Serial`]
//! everywhere, [`ThreadPool`] (a rayon pool) on the host behind the `std` feature.
//!
//! The trait hands each worker a disjoint `&mut` chunk of the output, so implementations need no shared mutable
//! state; the freestanding kernel can implement it over its own cores the same way.

/// Runs `f(chunk_index, chunk)` for every `chunk_len`-sized chunk of `out` (the last may be shorter).
pub trait ParallelFor: Sync {
    /// How many workers may run at once (used to size chunks).
    fn threads(&self) -> usize;

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk_len: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    );

    /// Runs `body`, which makes many `for_each_chunk` calls in a row (one forward pass), where those calls are
    /// cheapest: a pool runs it on one of its own workers, so that each product splits work among threads that
    /// are already awake instead of waking them from outside and blocking the caller every time.
    fn run(&self, body: &mut (dyn FnMut() + Send)) {
        body()
    }
}

/// Runs every chunk on the calling thread, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl ParallelFor for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk_len: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        for (i, c) in out.chunks_mut(chunk_len.max(1)).enumerate() {
            f(i, c);
        }
    }
}

/// A fixed-size pool of host threads.
#[cfg(feature = "std")]
pub struct ThreadPool {
    pool: rayon::ThreadPool,
    threads: usize,
}

#[cfg(feature = "std")]
impl ThreadPool {
    /// A pool of `threads` workers (at least one). Fails only if the OS refuses to start threads.
    pub fn new(threads: usize) -> Result<ThreadPool, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        Ok(ThreadPool { pool, threads })
    }
}

#[cfg(feature = "std")]
impl ParallelFor for ThreadPool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, body: &mut (dyn FnMut() + Send)) {
        if self.threads == 1 {
            return body();
        }
        // From outside the pool, every `install` queues a job, wakes a worker and parks the caller until it is
        // done (two context switches per matrix product); from inside, `for_each_chunk`'s `install` runs inline.
        self.pool.install(body);
    }

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk_len: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        use rayon::prelude::*;
        if self.threads == 1 {
            return Serial.for_each_chunk(out, chunk_len, f);
        }
        self.pool.install(|| {
            out.par_chunks_mut(chunk_len.max(1))
                .enumerate()
                .for_each(|(i, c)| f(i, c))
        });
    }
}
