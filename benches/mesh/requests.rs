//! Workloads 2 and 3: request round trips, one at a time and 100 in flight, raw
//! DEALER -> ROUTER echo against mlmesh `request_raw` -> an echo handler.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use futures::StreamExt;
use mlmesh::{CallOptions, Topic};
use serde_json::{json, Value};
use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};

use crate::report::Report;
use crate::{cpu_secs, echo_pair, payload, raw_echo_server, recv_within, run, Plan, PAYLOAD};

/// One request at a time, `plan.rtt` of them after `plan.warmup`, raw then mlmesh.
pub(crate) fn rtt(plan: &Plan, report: &mut Report) -> Result<()> {
    let (n, warmup) = (plan.rtt, plan.warmup);
    eprintln!("rtt: raw DEALER -> ROUTER echo, {n} requests");
    let raw = run("raw-rtt", raw_rtt(n, warmup))?;
    eprintln!("rtt: mlmesh request_raw -> echo handler, {n} requests");
    let mesh = run("mesh-rtt", mesh_rtt(n, warmup))?;
    report.json.push(raw.json("rtt", "raw_dealer_router"));
    report.json.push(mesh.json("rtt", "mlmesh_request_raw"));
    report.rtt = Some((raw, mesh));
    Ok(())
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) mean: f64,
    pub(crate) max: f64,
    pub(crate) cpu_secs: f64,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>, cpu_secs: f64) -> Self {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            us(samples[i])
        };
        let total: Duration = samples.iter().sum();
        Self {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            mean: us(total) / samples.len().max(1) as f64,
            max: samples.last().map(|d| us(*d)).unwrap_or(0.0),
            cpu_secs,
        }
    }

    pub(crate) fn json(&self, bench: &str, imp: &str) -> Value {
        json!({
            "bench": bench, "impl": imp, "payload": PAYLOAD, "n": self.n,
            "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999,
            "mean_us": self.mean, "max_us": self.max, "cpu_secs": self.cpu_secs,
            "cpu_us_per_op": 1e6 * self.cpu_secs / self.n.max(1) as f64,
        })
    }
}

/// Times a loop of one-at-a-time steps: `warmup` untimed, then `n` timed; the CPU figure
/// covers the timed ones. `while let Some(t) = timer.start() { ...; timer.stop(t) }`.
pub(crate) struct Timer {
    n: usize,
    warmup: usize,
    started: usize,
    samples: Vec<std::time::Duration>,
    cpu0: f64,
}

impl Timer {
    pub(crate) fn new(n: usize, warmup: usize) -> Self {
        Self {
            n,
            warmup,
            started: 0,
            samples: Vec::with_capacity(n),
            cpu0: cpu_secs(),
        }
    }

    /// The start of the next step, or `None` when all are done.
    pub(crate) fn start(&mut self) -> Option<Instant> {
        if self.started == self.warmup + self.n {
            return None;
        }
        if self.started == self.warmup {
            self.cpu0 = cpu_secs();
        }
        self.started += 1;
        Some(Instant::now())
    }

    /// The step begun at `t` is done.
    pub(crate) fn stop(&mut self, t: Instant) {
        if self.started > self.warmup {
            self.samples.push(t.elapsed());
        }
    }

    pub(crate) fn finish(self) -> Latency {
        Latency::of(self.samples, cpu_secs() - self.cpu0)
    }
}

async fn raw_rtt(n: usize, warmup: usize) -> Result<Latency> {
    let (endpoint, server) = raw_echo_server().await?;
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await?;
    let data = Bytes::from(vec![0xab; PAYLOAD]);
    let mut timer = Timer::new(n, warmup);
    while let Some(t) = timer.start() {
        dealer.send(ZmqMessage::from(data.clone())).await?;
        recv_within(&mut dealer).await?;
        timer.stop(t);
    }
    server.abort();
    Ok(timer.finish())
}

async fn mesh_rtt(n: usize, warmup: usize) -> Result<Latency> {
    let (a, b) = echo_pair().await?;
    let topic = Topic::new("bench.echo")?;
    let data = payload()?;
    let mut timer = Timer::new(n, warmup);
    while let Some(t) = timer.start() {
        let reply = b
            .request_raw(&topic, data.clone(), CallOptions::default())
            .await?;
        timer.stop(t);
        if reply.len() != PAYLOAD {
            bail!("echo of {} bytes, expected {PAYLOAD}", reply.len());
        }
    }
    let latency = timer.finish();
    b.shutdown().await;
    a.shutdown().await;
    Ok(latency)
}

/// One pipelined run.
#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub(crate) n: u64,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
    pub(crate) cpu_secs: f64,
}

impl Pipe {
    pub(crate) fn rate(&self) -> f64 {
        (self.n - self.errors) as f64 / self.secs.max(1e-9)
    }

    pub(crate) fn json(&self, imp: &str, in_flight: usize, trial: usize) -> Value {
        json!({
            "bench": "pipeline", "impl": imp, "trial": trial, "payload": PAYLOAD,
            "in_flight": in_flight, "n": self.n, "errors": self.errors, "secs": self.secs,
            "req_per_sec": self.rate(), "cpu_secs": self.cpu_secs,
            "cpu_us_per_req": 1e6 * self.cpu_secs / self.n.max(1) as f64,
        })
    }
}

