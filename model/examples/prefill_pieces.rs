//! How long the appliance's main loop can go without polling the network while it prefills a prompt that fills
//! the whole context (issue 12 item 1; docs/ARCHITECTURE.md §5): each session step runs one piece of a 32-token
//! chunk (`Session::set_prefill_in_pieces`, as the kernel's sessions do), and the loop polls between steps. Prints
//! the longest and median step, and the whole-chunk steps the loop took before, on one thread natively.
//!
//! Usage: `cargo run --release -p model --features std --example prefill_pieces -- MODEL.gguf [CONTEXT]`.
use std::time::{Duration, Instant};

use model::gguf::Gguf;
use model::parallel::Serial;
use model::sampler::SamplerConfig;
use model::session::{Engine, Session, SessionConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: prefill_pieces MODEL.gguf [CONTEXT]");
    let context: usize = args.next().map_or(1024, |a| a.parse().expect("a context"));
    let blob = std::fs::read(&path).expect("read the model");
    let gguf = Gguf::parse(&blob).expect("parse the model");
    let engine = Engine::load(&gguf).expect("load the model");
    let vocab = engine.model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..context as u32 - 1)
        .map(|i| 1_000 + i % (vocab - 1_000))
        .collect();
    let config = SessionConfig {
        context,
        prefill_chunk: 32,
    };
    for in_pieces in [true, false] {
        let mut session = Session::new(&engine, config);
        session.set_prefill_in_pieces(in_pieces);
        session
            .start(
                &engine,
                &prompt,
                1,
                SamplerConfig::default(),
                &[] as &[&str],
            )
            .expect("start");
        let mut steps: Vec<Duration> = Vec::new();
        let started = Instant::now();
        while !session.is_prefilled() {
            let step = Instant::now();
            session.step(&engine, &Serial).expect("step");
            steps.push(step.elapsed());
        }
        let total = started.elapsed();
        steps.sort();
        println!(
            "{}: {} prompt tokens in {:.2?}, {} steps, longest {:.2?}, median {:.2?}",
            if in_pieces {
                "pieces (the appliance)"
            } else {
                "whole chunks (before)"
            },
            prompt.len(),
            total,
            steps.len(),
            steps[steps.len() - 1],
            steps[steps.len() / 2],
        );
    }
}
