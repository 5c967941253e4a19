//! The engine's parallel-for over the kernel's processors: one shared work descriptor, workers that spin on it
//! with `pause` and sleep when idle, and a fork/join per call (docs/ARCHITECTURE.md §2, "Processors").
//!
//! The bootstrap processor is the only caller: it publishes a job (the output slice, the chunk length, the
//! task), bumps a generation counter, wakes any worker that went to sleep, takes chunks itself, and returns
//! once every worker has left the job. Workers claim chunk indices from one atomic counter, so each chunk is
//! run exactly once and chunks are disjoint `&mut` slices of the output, as `model::parallel::ParallelFor`
//! promises. Because the caller waits for every worker before it returns, the next job's descriptor is never
//! written while a worker still reads the last one, and a worker can never miss a job.
//!
//! The file depends only on `core` and the engine's trait: the kernel runs it on its application processors
//! with HLT and IPIs behind [`Idle`] (`kernel/src/smp/mod.rs`), and the host's [`super::ThreadPool`] runs the same
//! code on threads that park, so that host benchmarks measure the appliance's fork/join.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::ParallelFor;

/// Most workers a pool has: every processor the kernel keeps (`kernel::acpi::MAX_CPUS`, which asserts this)
/// except the caller's.
pub const MAX_WORKERS: usize = 15;

/// The task type the engine hands over.
pub type Task<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// How idle workers wait, and how the caller wakes them.
pub trait Idle: Sync {
    /// Sleeps worker `worker` until [`Idle::wake`] is called for it. It may return early (spuriously); a wake
    /// that comes before the sleep starts must not be lost.
    fn sleep(&self, worker: usize);
    /// Ends `worker`'s sleep, or the next one if it is not asleep yet.
    fn wake(&self, worker: usize);
    /// Runs on a worker after each job, before it waits again (the kernel clears the vector registers, so no
    /// SIMD state of one task outlives it).
    fn after_job(&self) {}
    /// One round of waiting without sleeping: PAUSE on a processor that has nothing else to run; the host test
    /// yields, since its threads share fewer cores than there are threads.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// One published job: where the output is and what to run on it.
struct Job {
    out: *mut f32,
    len: usize,
    chunk_len: usize,
    chunks: usize,
    task: *const Task<'static>,
}

/// The shared work descriptor and the workers' state.
pub struct WorkPool<I> {
    idle: I,
    /// Pause rounds a worker spins after a job before it sleeps.
    spin_rounds: u32,
    /// Workers that take part in jobs; fixed before the first job.
    workers: AtomicUsize,
    /// Written only by the caller, while no worker reads it (see the module comment).
    job: UnsafeCell<Job>,
    /// Bumped once per job; a worker runs a job when it sees a generation it has not run.
    generation: AtomicU64,
    /// The next chunk index to claim.
    next_chunk: AtomicUsize,
    /// Workers that have left the current job.
    workers_done: AtomicUsize,
    /// Which workers are (about to be) asleep and need a wake.
    sleeping: [AtomicBool; MAX_WORKERS],
    /// Set while a call runs, so a nested or second caller runs serially instead of corrupting the job.
    busy: AtomicBool,
    /// Ends [`WorkPool::run_worker`] (host tests only: kernel workers run forever).
    stopping: AtomicBool,
}

// SAFETY: the job descriptor is the only non-atomic state. The caller writes it only between jobs, when every
// worker has left the last job (`workers_done` reached `workers`, read with Acquire) and none reads it again
// until the Release/SeqCst generation bump that publishes the new one; the raw pointers in it point at data the
// caller keeps borrowed until every worker is done.
unsafe impl<I: Idle> Sync for WorkPool<I> {}
// SAFETY: the raw pointers in the job descriptor are the only non-`Send` state; they are dereferenced only during
// a call, which borrows the pool, so a pool that moves to another thread carries no live pointer with it.
unsafe impl<I: Idle + Send> Send for WorkPool<I> {}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only used to initialise the array of flags"
)]
const AWAKE: AtomicBool = AtomicBool::new(false);

impl<I: Idle> WorkPool<I> {
    /// A pool with no workers yet: every call runs serially until [`WorkPool::set_workers`].
    pub const fn new(idle: I, spin_rounds: u32) -> Self {
        Self {
            idle,
            spin_rounds,
            workers: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                out: core::ptr::null_mut(),
                len: 0,
                chunk_len: 1,
                chunks: 0,
                task: core::ptr::null::<fn(usize, &mut [f32])>() as *const Task<'static>,
            }),
            generation: AtomicU64::new(0),
            next_chunk: AtomicUsize::new(0),
            workers_done: AtomicUsize::new(0),
            sleeping: [AWAKE; MAX_WORKERS],
            busy: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Fixes how many workers (indices `0..workers`) take part in jobs. Called once, before the first job; each
    /// of those workers must then enter [`WorkPool::run_worker`] (before or after the first job is published).
    pub fn set_workers(&self, workers: usize) {
        self.workers
            .store(workers.min(MAX_WORKERS), Ordering::Release);
    }

