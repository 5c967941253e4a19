//! libFuzzer entry for fuzz_cases::ek_chain (see fuzz/src/ek_chain.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::ek_chain(data));
