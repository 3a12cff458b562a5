//! The fuzz targets on a stable toolchain: a mutational fuzzer seeded with SPEC.md's
//! test vectors (and `fuzz/corpus/<target>/` when present), run for a bounded time.
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin mlmesh-fuzz -- codec --seconds 60
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin mlmesh-fuzz -- node_input --seconds 60
//! ```
//! `mlmesh-fuzz write-seeds` writes the same seeds to `fuzz/corpus/<target>/`, where
//! `cargo fuzz` starts from them. Options: `--seconds N` (default 30), `--seed N` (default: from the clock; printed),
//! `--max-len N` (default 4096). A failing input is written to
//! `fuzz/artifacts/<target>/crash-<hash>` before the process aborts, and the command
//! exits non-zero; replay it with `--replay FILE`. It prints executions, executions per
//! second and its peak memory at the end.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The input being run, for the panic hook.
static CURRENT: Mutex<(String, Vec<u8>)> = Mutex::new((String::new(), Vec::new()));

/// xorshift64*: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// MessagePack headers that lie or nest: what hand-written attacks use.
const INTERESTING: &[&[u8]] = &[
    &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32 of 4 GiB
    &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin32 of 4 GiB
    &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4 billion
    &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32 of 4 billion
    &[0xc1],                               // never used
    &[0x91, 0x91, 0x91, 0x91, 0x91, 0x91], // nesting
    &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
    &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], // NaN
    &[0xa1, b'v', 0x02],                   // "v": 2
    &[0xc0],
    &[0x80],
    &[0x90],
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 => {
                let i = rng.below(v.len() + 1);
                let what = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(i..i, what.iter().copied());
            }
            5 if v.len() > 1 => {
                let a = rng.below(v.len());
                let b = a + rng.below(v.len() - a);
                v.drain(a..b);
            }
            6 => {
                // Splice with another input.
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            7 if v.len() > 2 => {
                // Repeat a slice (deep nesting, repeated keys).
                let a = rng.below(v.len());
                let b = (a + 1 + rng.below(16)).min(v.len());
                let part = v[a..b].to_vec();
                for _ in 0..1 + rng.below(64) {
                    v.splice(a..a, part.iter().copied());
                }
            }
            _ => {
                let n = rng.below(64);
                v = (0..n).map(|_| rng.next() as u8).collect();
            }
        }
    }
    v.truncate(max_len);
    v
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn artifacts(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    if target == "write-seeds" {
        // The starting corpus for `cargo fuzz` (libFuzzer starts from nothing otherwise).
        for (target, seeds) in [
            ("codec", mlmesh_fuzz::seeds()),
            ("node_input", mlmesh_fuzz::node_seeds()),
        ] {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(target);
            let _ = std::fs::create_dir_all(&dir);
            for (name, bytes) in &seeds {
                let _ = std::fs::write(dir.join(format!("seed-{name}")), bytes);
            }
            println!("{}: {} seeds", dir.display(), seeds.len());
        }
        return;
    }
    let run: fn(&[u8]) = match target.as_str() {
        "codec" => mlmesh_fuzz::codec,
        "node_input" => mlmesh_fuzz::node_input,
        _ => {
            eprintln!("usage: mlmesh-fuzz codec|node_input [--seconds N] [--seed N] [--max-len N] [--replay FILE]\n       mlmesh-fuzz write-seeds");
            std::process::exit(2);
        }
    };
    let (mut seconds, mut max_len) = (30u64, 4096usize);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut replay = None;
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--seconds" => seconds = value.parse().unwrap_or(seconds),
            "--seed" => seed = value.parse().unwrap_or(seed),
            "--max-len" => max_len = value.parse().unwrap_or(max_len),
            "--replay" => replay = Some(PathBuf::from(value)),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    let hook_target = target.clone();
    std::panic::set_hook(Box::new(move |info| {
        let (_, input) = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
        let mut h = DefaultHasher::new();
        input.hash(&mut h);
        let dir = artifacts(&hook_target);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("crash-{:016x}", h.finish()));
        let _ = std::fs::write(&path, &input);
        eprintln!(
            "mlmesh-fuzz {hook_target}: a property broke: {info}\n  input ({} bytes) written to {}",
            input.len(),
            path.display()
        );
        std::process::abort();
    }));
    if let Some(file) = replay {
        let input = std::fs::read(&file).unwrap_or_default();
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = (target.clone(), input.clone());
        run(&input);
        println!("{}: no failure", file.display());
        return;
    }

    let mut corpus: Vec<Vec<u8>> = match target.as_str() {
        "node_input" => mlmesh_fuzz::node_seeds()
            .into_iter()
            .map(|(_, b)| b)
            .collect(),
        _ => mlmesh_fuzz::seeds().into_iter().map(|(_, b)| b).collect(),
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(&target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        corpus.extend(
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok()),
        );
    }
    println!(
        "mlmesh-fuzz {target}: seed {seed}, {} seed inputs, {seconds} s",
        corpus.len()
    );
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut execs = 0u64;
    // Every seed as it is first, then mutations.
    let seeds = corpus.clone();
    for input in seeds {
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = (target.clone(), input.clone());
        run(&input);
        execs += 1;
    }
    while start.elapsed() < Duration::from_secs(seconds) {
        let input = mutate(&mut rng, &corpus, max_len);
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = (target.clone(), input.clone());
        run(&input);
        execs += 1;
        // Keep a few mutants as seeds, so mutations compound.
        if rng.below(64) == 0 && corpus.len() < 4096 {
            corpus.push(input);
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "mlmesh-fuzz {target}: {execs} executions in {took:.0} s ({:.0}/s), no failure; peak RSS {} MiB",
        execs as f64 / took,
        peak_kib() / 1024
    );
    if let Some(stats) = mlmesh_fuzz::node_stats() {
        println!(
            "mlmesh-fuzz {target}: node counters {stats:?}; the raw peer dropped itself and was taken back {} times",
            mlmesh_fuzz::READMISSIONS.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
