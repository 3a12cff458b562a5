//! libFuzzer target: the envelope codec and every payload decoder (see `mlmesh_fuzz::codec`).
//! `cargo +nightly fuzz run codec --features libfuzzer`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlmesh_fuzz::codec(data));
