//! Seed and fixture helper for the fuzz targets:
//! `fuzz_seeds DIR` writes the raw-byte targets' seeds into `DIR/gguf_parse` and `DIR/model_load`;
//! `fuzz_seeds recipe INPUT OUTPUT` turns a `gguf_mutate` input (e.g. a crash artifact) into the GGUF file it
//! builds, which is what `model/tests/fixtures/fuzz/` keeps.

use arbitrary::{Arbitrary, Unstructured};
use model_fuzz::recipe::Recipe;

fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    std::process::exit(1);
}

fn write_seeds(dir: &str) {
    let seeds = model_fuzz::seeds::all();
    for target in ["gguf_parse", "model_load"] {
        let d = std::path::Path::new(dir).join(target);
        std::fs::create_dir_all(&d)
            .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", d.display())));
        for (name, bytes) in &seeds {
            let p = d.join(name);
            std::fs::write(&p, bytes)
                .unwrap_or_else(|e| fail(format!("cannot write {}: {e}", p.display())));
        }
    }
    println!("wrote {} seeds per target under {dir}", seeds.len());
}

/// Decodes the input exactly as libfuzzer-sys does for `fuzz_target!(|r: Recipe| ..)` (`arbitrary_take_rest`).
fn build_recipe(input: &str, output: &str) {
    let bytes = std::fs::read(input).unwrap_or_else(|e| fail(format!("cannot read {input}: {e}")));
    let recipe = Recipe::arbitrary_take_rest(Unstructured::new(&bytes))
        .unwrap_or_else(|e| fail(format!("{input} does not decode as a recipe: {e}")));
    let blob = recipe.build();
    std::fs::write(output, &blob).unwrap_or_else(|e| fail(format!("cannot write {output}: {e}")));
    println!("{recipe:?}\nwrote {} bytes to {output}", blob.len());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [dir] => write_seeds(dir),
        [cmd, input, output] if cmd == "recipe" => build_recipe(input, output),
        _ => fail("usage: fuzz_seeds CORPUS_DIR | fuzz_seeds recipe INPUT OUTPUT".into()),
    }
}
