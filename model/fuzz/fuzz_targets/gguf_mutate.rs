//! Structure-aware fuzz target: decodes a `recipe::Recipe` from the input (shape, types, semantic edits of a tiny
//! model's metadata and tensors, byte flips, truncation), builds that GGUF file and runs `exercise::run` on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_fuzz::recipe::Recipe;

fuzz_target!(|recipe: Recipe| {
    let blob = recipe.build();
    model_fuzz::exercise::run(&blob);
});
