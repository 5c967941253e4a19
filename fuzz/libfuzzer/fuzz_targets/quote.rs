//! libFuzzer entry for fuzz_cases::quote (see fuzz/src/quote.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::quote(data));
