#![no_main]
//! libFuzzer target `auth_exchange`: see [`pgtenant_fuzz::auth_exchange`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgtenant_fuzz::auth_exchange(data));