    /// Workers taking part in jobs.
    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Acquire)
    }

    /// The idle behaviour (the host pool registers its threads there, and a test counts the sleeps).
    pub fn idle(&self) -> &I {
        &self.idle
    }

    /// Worker `worker`'s loop: run each published job, spin `spin_rounds` pauses, then sleep until woken.
    /// Returns only after [`WorkPool::stop`].
    pub fn run_worker(&self, worker: usize) {
        // Not the current generation: a job published before this worker got here is still its job to help
        // finish (the caller counts it from `set_workers` on). Jobs run serially, without bumping the
        // generation, until then, so the first job is generation 1.
        let mut seen = 0;
        let mut spins = 0;
        while !self.stopping.load(Ordering::Acquire) {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                self.take_chunks();
                self.workers_done.fetch_add(1, Ordering::AcqRel);
                self.idle.after_job();
                spins = 0;
                continue;
            }
            if spins < self.spin_rounds {
                spins += 1;
                self.idle.relax();
                continue;
            }
            // Announce the sleep, then look once more: either this load sees the caller's new generation, or the
            // caller's load of `sleeping` (after its generation bump) sees this store and wakes the worker
            // (both SeqCst, so one of the two must happen).
            self.sleeping[worker].store(true, Ordering::SeqCst);
            if self.generation.load(Ordering::SeqCst) == seen
                && !self.stopping.load(Ordering::SeqCst)
            {
                self.idle.sleep(worker);
            }
            self.sleeping[worker].store(false, Ordering::SeqCst);
            spins = 0;
        }
    }

    /// Makes every worker return from [`WorkPool::run_worker`] (the host pool when it is dropped; kernel workers
    /// never stop).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for worker in 0..self.workers() {
            self.idle.wake(worker);
        }
    }

    /// Claims and runs chunks of the current job until none is left.
    fn take_chunks(&self) {
        // SAFETY: a generation this worker has not run was published, so the caller wrote the descriptor
        // before its SeqCst bump (read with Acquire above) and will not write it again until this worker has
        // counted itself done.
        let job = unsafe { &*self.job.get() };
        loop {
            let index = self.next_chunk.fetch_add(1, Ordering::Relaxed);
            if index >= job.chunks {
                return;
            }
            let start = index * job.chunk_len;
            let len = job.chunk_len.min(job.len - start);
            // SAFETY: `index` was claimed by exactly one processor (fetch_add), so this chunk of the caller's
            // `&mut` output is disjoint from every other one; the caller keeps the output and the task borrowed
            // until every worker has left the job. The task is `Sync`, so calling it from here is allowed.
            unsafe {
                let chunk = core::slice::from_raw_parts_mut(job.out.add(start), len);
                (*job.task)(index, chunk);
            }
        }
    }
}

impl<I: Idle> ParallelFor for WorkPool<I> {
    fn threads(&self) -> usize {
        self.workers() + 1
    }

    fn for_each_chunk(&self, out: &mut [f32], chunk_len: usize, task: &Task<'_>) {
        let chunk_len = chunk_len.max(1);
        let chunks = out.len().div_ceil(chunk_len);
        let workers = self.workers();
        if workers == 0 || chunks <= 1 || self.busy.swap(true, Ordering::Acquire) {
            for (index, chunk) in out.chunks_mut(chunk_len).enumerate() {
                task(index, chunk);
            }
            return;
        }
        // SAFETY: only the lifetime is erased. The pointer is used only by `take_chunks` during this call, and
        // this call does not return before every worker has left the job.
        let task: *const Task<'static> = unsafe {
            core::mem::transmute::<*const Task<'_>, *const Task<'static>>(task as *const Task<'_>)
        };
        // SAFETY: `busy` makes this the only caller, and every worker left the previous job before the previous
        // call returned, so nothing reads the descriptor now.
        unsafe {
            *self.job.get() = Job {
                out: out.as_mut_ptr(),
                len: out.len(),
                chunk_len,
                chunks,
                task,
            };
        }
        self.next_chunk.store(0, Ordering::Relaxed);
        self.workers_done.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (worker, sleeping) in self.sleeping.iter().enumerate().take(workers) {
            if sleeping.load(Ordering::SeqCst) {
                self.idle.wake(worker);
            }
        }
        self.take_chunks();
        while self.workers_done.load(Ordering::Acquire) < workers {
            self.idle.relax();
        }
        self.busy.store(false, Ordering::Release);
    }
}
