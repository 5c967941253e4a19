//! Times tokenizing single-word prompts of growing length (issue 12: the merge loop's cost per pre-token).
//! Usage: `cargo run --release -p model --example tokenize_speed -- MODEL.gguf [BYTES...]`.
use std::time::Instant;

use model::gguf::Gguf;
use model::tokenizer::Tokenizer;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: tokenize_speed MODEL.gguf [BYTES...]");
    let sizes: Vec<usize> = args.map(|a| a.parse().expect("a byte count")).collect();
    let sizes = if sizes.is_empty() {
        vec![2_000, 8_000, 16_000, 65_536]
    } else {
        sizes
    };
    let blob = std::fs::read(&path).expect("read model");
    let gguf = Gguf::parse(&blob).expect("parse");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    println!(
        "longest token text: {} bytes (a 1024-position context refuses texts over {} bytes untokenized)",
        tokenizer.longest_piece_bytes(),
        1024 * tokenizer.longest_piece_bytes()
    );
    // A run of letters that merges into long tokens: one pre-token, the worst case of a quadratic merge.
    let pattern = "abcdefghijklmnopqrstuvwxyz";
    for size in sizes {
        let text: String = pattern.chars().cycle().take(size).collect();
        let mut ids = Vec::new();
        let started = Instant::now();
        tokenizer.encode(&text, true, true, &mut ids);
        println!(
            "{size:>6} bytes: {:>10.3} ms, {} tokens",
            started.elapsed().as_secs_f64() * 1e3,
            ids.len()
        );
    }
}
