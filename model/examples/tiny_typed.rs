//! Writes the tiny llama-architecture model whose attention and feed-forward matrices all have one tensor type
//! (`TinySpec::llama_typed`), as `scripts/differential/tiny-fixtures.sh` and model/tests/tiny_llamacpp.rs use it:
//! `cargo run --release -p model --example tiny_typed -- TYPE OUT.gguf` with TYPE a ggml type name (`Q5_K`).
use model::quant::GgmlType;
use model::tiny::{generate, TinySpec};

/// The seed of every generated tiny model (runner's `TINY_SEED`).
const SEED: u64 = 1;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, out] = args.as_slice() else {
        eprintln!("usage: tiny_typed TYPE OUT.gguf (TYPE as ggml names it, e.g. Q5_K)");
        std::process::exit(2);
    };
    let Some(t) = (0..64)
        .filter_map(GgmlType::from_u32)
        .find(|t| t.name().eq_ignore_ascii_case(name))
    else {
        eprintln!("tiny_typed: unknown tensor type {name}");
        std::process::exit(2);
    };
    std::fs::write(out, generate(&TinySpec::llama_typed(t), SEED)).expect("write the model");
}
