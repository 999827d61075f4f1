#![no_main]
//! libFuzzer target `scram`: see [`pgtenant_fuzz::scram`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::scram(data));
