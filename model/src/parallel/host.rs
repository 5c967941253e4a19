//! The host's pool: the appliance's work pool ([`super::work::WorkPool`]) on threads, so that host runs and
//! benchmarks split each product as the appliance does. Idle workers spin a while after a job, then park.

extern crate std;

use core::cell::Cell;
use std::io;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::vec::Vec;

use super::work::{Idle, Task, WorkPool, MAX_WORKERS};
use super::ParallelFor;

/// Pause rounds a worker spins after a job before it parks: as in the kernel, long enough to bridge the gaps
/// between one forward pass's products (about 1-2 ms), short enough not to hold a core between requests.
const SPIN_ROUNDS: u32 = 50_000;

/// How many pause rounds go between two yields to the OS scheduler. A worker or a waiting caller whose peer was
/// descheduled (more busy threads than cores) then gives its core up instead of spinning out its time slice.
const PAUSES_PER_YIELD: u32 = 256;

/// Parking and unparking the workers' threads.
struct Parking {
    /// The workers' threads, set once they are started (before any job can be published).
    threads: OnceLock<Vec<Thread>>,
}

std::thread_local! {
    static RELAX_ROUNDS: Cell<u32> = const { Cell::new(0) };
}

impl Idle for Parking {
    fn sleep(&self, _worker: usize) {
        // A wake that came first left the thread's token, and `park` then returns at once.
        thread::park();
    }

    fn wake(&self, worker: usize) {
        if let Some(thread) = self.threads.get().and_then(|threads| threads.get(worker)) {
            thread.unpark();
        }
    }

    fn relax(&self) {
        let round = RELAX_ROUNDS.with(|rounds| {
            let round = rounds.get().wrapping_add(1);
            rounds.set(round);
            round
        });
        if round.is_multiple_of(PAUSES_PER_YIELD) {
            thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// A fixed-size pool of host threads: the calling thread and `threads - 1` workers.
pub struct ThreadPool {
    pool: Arc<WorkPool<Parking>>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all, the caller's included (at least one, at most
    /// [`MAX_WORKERS`]` + 1`). Fails only if the OS refuses to start a thread.
    pub fn new(threads: usize) -> io::Result<ThreadPool> {
        let workers = threads.clamp(1, MAX_WORKERS + 1) - 1;
        let pool = Arc::new(WorkPool::new(
            Parking {
                threads: OnceLock::new(),
            },
            SPIN_ROUNDS,
        ));
        pool.set_workers(workers);
        let mut handles = Vec::with_capacity(workers);
        let mut refused = None;
        for worker in 0..workers {
            let shared = Arc::clone(&pool);
            match thread::Builder::new()
                .name(std::format!("engine-{worker}"))
                .spawn(move || shared.run_worker(worker))
            {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let _ = pool.idle().threads.set(
            handles
                .iter()
                .map(|handle| handle.thread().clone())
                .collect(),
        );
        let pool = ThreadPool {
            pool,
            workers: handles,
        };
        // The pool counts on every worker it was given: if one did not start, dropping it stops the others.
        match refused {
            Some(error) => Err(error),
            None => Ok(pool),
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.pool.stop();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

impl ParallelFor for ThreadPool {
    fn threads(&self) -> usize {
        self.pool.threads()
    }

    fn for_each_chunk(&self, out: &mut [f32], chunk_len: usize, task: &Task<'_>) {
        self.pool.for_each_chunk(out, chunk_len, task)
    }
}
