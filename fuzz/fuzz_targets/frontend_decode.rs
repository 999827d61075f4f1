#![no_main]
//! libFuzzer target `frontend_decode`: see [`pgtenant_fuzz::frontend_decode`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::frontend_decode(data));
