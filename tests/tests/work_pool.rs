//! The appliance's parallel-for (`model/src/parallel/work.rs`) on host threads standing in for application
//! processors: every chunk runs exactly once, results equal the serial loop's, workers that went to sleep are
//! woken, and the fork/join overhead per call is measured. The host's own pool (`model::parallel::ThreadPool`) is
//! the same code on parked threads; its tests are at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use model::parallel::work::{Idle, WorkPool};
use model::parallel::{ParallelFor, Serial, ThreadPool};

/// Parking and unparking threads, as the kernel halts and sends IPIs.
#[derive(Default)]
struct Parking {
    threads: Mutex<Vec<Option<Thread>>>,
    sleeps: AtomicUsize,
    jobs: AtomicUsize,
}

impl Idle for Parking {
    fn sleep(&self, _worker: usize) {
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        thread::park();
    }

    fn wake(&self, worker: usize) {
        if let Some(Some(thread)) = self.threads.lock().unwrap().get(worker) {
            thread.unpark();
        }
    }

    fn after_job(&self) {
        self.jobs.fetch_add(1, Ordering::Relaxed);
    }

    fn relax(&self) {
        thread::yield_now();
    }
}

/// Spinning with PAUSE only, as kernel workers do between jobs (for the overhead measurement).
struct Spin;

impl Idle for Spin {
    fn sleep(&self, _worker: usize) {}
    fn wake(&self, _worker: usize) {}
}

/// The tests run one at a time: each pool's threads spin, and the host has few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pool with `workers` threads running its worker loop; they start after the pool is set up, as application
/// processors may check in late.
fn pool(workers: usize, spin_rounds: u32) -> &'static WorkPool<Parking> {
    let pool: &'static WorkPool<Parking> =
        Box::leak(Box::new(WorkPool::new(Parking::default(), spin_rounds)));
    pool.set_workers(workers);
    let mut threads = pool.idle().threads.lock().unwrap();
    for worker in 0..workers {
        let handle = thread::spawn(move || pool.run_worker(worker));
        threads.push(Some(handle.thread().clone()));
    }
    drop(threads);
    pool
}

/// The task the engine would run: each chunk writes a function of its index and position.
fn fill(index: usize, chunk: &mut [f32]) {
    for (offset, value) in chunk.iter_mut().enumerate() {
        *value += (index * 1000 + offset) as f32;
    }
}

#[test]
fn every_chunk_runs_once_and_equals_the_serial_loop() {
    let _serial = one_at_a_time();
    let pool = pool(3, 1000);
    assert_eq!(pool.threads(), 4);
    for (len, chunk_len) in [(1000, 7), (64, 64), (65, 64), (5, 1), (4096, 100), (3, 0)] {
        let mut expected = vec![0.0f32; len];
        Serial.for_each_chunk(&mut expected, chunk_len, &fill);
        let mut got = vec![0.0f32; len];
        let calls = AtomicUsize::new(0);
        pool.for_each_chunk(&mut got, chunk_len, &|index, chunk| {
            calls.fetch_add(1, Ordering::Relaxed);
            fill(index, chunk);
        });
        assert_eq!(got, expected, "len {len}, chunk {chunk_len}");
        assert_eq!(calls.into_inner(), len.div_ceil(chunk_len.max(1)));
    }
    pool.stop();
}

