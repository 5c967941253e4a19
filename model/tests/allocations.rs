//! Allocations after load: a counting global allocator (on the calling thread, while a flag is set) around prefill
//! chunks and one-token decode steps with [`Serial`], through the engine's forward pass and through the session the
//! appliance drives. The forward pass allocates nothing once its run state exists, for a prefill chunk or one
//! token (its scratch, the batched kernels' work buffer included, lives there); a session's decode step allocates
//! only the text it hands out with each token. (With a thread pool, each row chunk of a batched product allocates
//! its own work buffer; see `matmul::batched`.)
//!
//! Runs the tiny models and the real SmolLM2 and Gemma 3 files from `$CLOISTER_MODEL_DIR` or
//! `<workspace>/.cache/models/` (a missing file fails the test, as in `golden.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use model::gguf::Gguf;
use model::parallel::Serial;
use model::sampler::SamplerConfig;
use model::session::{Engine, Event, Session, SessionConfig};
use model::tiny::{generate, TinySpec};
use model::transformer::State;

/// [`System`], counting the allocations (and reallocations) made on a thread while that thread's flag is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches only const-initialised thread-locals,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the allocations it made on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, COUNT.with(|n| n.get()))
}

/// Decode steps counted per model.
const STEPS: usize = 6;
/// Prompt tokens per prefill chunk.
const CHUNK: usize = 8;

/// Allocations of one model's runs.
struct Counts {
    /// Per prefill chunk of the forward pass (`CHUNK` tokens).
    forward_prefill: Vec<usize>,
    /// Per one-token decode of the forward pass.
    forward_decode: Vec<usize>,
    /// Per session step during prefill.
    session_prefill: Vec<usize>,
    /// Per session decode step (each returns a token and its text).
    session_decode: Vec<usize>,
}

fn measure(name: &str, blob: &[u8]) -> Counts {
    let g = Gguf::parse(blob).expect("parses");
    let engine = Engine::load(&g).expect("loads");
    let mut prompt = Vec::new();
    engine.encode_text(
        "The quick brown fox jumps over the lazy dog, and then it runs into the woods.",
        &mut prompt,
    );
    assert!(prompt.len() > CHUNK, "the prompt spans several chunks");

    // The forward pass with its own run state.
    let m = &engine.model;
    let mut state = State::new(&m.config, 128, CHUNK);
    let forward_prefill = prompt
        .chunks(CHUNK)
        .map(|chunk| counted(|| m.forward(&mut state, chunk, &Serial).expect("prefill")).1)
        .collect();
    let mut token = prompt[0];
    let forward_decode = (0..STEPS)
        .map(|_| {
            let ((), n) = counted(|| m.forward(&mut state, &[token], &Serial).expect("decode"));
            token = model::sampler::argmax(&state.logits);
            n
        })
        .collect();

    // The session the appliance drives.
    let config = SessionConfig {
        context: 128,
        prefill_chunk: CHUNK,
    };
    let mut session = Session::new(&engine, config);
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    };
    session
        .start(&engine, &prompt, STEPS + 1, greedy, &[] as &[&str])
        .expect("start");
    let (mut session_prefill, mut session_decode) = (Vec::new(), Vec::new());
    while session_decode.len() < STEPS {
        let prefilled = session.is_prefilled();
        let (event, n) = counted(|| session.step(&engine, &Serial).expect("step"));
        match event {
            Event::Pending => session_prefill.push(n),
            // The step that runs the last prompt chunk also samples the first token.
            Event::Token { .. } if !prefilled => session_prefill.push(n),
            Event::Token { .. } => session_decode.push(n),
            // An end-of-text token: the session's decode steps are what was counted so far.
            Event::Done(_) => break,
        }
    }
    let counts = Counts {
        forward_prefill,
        forward_decode,
        session_prefill,
        session_decode,
    };
    eprintln!(
        "{name}: allocations per forward prefill chunk {:?}, per forward decode {:?}, per session prefill step \
         {:?}, per session decode step {:?}",
        counts.forward_prefill, counts.forward_decode, counts.session_prefill, counts.session_decode
    );
    counts
}

fn check(name: &str, blob: &[u8]) {
    let counts = measure(name, blob);
    assert!(
        counts.forward_decode.iter().all(|&n| n == 0),
        "{name}: the forward pass allocated during decode: {:?}",
        counts.forward_decode
    );
    assert!(
        counts.forward_prefill.iter().all(|&n| n == 0),
        "{name}: the forward pass allocated during prefill: {:?}",
        counts.forward_prefill
    );
    // The token's text: the decoded piece, the completed characters and the event's own string.
    assert!(
        counts.session_decode.iter().all(|&n| n <= 8),
        "{name}: a session decode step allocated more than its text: {:?}",
        counts.session_decode
    );
}

/// A real model file; a missing one fails the test (CI fetches both with `cloister fetch-model`).
fn real_model(file: &str) -> Vec<u8> {
    let dir = std::env::var_os("CLOISTER_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
        });
    let path = dir.join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Fetch the real models with `cargo run -p runner -- fetch-model smollm2 gemma3`, or point \
             CLOISTER_MODEL_DIR at a directory holding them",
            path.display()
        )
    })
}

#[test]
fn tiny_llama_forward_allocates_nothing_after_load() {
    check("tiny llama", &generate(&TinySpec::llama(), 3));
}

#[test]
fn tiny_gemma3_forward_allocates_nothing_after_load() {
    check("tiny gemma3", &generate(&TinySpec::gemma3(), 3));
}

#[test]
fn smollm2_forward_allocates_nothing_after_load() {
    check("SmolLM2", &real_model("smollm2-135m-instruct-q4_1.gguf"));
}

#[test]
fn gemma3_forward_allocates_nothing_after_load() {
    check("Gemma 3", &real_model("gemma3-270m-q4_k_m.gguf"));
}
