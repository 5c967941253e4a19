//! Prefill (128 tokens) and decode (128 tokens) throughput of one GGUF file at a given thread count, median of 5
//! runs; the same measurement `runner bench` makes, usable before the runner is wired.

use std::time::Instant;

mod timing;

use timing::cpu_s;

use model::gguf::Gguf;
use model::parallel::ThreadPool;
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: bench FILE [THREADS]");
    let threads: usize = args
        .next()
        .map(|t| t.parse().expect("THREADS"))
        .unwrap_or(1);
    let mut blob = std::fs::read(&path).expect("read model");
    // As `cloister bench` loads a model (`model::interleave`).
    if model::simd::interleaved_kernels() {
        model::interleave::interleave(&mut blob).expect("interleave");
    }
    let g = Gguf::parse(&blob).expect("parse");
    let model = Model::load(&g).expect("load");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let pool = ThreadPool::new(threads).expect("threads");
    let mut prompt = Vec::new();
    while prompt.len() < 128 {
        tok.encode(
            "The quick brown fox jumps over the lazy dog while the sea rolls on. ",
            true,
            false,
            &mut prompt,
        );
    }
    prompt.truncate(128);
    let mut state = State::new(&model.config, 256, 512);
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    let (mut pre_cpu, mut dec_cpu) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        state.reset();
        let (t, c) = (Instant::now(), cpu_s());
        model.forward(&mut state, &prompt, &pool).expect("prefill");
        pre.push(128.0 / t.elapsed().as_secs_f64());
        pre_cpu.push(128.0 / (cpu_s() - c));
        let (t, c) = (Instant::now(), cpu_s());
        for _ in 0..128 {
            let next = model::sampler::argmax(&state.logits);
            model.forward(&mut state, &[next], &pool).expect("decode");
        }
        dec.push(128.0 / t.elapsed().as_secs_f64());
        dec_cpu.push(128.0 / (cpu_s() - c));
    }
    pre_cpu.sort_by(f64::total_cmp);
    dec_cpu.sort_by(f64::total_cmp);
    pre.sort_by(f64::total_cmp);
    dec.sort_by(f64::total_cmp);
    println!(
        "{path} threads {threads} kernels {:?}: prefill {:.1} tok/s, decode {:.1} tok/s \
         (per CPU-second of the calling thread: prefill {:.1}, decode {:.1})",
        model::simd::level(),
        pre[2],
        dec[2],
        pre_cpu[2],
        dec_cpu[2]
    );
}
