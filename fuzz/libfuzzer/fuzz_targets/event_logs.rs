//! libFuzzer entry for fuzz_cases::event_logs (see fuzz/src/event_logs.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::event_logs(data));
