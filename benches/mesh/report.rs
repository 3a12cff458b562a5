//! The Markdown table and the JSON lines.

use std::time::Duration;

use serde_json::Value;

use crate::events::Flow;
use crate::requests::{Latency, Pipelined};
use crate::{Plan, PAYLOAD, WORKERS};

/// The median trial of each event-throughput variant.
#[derive(Debug, Clone)]
pub(crate) struct EventsResult {
    pub(crate) blast: Flow,
    pub(crate) windowed: Flow,
    pub(crate) block: Flow,
    pub(crate) drop_newest: Flow,
}

/// Everything measured in this run, for the table; `json` holds every trial.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) events: Option<EventsResult>,
    /// One event at a time: raw, then mlmesh.
    pub(crate) latency: Option<(Latency, Latency)>,
    pub(crate) rtt: Option<(Latency, Latency)>,
    pub(crate) pipeline: Option<Pipelined>,
    pub(crate) discovery: Option<(Latency, Latency)>,
    pub(crate) mdns: Option<Latency>,
    pub(crate) json: Vec<Value>,
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else {
        format!("{v:.0} us")
    }
}

fn flow_cell(f: &Flow) -> String {
    format!("{} (loss {:.2}%)", rate(f.rate()), f.loss_pct())
}

fn ratio(mesh: f64, raw: f64) -> String {
    format!("{:.2}x", mesh / raw.max(1e-12))
}

impl Report {
    pub(crate) fn print(&self, plan: &Plan, elapsed: Duration) {
        let mut rows: Vec<[String; 6]> = Vec::new();
        let mut row = |a: &str, b: &str, c: String, d: String, e: String, f: &str| {
            rows.push([a.into(), b.into(), c, d, e, f.into()]);
        };
        if let Some(e) = &self.events {
            let what = format!("events, {} x {PAYLOAD} B", group(plan.events));
            row(
                &what,
                "received/s: raw with a 50k credit window vs Overflow::Block",
                flow_cell(&e.windowed),
                flow_cell(&e.block),
                ratio(e.block.rate(), e.windowed.rate()),
                "> 2.8 M/s lossless (Zenoh here)",
            );
            row(
                &what,
                "received/s: raw PUB as fast as send returns vs Overflow::DropNewest",
                flow_cell(&e.blast),
                flow_cell(&e.drop_newest),
                ratio(e.drop_newest.rate(), e.blast.rate()),
                "-",
            );
            row(
                &what,
                "CPU ns per received event (credit window vs Block)",
                format!("{:.0}", ns_per(&e.windowed)),
                format!("{:.0}", ns_per(&e.block)),
                ratio(ns_per(&e.block), ns_per(&e.windowed)),
                "-",
            );
        }
        if let Some((raw, mesh)) = &self.latency {
            let what = format!("event latency, 1 at a time, n={}", group(raw.n as u64));
            for (m, r, x, goal) in [
                ("p50", raw.p50, mesh.p50, "no latency added by batching"),
                ("p99", raw.p99, mesh.p99, "-"),
            ] {
                row(&what, m, us(r), us(x), ratio(x, r), goal);
            }
        }
        if let Some((raw, mesh)) = &self.rtt {
            let what = format!("round trip, 1 in flight, n={}", group(raw.n as u64));
            for (m, r, x, goal) in [
                ("p50", raw.p50, mesh.p50, "<= 1.25x raw"),
                ("p99", raw.p99, mesh.p99, "< 188 us (Zenoh here)"),
                ("p99.9", raw.p999, mesh.p999, "-"),
                ("mean", raw.mean, mesh.mean, "-"),
            ] {
                row(&what, m, us(r), us(x), ratio(x, r), goal);
            }
        }
        if let Some(p) = &self.pipeline {
            let what = format!(
                "pipelined, {} in flight, n={}",
                plan.in_flight,
                group(p.raw.n)
            );
            for (how, mesh) in [
                ("req/s (request stream)", &p.stream),
                ("req/s (buffer_unordered)", &p.unordered),
                ("req/s (100 tasks)", &p.tasks),
            ] {
                let raw = p.raw.rate();
                let r = mesh.rate();
                row(&what, how, rate(raw), rate(r), ratio(r, raw), ">= 0.7x raw");
            }
        }
        if let Some((raw, mesh)) = &self.discovery {
            let what = format!("discovery by seed, {} joins", raw.n);
            row(
                &what,
                "p50",
                us(raw.p50),
                us(mesh.p50),
                ratio(mesh.p50, raw.p50),
                "-",
            );
            row(
                &what,
                "max",
                us(raw.max),
                us(mesh.max),
                ratio(mesh.max, raw.max),
                "-",
            );
        }
        if let Some(m) = &self.mdns {
            let what = format!("discovery by mDNS (lo), {} joins", m.n);
            row(
                &what,
                "p50",
                "-".into(),
                us(m.p50),
                "-".into(),
                "~1 s (Zyre)",
            );
            row(&what, "max", "-".into(), us(m.max), "-".into(), "-");
        }

        println!();
        println!("| Workload | Metric | raw zmq.rs | mlmesh | mlmesh / raw | Goal |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            println!("| {} |", r.join(" | "));
        }
        println!();
        println!(
            "Bench time {:.1} s; {WORKERS} worker threads; {} trial(s) per throughput \
             figure (median shown).",
            elapsed.as_secs_f64(),
            plan.trials
        );
        println!();
        for v in &self.json {
            println!("{v}");
        }
    }
}

fn ns_per(f: &Flow) -> f64 {
    1e9 * f.cpu_secs / f.received.max(1) as f64
}

/// 2000000 -> "2,000,000".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
