#![no_main]
//! libFuzzer target `frames`: see [`pgtenant_fuzz::frames`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::frames(data));
