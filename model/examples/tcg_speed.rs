//! The engine's speed under an emulator such as QEMU's TCG, which the appliance's development loop runs on:
//! `qemu-x86_64 -cpu max,avx=off,avx2=off,fma=off,f16c=off target/release/examples/tcg_speed ...` runs the engine
//! as the TCG appliance does (portable kernels) in about a minute, without building or booting an image; only guest
//! memory accesses cost less in user mode than in the appliance. Diagnostic; one short run each:
//!
//! `tcg_speed FILE PROMPT_TOKENS DECODE_TOKENS [scalar|native]`: prefill and greedy decode of one GGUF file on one
//! thread with the chosen kernels, in CPU-seconds of this thread.
//!
//! `tcg_speed pieces FILE PROMPT_TOKENS [scalar|native]`: the prefill as the appliance runs it (32-token chunks,
//! one piece of the forward pass at a time), with the CPU-seconds spent in each kind of piece.
//!
//! `tcg_speed fma`: nanoseconds per `libm::fmaf` and per `model::fma::fmaf` (the portable kernels' FMA).
//!
//! `tcg_speed kernels [scalar|native]`: nanoseconds per 32-element block of the decode products SmolLM2 makes
//! (Q4_1 and Q8_0 weights against one token).
use model::gguf::Gguf;
use model::parallel::Serial;
use model::quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
use model::simd;
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};

mod timing;

use timing::cpu_s;

