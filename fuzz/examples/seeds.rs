//! Writes each target's seeds into `fuzz/corpus/TARGET/` (`cargo run -p fuzz-cases --example seeds`).

fn main() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in fuzz_cases::seeds::seeds() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(&name), bytes).expect("seed file");
        println!("{target}/{name}");
    }
}
