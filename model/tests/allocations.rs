//! Heap allocations of the forward pass after load, counted by a wrapping global allocator: a decode step (one
//! token through `Model::forward`, and through `Session::step` as the appliance drives it) and a prefill chunk,
//! on the tiny models and, when present, the real SmolLM2 and Gemma 3 files.
//!
//! Run with `--nocapture` to see the counts. One `#[test]` only: the counter is process-wide, so nothing else in this binary may run while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use model::gguf::Gguf;
use model::parallel::{ParallelFor, Serial};
use model::sampler::SamplerConfig;
use model::session::{Engine, Event, Session, SessionConfig};
use model::tiny::{generate, TinySpec};
use model::transformer::State;

/// `System`, counting allocations and reallocations while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made (on any thread) while `f` runs.
fn count<R>(f: impl FnOnce() -> R) -> (usize, R) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (ALLOCATIONS.load(Ordering::SeqCst), r)
}

/// Decode steps counted per measurement.
const STEPS: usize = 8;
/// The appliance's prefill chunk (`net::serving::PREFILL_CHUNK`).
const CHUNK: usize = 32;

/// What one model costs in allocations.
#[derive(Debug)]
#[allow(dead_code)] // The fields are read through `Debug` in the report line.
struct Counts {
    /// `Model::forward` of one prefill chunk of `CHUNK` tokens.
    prefill_chunk: usize,
    /// `Model::forward` of one token, per token, with [`Serial`].
    forward_decode: usize,
    /// The same with a 2-worker `ThreadPool` (with the `std` feature). Reported, not asserted: the engine allocates
    /// nothing there either, but rayon's injector queue allocates a block once per 63 jobs sent into the pool.
    forward_decode_threads: Option<usize>,
    /// `Session::step` in the decode phase, per token (forward, sampling, and the event's text).
    session_decode: usize,
}

fn measure(name: &str, blob: &[u8]) -> Counts {
    let g = Gguf::parse(blob).expect("model parses");
    let engine = Engine::load(&g).expect("model loads");
    let model = &engine.model;
    let mut prompt = Vec::new();
    engine.encode_text(
        "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods",
        &mut prompt,
    );
    prompt.truncate(CHUNK);
    while prompt.len() < CHUNK {
        prompt.push(prompt[prompt.len() % 4]);
    }

    let forward_counts = |par: &dyn ParallelFor| {
        let mut state = State::new(&model.config, 256, CHUNK);
        let (prefill, r) = count(|| model.forward(&mut state, &prompt, par));
        r.expect("prefill");
        // No warm-up step: `State::new` made every buffer the decode steps use.
        let (decode, r) = count(|| {
            for &token in &prompt[..STEPS] {
                model.forward(&mut state, &[token], par)?;
            }
            Ok::<_, model::transformer::ModelError>(())
        });
        r.expect("decode");
        (prefill, decode / STEPS)
    };
    let (prefill_chunk, forward_decode) = forward_counts(&Serial);
    #[cfg(feature = "std")]
    let forward_decode_threads = {
        let pool = model::parallel::ThreadPool::new(2).expect("thread pool");
        Some(forward_counts(&pool).1)
    };
    #[cfg(not(feature = "std"))]
    let forward_decode_threads = None;

    let mut session = Session::new(
        &engine,
        SessionConfig {
            context: 256,
            prefill_chunk: CHUNK,
        },
    );
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    };
    session
        .start(&engine, &prompt, STEPS + 1, greedy, &[] as &[&str])
        .expect("start");
    // The prefill step also emits the first token.
    let first = session.step(&engine, &Serial).expect("prefill step");
    assert!(matches!(first, Event::Token { .. }), "{first:?}");
    let (session_total, tokens) = count(|| {
        let mut tokens = 0;
        for _ in 0..STEPS {
            match session.step(&engine, &Serial).expect("decode step") {
                Event::Token { .. } => tokens += 1,
                // An end-of-text token ends early; count what ran.
                Event::Done(_) => break,
                Event::Pending => unreachable!("prefill is over"),
            }
        }
        tokens
    });
    let counts = Counts {
        prefill_chunk,
        forward_decode,
        forward_decode_threads,
        session_decode: session_total / tokens.max(1),
    };
    eprintln!("{name}: {counts:?}");
    counts
}

fn real_model(file: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("CLOISTER_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
        });
    std::fs::read(dir.join(file)).ok()
}

#[test]
fn allocations_per_decoded_token() {
    let mut all = vec![
        measure("tiny llama", &generate(&TinySpec::llama(), 1)),
        measure("tiny gemma3", &generate(&TinySpec::gemma3(), 1)),
    ];
    for file in ["smollm2-135m-instruct-q4_1.gguf", "gemma3-270m-q4_k_m.gguf"] {
        match real_model(file) {
            Some(blob) => all.push(measure(file, &blob)),
            None => eprintln!("{file}: not in the model cache, skipped"),
        }
    }
    for counts in &all {
        assert_eq!(counts.forward_decode, 0, "{counts:?}");
        // The token's text is the event's own `String`; everything else a step needs is the session's.
        assert!(counts.session_decode <= 1, "{counts:?}");
    }
}
