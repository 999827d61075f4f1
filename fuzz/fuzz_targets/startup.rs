#![no_main]
//! libFuzzer target `startup`: see [`pgtenant_fuzz::startup`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::startup(data));