/// The medians of the pipelined runs: raw, then mlmesh's three ways.
#[derive(Debug, Clone)]
pub(crate) struct Pipelined {
    pub(crate) raw: Pipe,
    pub(crate) stream: Pipe,
    pub(crate) unordered: Pipe,
    pub(crate) tasks: Pipe,
}

fn median_pipe(mut runs: Vec<Pipe>) -> Pipe {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.swap_remove(runs.len() / 2)
}

/// `plan.in_flight` requests outstanding, `plan.pipeline` in all, `plan.trials` times.
pub(crate) fn pipeline(plan: &Plan, report: &mut Report) -> Result<()> {
    let (n, k) = (plan.pipeline, plan.in_flight);
    let (mut raw, mut stream, mut unordered, mut tasks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for trial in 0..plan.trials {
        eprintln!(
            "pipeline: trial {}/{}, {n} requests, {k} in flight",
            trial + 1,
            plan.trials
        );
        raw.push(run("raw-pipe", raw_pipeline(n, k))?);
        stream.push(run("mesh-pipe-stream", stream_pipeline(n, k))?);
        unordered.push(run("mesh-pipe", mesh_pipeline(n, k, false))?);
        tasks.push(run("mesh-pipe-tasks", mesh_pipeline(n, k, true))?);
    }
    for (name, runs) in [
        ("raw_dealer_router", &raw),
        ("mlmesh_request_stream", &stream),
        ("mlmesh_buffer_unordered", &unordered),
        ("mlmesh_tasks", &tasks),
    ] {
        for (i, p) in runs.iter().enumerate() {
            report.json.push(p.json(name, k, i));
        }
    }
    report.pipeline = Some(Pipelined {
        raw: median_pipe(raw),
        stream: median_pipe(stream),
        unordered: median_pipe(unordered),
        tasks: median_pipe(tasks),
    });
    Ok(())
}

/// Raw DEALER with `k` requests outstanding: a new one goes out as each echo comes back.
async fn raw_pipeline(n: u64, k: usize) -> Result<Pipe> {
    let (endpoint, server) = raw_echo_server().await?;
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await?;
    let data = Bytes::from(vec![0xab; PAYLOAD]);
    // Warm the connection up.
    dealer.send(ZmqMessage::from(data.clone())).await?;
    recv_within(&mut dealer).await?;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n.min(k as u64) {
        dealer.send(ZmqMessage::from(data.clone())).await?;
        sent += 1;
    }
    for _ in 0..n {
        recv_within(&mut dealer).await?;
        if sent < n {
            dealer.send(ZmqMessage::from(data.clone())).await?;
            sent += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    server.abort();
    Ok(Pipe {
        n,
        errors: 0,
        secs,
        cpu_secs: cpu,
    })
}

/// mlmesh with `k` concurrent `request_raw` futures (a future, a reply channel and a
/// wake-up per call): in one task (`buffer_unordered`),
/// or as `k` tasks each calling in a loop.
async fn mesh_pipeline(n: u64, k: usize, spawn_tasks: bool) -> Result<Pipe> {
    let (a, b) = echo_pair().await?;
    let topic = Topic::new("bench.echo")?;
    let data = payload()?;
    b.request_raw(&topic, data.clone(), CallOptions::default())
        .await?;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let errors = if spawn_tasks {
        let per = n / k as u64;
        let mut handles = Vec::new();
        for i in 0..k as u64 {
            let (b, topic, data) = (b.clone(), topic.clone(), data.clone());
            let count = per + u64::from(i < n % k as u64);
            handles.push(tokio::spawn(async move {
                let mut errors = 0;
                for _ in 0..count {
                    let r = b.request_raw(&topic, data.clone(), CallOptions::default());
                    errors += u64::from(r.await.is_err());
                }
                errors
            }));
        }
        let mut errors = 0;
        for h in handles {
            errors += h.await?;
        }
        errors
    } else {
        futures::stream::iter(0..n)
            .map(|_| b.request_raw(&topic, data.clone(), CallOptions::default()))
            .buffer_unordered(k)
            .fold(0u64, |e, r| async move { e + u64::from(r.is_err()) })
            .await
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    b.shutdown().await;
    a.shutdown().await;
    Ok(Pipe {
        n,
        errors,
        secs,
        cpu_secs: cpu,
    })
}

/// mlmesh with a request stream of window `k` from one task, as the raw DEALER: one more
/// request sent per answer read.
async fn stream_pipeline(n: u64, k: usize) -> Result<Pipe> {
    let (a, b) = echo_pair().await?;
    let topic = Topic::new("bench.echo")?;
    let data = payload()?;
    b.request_raw(&topic, data.clone(), CallOptions::default())
        .await?;
    let mut stream = b.request_stream(&topic, mlmesh::StreamOptions::default().window(k))?;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n.min(k as u64) {
        stream.send_raw(data.clone())?;
        sent += 1;
    }
    let mut errors = 0;
    while let Some(reply) = stream.next_raw().await {
        errors += u64::from(reply.result.is_err());
        if sent < n {
            stream.send_raw(data.clone())?;
            sent += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    drop(stream);
    b.shutdown().await;
    a.shutdown().await;
    Ok(Pipe {
        n,
        errors,
        secs,
        cpu_secs: cpu,
    })
}
