//! The parallel-for the engine calls for its row-parallel matrix products, and its implementations: [`Serial`]
//! everywhere, and the work pool ([`work::WorkPool`]) that the kernel runs on its processors and the host on
//! threads ([`ThreadPool`], behind the `std` feature).
//!
//! The trait hands each worker a disjoint `&mut` chunk of the output, so implementations need no shared mutable
//! state.

#[cfg(feature = "std")]
mod host;
#[allow(
    unsafe_code,
    reason = "the job descriptor the pool shares with its workers; each block has a SAFETY note"
)]
pub mod work;

#[cfg(feature = "std")]
pub use host::ThreadPool;

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
    /// cheapest. The default runs it on the calling thread, which suits the work pool (its caller takes chunks
    /// itself, and its workers spin between products); a pool that wakes its threads from outside for every call
    /// would rather run it on one of its own workers.
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
