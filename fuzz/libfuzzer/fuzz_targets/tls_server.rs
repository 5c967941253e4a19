//! libFuzzer entry for fuzz_cases::tls_server (see fuzz/src/tls_server.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cases::tls_server(data));
