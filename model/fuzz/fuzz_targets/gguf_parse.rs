//! Fuzz target owning the GGUF reader alone: `Gguf::parse` on raw bytes, then a walk over every metadata value
//! (array elements included) and tensor info that checks the reader's promises (bounds, alignment, unique names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::parse(data) {
        model_fuzz::exercise::walk(&g, data.len());
    }
});
