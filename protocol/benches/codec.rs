//! Envelope codec micro-benchmark: encode, decode and the event path's batch decode.
//!
//! ```text
//! cargo bench -p mlmesh-protocol --bench codec
//! CODEC_BENCH_ITERS=200000 cargo bench -p mlmesh-protocol --bench codec   # a quicker run
//! cargo bench -p mlmesh-protocol --bench codec -- decode_event   # only names containing it
//! ```
//!
//! The envelope is an event on `bench.data` whose payload is 100 bytes of MessagePack
//! (a 98-byte bin), as in the `mesh` bench's events workload; the batch is 64 of them,
//! the batch size the runtime reaches under load. Each figure is the best of 5 trials of
//! `CODEC_BENCH_ITERS` envelopes (default 1,000,000; a batch call counts 64), in
//! nanoseconds per envelope, results dropped inside the loop: the best trial because
//! this runs on shared machines, where noise only adds time.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use mlmesh_protocol::{encode_batch, to_payload, Codec, Envelope, NodeId, Topic};

const TRIALS: usize = 5;
const BATCH: usize = 64;

fn main() {
    let iters: usize = std::env::var("CODEC_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // Cargo passes `--bench`; other arguments select measurements by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let codec = Codec::default();
    let topic = Topic::new("bench.data").expect("valid topic");
    let payload = to_payload(serde_bytes::Bytes::new(&[7u8; 98])).expect("payload");
    assert_eq!(payload.len(), 100);
    let source = NodeId::new();
    let event = |seq| Envelope::event(topic.clone(), source, seq, Bytes::from(payload.clone()));
    let env = event(1);
    let frame = Bytes::from(codec.encode(&env).expect("encode"));
    let parts: Vec<Vec<u8>> = (1..=BATCH as u64)
        .map(|seq| codec.encode(&event(seq)).expect("encode"))
        .collect();
    let batch = Bytes::from(encode_batch(parts.iter().map(|p| &p[..])));
    let (one, many) = (frame.len(), batch.len());
    println!("envelope {one} bytes, batch of {BATCH} {many} bytes");
    println!("{iters} envelopes per trial, best of {TRIALS} trials");

    measure(&filters, "encode", iters, 1, || {
        black_box(codec.encode(black_box(&env)).expect("encode"));
    });
    measure(&filters, "decode", iters, 1, || {
        black_box(codec.decode(black_box(&frame)).expect("decode"));
    });
    measure(&filters, "decode_frame, one envelope", iters, 1, || {
        black_box(codec.decode_frame(black_box(&frame)).expect("decode"));
    });
    measure(
        &filters,
        "decode_frame, batch of 64",
        iters / BATCH,
        BATCH,
        || {
            black_box(codec.decode_frame(black_box(&batch)).expect("decode"));
        },
    );
    measure(
        &filters,
        "decode_event_frame, one envelope",
        iters,
        1,
        || {
            black_box(
                codec
                    .decode_event_frame(&topic, black_box(&frame))
                    .expect("decode"),
            );
        },
    );
    measure(
        &filters,
        "decode_event_frame, batch of 64",
        iters / BATCH,
        BATCH,
        || {
            black_box(
                codec
                    .decode_event_frame(&topic, black_box(&batch))
                    .expect("decode"),
            );
        },
    );
}

/// Runs `op` `rounds` times per trial and prints the best trial's time per envelope
/// (`per_op` envelopes per call), if `name` contains one of `filters` (or there are none).
fn measure(filters: &[String], name: &str, rounds: usize, per_op: usize, mut op: impl FnMut()) {
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return;
    }
    for _ in 0..rounds / 10 {
        op();
    }
    let best = (0..TRIALS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..rounds {
                op();
            }
            start.elapsed().as_nanos() as f64 / (rounds * per_op) as f64
        })
        .fold(f64::INFINITY, f64::min);
    println!("{name:<36} {best:>8.1} ns/envelope");
}
