//! Fuzz target owning everything built on the reader, on raw bytes: `Gguf::parse`, `Tokenizer::from_gguf` (plus
//! encode/decode of a fixed text), `Model::load` and, when it loads, bounded forward steps (`exercise::run`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    model_fuzz::exercise::run(data);
});
