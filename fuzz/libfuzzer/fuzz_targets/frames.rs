//! libFuzzer entry for fuzz_cases::frames (see fuzz/src/frames.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::frames(data));
