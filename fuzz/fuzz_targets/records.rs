#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rejoin::fuzz::records(data));
