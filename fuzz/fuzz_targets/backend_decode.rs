#![no_main]
//! libFuzzer target `backend_decode`: see [`pgtenant_fuzz::backend_decode`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::backend_decode(data));
