//! libFuzzer target: a live node's ROUTER and SUB sockets (see `mlmesh_fuzz::node_input`).
//! `cargo +nightly fuzz run node_input --features libfuzzer`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlmesh_fuzz::node_input(data));