/// Per-block times of the decode products (one token against a 1536 × 576 matrix).
fn kernels() {
    let (rows, nb) = (1536usize, 18usize);
    let w: Vec<BlockQ4_1> = (0..rows * nb)
        .map(|i| BlockQ4_1 {
            d: [0x00, 0x3c],
            m: [0x00, 0x30],
            qs: core::array::from_fn(|k| (i * 7 + k * 13) as u8),
        })
        .collect();
    let w8: Vec<BlockQ8_0> = (0..rows * nb)
        .map(|i| BlockQ8_0 {
            d: [0x00, 0x3c],
            qs: core::array::from_fn(|k| (i * 7 + k * 13) as i8 / 2),
        })
        .collect();
    let y: Vec<BlockQ8_1> = (0..nb)
        .map(|i| BlockQ8_1 {
            d: [0, 0x3c],
            s: [0, 0x3c],
            qs: core::array::from_fn(|k| (i * 5 + k * 11) as i8 / 2),
        })
        .collect();
    let y0: Vec<BlockQ8_0> = y.iter().map(|b| BlockQ8_0 { d: b.d, qs: b.qs }).collect();
    let d = vec![1.0f32; nb];
    let mut out = vec![0.0f32; rows];
    let blocks = (rows * nb) as f64;
    let tile = simd::ActTile {
        qs: &y[..],
        d: &d,
        s: &d,
        batch: 1,
        col0: 0,
    };
    let t = timing::best(3, 100, || {
        simd::mat_q4_1(&w, nb, &tile, 1, &mut out, rows, &mut [])
    });
    let check: f32 = out.iter().sum();
    let tile0 = simd::ActTile {
        qs: &y0[..],
        d: &d,
        s: &d,
        batch: 1,
        col0: 0,
    };
    let t8 = timing::best(3, 100, || {
        simd::mat_q8_0(&w8, nb, &tile0, 1, &mut out, rows, &mut [])
    });
    let check8: f32 = out.iter().sum();
    println!(
        "kernels {:?}: Q4_1·Q8_1 {:.1} ns/block, Q8_0·Q8_0 {:.1} ns/block (checksums {check} {check8})",
        simd::level(),
        t / blocks * 1e9,
        t8 / blocks * 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("kernels") {
        simd::force_scalar(args.get(1).map(String::as_str) == Some("scalar"));
        return kernels();
    }
    if args.first().map(String::as_str) == Some("fma") {
        return fma();
    }
    if args.first().map(String::as_str) == Some("pieces") {
        let [_, path, prompt_tokens, rest @ ..] = &args[..] else {
            panic!("usage: tcg_speed pieces FILE PROMPT_TOKENS [scalar|native]");
        };
        force(rest.first());
        return pieces(path, prompt_tokens.parse().expect("PROMPT_TOKENS"));
    }
    let [path, prompt_tokens, decode_tokens, rest @ ..] = &args[..] else {
        panic!("usage: tcg_speed FILE PROMPT_TOKENS DECODE_TOKENS [scalar|native]");
    };
    let (prompt_tokens, decode_tokens): (usize, usize) = (
        prompt_tokens.parse().expect("PROMPT_TOKENS"),
        decode_tokens.parse().expect("DECODE_TOKENS"),
    );
    force(rest.first());
    let blob = std::fs::read(path).expect("read model");
    let g = Gguf::parse(&blob).expect("parse");
    let model = Model::load(&g).expect("load");
    let prompt = prompt_of(&g, prompt_tokens);
    let mut state = State::new(&model.config, prompt_tokens + decode_tokens + 1, 64);
    let c = cpu_s();
    model
        .forward(&mut state, &prompt, &Serial)
        .expect("prefill");
    let prefill = cpu_s() - c;
    let mut ids = Vec::new();
    let c = cpu_s();
    for _ in 0..decode_tokens {
        let next = model::sampler::argmax(&state.logits);
        ids.push(next);
        model.forward(&mut state, &[next], &Serial).expect("decode");
    }
    let decode = cpu_s() - c;
    println!(
        "{path} kernels {:?}: prefill {prompt_tokens} tokens {prefill:.2} s ({:.2} tok/s), decode {decode_tokens} \
         tokens {decode:.2} s ({:.2} tok/s), ids {ids:?}",
        simd::level(),
        prompt_tokens as f64 / prefill,
        decode_tokens as f64 / decode
    );
}

/// Forces the kernel set the command line names.
fn force(kernels: Option<&String>) {
    simd::force_scalar(match kernels.map(String::as_str) {
        Some("scalar") => true,
        Some("native") | None => false,
        Some(other) => panic!("unknown kernel set {other}"),
    });
}

/// A prompt of exactly `tokens` ids: one sentence, repeated.
fn prompt_of(g: &Gguf, tokens: usize) -> Vec<u32> {
    let tok = Tokenizer::from_gguf(g).expect("tokenizer");
    let mut prompt = Vec::new();
    while prompt.len() < tokens {
        tok.encode(
            "The quick brown fox jumps over the lazy dog while the sea rolls on. ",
            true,
            false,
            &mut prompt,
        );
    }
    prompt.truncate(tokens);
    prompt
}

/// The appliance's prefill (32-token chunks, piece by piece), timed per kind of piece.
fn pieces(path: &str, prompt_tokens: usize) {
    let blob = std::fs::read(path).expect("read model");
    let g = Gguf::parse(&blob).expect("parse");
    let model = Model::load(&g).expect("load");
    let prompt = prompt_of(&g, prompt_tokens);
    let mut state = State::new(&model.config, prompt_tokens + 1, 32);
    let mut spent: Vec<(&str, f64)> = Vec::new();
    let whole = cpu_s();
    for chunk in prompt.chunks(32) {
        let c = cpu_s();
        model.start_batch(&mut state, chunk).expect("a chunk");
        let mut add =
            |name: &'static str, seconds: f64| match spent.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += seconds,
                None => spent.push((name, seconds)),
            };
        add("embedding", cpu_s() - c);
        for piece in 0..model.pieces() {
            let c = cpu_s();
            model.run_piece(&mut state, &Serial);
            add(model.piece_name(piece), cpu_s() - c);
        }
    }
    let whole = cpu_s() - whole;
    println!(
        "{path} kernels {:?}: prefill of {prompt_tokens} tokens in 32-token chunks, {whole:.2} CPU-s",
        simd::level()
    );
    for (name, seconds) in spent {
        println!(
            "  {name:<12} {seconds:7.2} s  {:5.1}%",
            seconds / whole * 100.0
        );
    }
}

/// Nanoseconds per fused multiply-add: libm's (f64 arithmetic) and the engine's (integer arithmetic).
fn fma() {
    let xs: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.37).sin()).collect();
    let chain = |f: fn(f32, f32, f32) -> f32| {
        let mut acc = 0.0f32;
        for (i, &x) in xs.iter().enumerate() {
            acc = f(x, xs[(i * 7) & 1023], acc);
        }
        acc
    };
    let per = |f: fn(f32, f32, f32) -> f32| {
        timing::best(3, 3000, || {
            std::hint::black_box(chain(f));
        }) / xs.len() as f64
            * 1e9
    };
    println!(
        "fmaf: libm {:.1} ns, model::fma {:.1} ns (chains equal: {})",
        per(libm::fmaf),
        per(model::fma::fmaf),
        chain(libm::fmaf).to_bits() == chain(model::fma::fmaf).to_bits()
    );
}