#[test]
fn sleeping_workers_are_woken_for_the_next_job() {
    let _serial = one_at_a_time();
    // No spinning: each worker sleeps as soon as it has nothing to do.
    let pool = pool(2, 0);
    for round in 0..200 {
        let mut out = vec![0.0f32; 256];
        pool.for_each_chunk(&mut out, 8, &fill);
        let mut expected = vec![0.0f32; 256];
        Serial.for_each_chunk(&mut expected, 8, &fill);
        assert_eq!(out, expected, "round {round}");
        if round % 50 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(pool.idle().sleeps.load(Ordering::Relaxed) > 0);
    // Every worker took part in every job.
    assert_eq!(pool.idle().jobs.load(Ordering::Relaxed), 2 * 200);
    pool.stop();
}

#[test]
fn a_nested_call_runs_serially() {
    let _serial = one_at_a_time();
    let pool = pool(2, 1000);
    let mut out = vec![0.0f32; 64];
    pool.for_each_chunk(&mut out, 16, &|index, chunk| {
        let mut inner = vec![0.0f32; 32];
        pool.for_each_chunk(&mut inner, 4, &fill);
        chunk.fill(index as f32 + inner[5]);
    });
    let expected: Vec<f32> = (0..64).map(|i| (i / 16) as f32 + 1001.0).collect();
    assert_eq!(out, expected);
    pool.stop();
}

#[test]
fn without_workers_it_is_the_serial_loop() {
    let _serial = one_at_a_time();
    let pool: WorkPool<Parking> = WorkPool::new(Parking::default(), 0);
    assert_eq!(pool.threads(), 1);
    let mut out = vec![0.0f32; 100];
    pool.for_each_chunk(&mut out, 10, &fill);
    let mut expected = vec![0.0f32; 100];
    Serial.for_each_chunk(&mut expected, 10, &fill);
    assert_eq!(out, expected);
}

/// The cost of one fork/join with a spinning worker: what each of the engine's ~210 products per SmolLM2 token
/// pays on top of its arithmetic. Printed with `--nocapture`, not bounded: on a host whose cores are busy with
/// other work, a descheduled worker costs the caller a time slice, and the number says more about the host.
#[test]
fn fork_join_overhead() {
    let _serial = one_at_a_time();
    // One worker thread and the caller: two spinning threads, as many as this host's cores.
    let pool: &'static WorkPool<Spin> = Box::leak(Box::new(WorkPool::new(Spin, u32::MAX)));
    pool.set_workers(1);
    thread::spawn(move || pool.run_worker(0));
    let mut out = vec![0.0f32; 64];
    let calls = 5_000;
    let started = Instant::now();
    for _ in 0..calls {
        pool.for_each_chunk(&mut out, 1, &|_, chunk| chunk[0] += 1.0);
    }
    let per_call = started.elapsed() / calls;
    pool.stop();
    println!(
        "fork/join with 1 spinning worker thread: {:.2} us per call",
        per_call.as_secs_f64() * 1e6
    );
    assert!(out.iter().all(|&value| value == calls as f32));
}

/// The host's pool: the caller and its workers split each call as the work pool does, results equal the serial
/// loop's across calls with idle gaps (the workers park and are woken), and dropping it stops its threads.
#[test]
fn the_host_pool_equals_the_serial_loop_and_stops_on_drop() {
    let _serial = one_at_a_time();
    for threads in [0, 1, 2, 3] {
        let pool = ThreadPool::new(threads).expect("start the pool's threads");
        assert_eq!(pool.threads(), threads.max(1));
        for round in 0..20 {
            let mut expected = vec![0.0f32; 1000];
            Serial.for_each_chunk(&mut expected, 7, &fill);
            let mut got = vec![0.0f32; 1000];
            let calls = AtomicUsize::new(0);
            pool.for_each_chunk(&mut got, 7, &|index, chunk| {
                calls.fetch_add(1, Ordering::Relaxed);
                fill(index, chunk);
            });
            assert_eq!(got, expected, "{threads} threads, round {round}");
            assert_eq!(calls.into_inner(), 1000usize.div_ceil(7));
            if round % 5 == 4 {
                // Longer than the workers' spin, so the next call wakes parked threads.
                thread::sleep(Duration::from_millis(20));
            }
        }
        let mut got = vec![0.0f32; 64];
        let threads_seen = Mutex::new(std::collections::HashSet::new());
        // Chunks that take a while, so that every thread gets some.
        pool.for_each_chunk(&mut got, 1, &|index, chunk| {
            threads_seen.lock().unwrap().insert(thread::current().id());
            thread::sleep(Duration::from_millis(1));
            fill(index, chunk);
        });
        assert_eq!(threads_seen.into_inner().unwrap().len(), threads.max(1));
        drop(pool);
    }
}
