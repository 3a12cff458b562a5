//! mlmesh against raw zmq.rs, measured in the same run, on loopback, 100-byte payloads.
//!
//! ```text
//! cargo bench --bench mesh                          # every workload except mdns
//! cargo bench --bench mesh -- events rtt            # only the named workloads
//! MESH_BENCH_SCALE=0.1 cargo bench --bench mesh     # a tenth of every count (smoke run)
//! MESH_BENCH_TRIALS=5 cargo bench --bench mesh      # more trials of the throughput runs
//! cargo bench --bench mesh -- mdns                  # mDNS discovery (loopback multicast)
//! ```
//!
//! Workloads (names for the filter): `events`, `latency` (one event at a time), `rtt`,
//! `pipeline`, `discovery`, `mdns`.
//! Stdout gets a Markdown table, then one JSON object per measurement (the lines that
//! start with `{`); progress goes to stderr.
//!
//! Method. The workload is pinned (fixed counts, not adaptive sampling). Every
//! measurement gets a fresh Tokio runtime with 2 worker threads (this machine has 2
//! cores), and both ends of a workload (raw sockets or mlmesh nodes) live in it, so
//! raw zmq.rs and mlmesh get the same two threads and pay the same loopback costs; the
//! driver itself runs as a task on those workers, not on an extra thread. One process
//! keeps the comparison like for like: separate processes would give each side two
//! more threads than the machine has cores. Throughput runs alternate raw and mlmesh
//! trials so that background noise hits both alike, and report the median trial.
//!
//! Layout: `mesh/events.rs` (workload 1 and event latency), `mesh/requests.rs` (2 and 3),
//! `mesh/discovery.rs` (4), `mesh/report.rs` (table and JSON); shared helpers here.

#[path = "mesh/discovery.rs"]
mod discovery;
#[path = "mesh/events.rs"]
mod events;
#[path = "mesh/report.rs"]
mod report;
#[path = "mesh/requests.rs"]
mod requests;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use mlmesh::{Config, Node, NodeHandle, NodeId, Status};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::report::Report;

/// Bytes of every payload (raw frame, or mlmesh payload inside its envelope).
const PAYLOAD: usize = 100;
/// Worker threads of every runtime: the machine's cores.
const WORKERS: usize = 2;
/// A throughput receiver stops after this much silence (the rest is counted lost).
const IDLE: Duration = Duration::from_millis(500);
/// Every setup wait (connections, discovery, one reply) ends by this, at the latest.
const WAIT: Duration = Duration::from_secs(10);

/// The pinned workload; `MESH_BENCH_SCALE` scales the counts.
#[derive(Debug, Clone)]
struct Plan {
    events: u64,
    window: u64,
    trials: usize,
    rtt: usize,
    warmup: usize,
    pipeline: u64,
    in_flight: usize,
    joins: usize,
    only: Vec<String>,
}

impl Plan {
    fn from_env() -> Result<Self> {
        let scale: f64 = env_or("MESH_BENCH_SCALE", 1.0)?;
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        let only: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        const KNOWN: [&str; 6] = ["events", "latency", "rtt", "pipeline", "discovery", "mdns"];
        if let Some(bad) = only.iter().find(|a| !KNOWN.contains(&a.as_str())) {
            bail!("unknown workload {bad:?}; known: {}", KNOWN.join(", "));
        }
        Ok(Self {
            events: n(2_000_000.0),
            window: 50_000,
            trials: env_or("MESH_BENCH_TRIALS", 3)?,
            rtt: n(20_000.0) as usize,
            warmup: n(2_000.0) as usize,
            pipeline: n(100_000.0),
            in_flight: 100,
            joins: n(20.0) as usize,
            only,
        })
    }

    /// Whether a workload runs: named, or nothing named (mdns only when named).
    fn runs(&self, name: &str) -> bool {
        if self.only.is_empty() {
            name != "mdns"
        } else {
            self.only.iter().any(|o| o == name)
        }
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(key) {
        Ok(v) => v.parse().map_err(|e| anyhow::anyhow!("{key}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<()> {
    let plan = Plan::from_env()?;
    let started = Instant::now();
    let mut report = Report::default();
    if plan.runs("events") {
        events::events(&plan, &mut report)?;
    }
    if plan.runs("latency") {
        events::latency(&plan, &mut report)?;
    }
    if plan.runs("rtt") {
        requests::rtt(&plan, &mut report)?;
    }
    if plan.runs("pipeline") {
        requests::pipeline(&plan, &mut report)?;
    }
    if plan.runs("discovery") {
        discovery::discovery(&plan, &mut report)?;
    }
    if plan.runs("mdns") {
        discovery::mdns(&plan, &mut report)?;
    }
    report.print(&plan, started.elapsed());
    Ok(())
}

/// Runs `work` as a task of a fresh 2-worker runtime, then shuts the runtime down.
/// The worker threads are named `label`, so that a profile can be split by measurement
/// (`perf report --comm mesh-pipe`).
fn run<T, F>(label: &str, work: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name(label)
        .enable_all()
        .build()?;
    let out = rt.block_on(async { tokio::spawn(work).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    out.context("benchmark task panicked")?
}

/// The 100-byte payload, pre-encoded: a MessagePack bin 8 of 98 bytes.
fn payload() -> Result<Bytes> {
    let bytes = mlmesh::protocol::to_payload(&serde_bytes::ByteBuf::from(vec![0xab; PAYLOAD - 2]))?;
    if bytes.len() != PAYLOAD {
        bail!("payload is {} bytes, expected {PAYLOAD}", bytes.len());
    }
    Ok(Bytes::from(bytes))
}

/// A mesh name no other run uses, so concurrent test runs never join it.
fn unique_mesh() -> String {
    format!("bench{}", &NodeId::new().0.simple().to_string()[20..])
}

fn seeded(name: &str, mesh: &str, seed: &NodeHandle) -> Config {
    let mut c = Config::local(name, mesh);
    c.discovery.seeds = vec![seed.endpoints().rpc.clone()];
    c
}

/// Waits (bounded) until `node` lists `peer`, woken by peer events rather than polling.
async fn wait_peer(node: &NodeHandle, peer: NodeId) -> Result<()> {
    let mut events = node.watch_peers();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if node.peers().iter().any(|p| p.id == peer) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("{} did not see peer {peer} within {WAIT:?}", node.name()),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                bail!("{} stopped while waiting for a peer", node.name())
            }
            Ok(_) => {}
        }
    }
}

/// User + system CPU time of this process so far, in seconds (from /proc, 10 ms ticks).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// A raw ROUTER that echoes every message back (identity frame included), in order.
async fn raw_echo_server() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await?.to_string();
    let task = tokio::spawn(async move {
        while let Ok(msg) = router.recv().await {
            if router.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok((endpoint, task))
}

async fn recv_within(dealer: &mut DealerSocket) -> Result<ZmqMessage> {
    Ok(tokio::time::timeout(WAIT, dealer.recv())
        .await
        .context("no echo within the deadline")??)
}

/// Node A serves `bench.echo` (the payload back), node B is seeded with A and calls it.
async fn echo_pair() -> Result<(NodeHandle, NodeHandle)> {
    let mesh = unique_mesh();
    let a = Node::builder(Config::local("bench-echo", &mesh))
        .handle_raw(
            "bench.echo",
            |data, _ctx| async move { Ok::<_, Status>(data) },
        )
        .spawn()
        .await?;
    let b = Node::builder(seeded("bench-client", &mesh, &a))
        .spawn()
        .await?;
    wait_peer(&b, a.id()).await?;
    Ok((a, b))
}
