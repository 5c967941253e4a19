//! libFuzzer entry for fuzz_cases::tpm_responses (see fuzz/src/tpm_responses.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::tpm_responses(data));
