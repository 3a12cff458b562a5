//! Workload 1: event throughput, raw PUB -> SUB against mlmesh publish -> subscription.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use mlmesh::{Config, Node, NodeHandle, Overflow, Subscription, Topic};
use serde_json::{json, Value};
use tokio::sync::Notify;
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::report::{EventsResult, Report};
use crate::requests::{Latency, Timer};
use crate::{cpu_secs, payload, run, seeded, unique_mesh, wait_peer, Plan, IDLE, PAYLOAD, WAIT};

/// Receivers report progress to a windowed sender every this many messages.
const PROGRESS_EVERY: u64 = 1024;
/// A receiver reads the clock every this many receipts (and at the last).
const CLOCK_EVERY: u64 = 64;

/// One throughput trial.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flow {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// From the first send to the last receipt.
    pub(crate) secs: f64,
    /// From the first send to the last send returning.
    pub(crate) send_secs: f64,
    /// Process CPU time (user + system) over the trial.
    pub(crate) cpu_secs: f64,
    /// mlmesh: dropped by the publisher's queue (DropNewest).
    pub(crate) dropped: u64,
    /// mlmesh: known missing at the receiver from sequence gaps.
    pub(crate) missed: u64,
    /// mlmesh: dropped because the subscription was full.
    pub(crate) sub_dropped: u64,
    /// mlmesh: frames written to the PUB socket (batches).
    pub(crate) frames: u64,
}

impl Flow {
    pub(crate) fn rate(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }

    pub(crate) fn lost(&self) -> u64 {
        self.sent - self.received
    }

    pub(crate) fn loss_pct(&self) -> f64 {
        100.0 * self.lost() as f64 / self.sent.max(1) as f64
    }

    pub(crate) fn json(&self, bench: &str, imp: &str, trial: usize) -> Value {
        json!({
            "bench": bench, "impl": imp, "trial": trial, "payload": PAYLOAD,
            "sent": self.sent, "received": self.received, "lost": self.lost(),
            "secs": self.secs, "send_secs": self.send_secs, "cpu_secs": self.cpu_secs,
            "msgs_per_sec": self.rate(),
            "cpu_ns_per_msg": 1e9 * self.cpu_secs / self.received.max(1) as f64,
            "events_dropped": self.dropped, "events_missed": self.missed,
            "subscription_dropped": self.sub_dropped, "frames_published": self.frames,
        })
    }
}

/// What a throughput receiver shares with the sender: its count (for a windowed
/// sender) and the signal to stop.
#[derive(Debug, Default)]
struct Progress {
    received: AtomicU64,
    room: Notify,
    stop: Notify,
}

impl Progress {
    /// Counts a receipt; `last` is the time of the latest receipt, read every
    /// [`CLOCK_EVERY`] receipts and at the `n`th (a clock read per event would cost the
    /// receiver ~25 ns an application does not spend), so that a lossy run's rate is
    /// over by at most `CLOCK_EVERY - 1` events' time.
    fn record(&self, count: u64, n: u64, last: &mut Instant) {
        self.received.store(count, Ordering::Relaxed);
        if count.is_multiple_of(CLOCK_EVERY) || count == n {
            *last = Instant::now();
        }
        if count.is_multiple_of(PROGRESS_EVERY) {
            // notify_one keeps a permit when nobody waits: no lost wake-up.
            self.room.notify_one();
        }
    }

    /// Waits until fewer than `window` sent messages are unreceived; fails if the
    /// receiver makes no progress for [`WAIT`] (a message was lost after all).
    async fn wait_room(&self, sent: u64, window: u64) -> Result<()> {
        while sent - self.received.load(Ordering::Relaxed) >= window {
            if tokio::time::timeout(WAIT, self.room.notified())
                .await
                .is_err()
            {
                bail!("the receiver made no progress within {WAIT:?}");
            }
        }
        Ok(())
    }

    /// After the last send: waits until all `n` arrived or nothing arrived for [`IDLE`],
    /// then stops the receiver. Polls the count rather than putting a timer on every
    /// receive, so that the receive loop costs the same as an application's.
    async fn stop_when_idle(&self, n: u64) {
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while seen < n && quiet_since.elapsed() < IDLE {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        self.stop.notify_one();
    }
}

/// Runs every event-throughput variant `plan.trials` times, alternating raw and mlmesh.
pub(crate) fn events(plan: &Plan, report: &mut Report) -> Result<()> {
    let mut blast = Vec::new();
    let mut windowed = Vec::new();
    let mut block = Vec::new();
    let mut drop_newest = Vec::new();
    for trial in 0..plan.trials {
        let n = plan.events;
        let w = plan.window;
        eprintln!("events: trial {}/{}", trial + 1, plan.trials);
        blast.push(run("raw-ev", raw_events(n, None))?);
        block.push(run("mesh-block", mesh_events(n, Overflow::Block))?);
        windowed.push(run("raw-ev-window", raw_events(n, Some(w)))?);
        drop_newest.push(run("mesh-drop", mesh_events(n, Overflow::DropNewest))?);
    }
    for (name, runs) in [
        ("raw_pub_sub", &blast),
        ("raw_pub_sub_window", &windowed),
        ("mlmesh_block", &block),
        ("mlmesh_drop_newest", &drop_newest),
    ] {
        for (i, f) in runs.iter().enumerate() {
            report.json.push(f.json("events", name, i));
        }
    }
    report.events = Some(EventsResult {
        blast: median_flow(blast),
        windowed: median_flow(windowed),
        block: median_flow(block),
        drop_newest: median_flow(drop_newest),
    });
    Ok(())
}

/// Workload 1b: one event at a time on an idle path, from the publish call to the
/// subscriber's receipt (one process, one clock): raw PUB -> SUB against mlmesh
/// `publish_raw` -> a subscription. Shows what the envelope, the publish queue and the
/// batching cost a lone event (an idle queue sends each event alone, at once).
pub(crate) fn latency(plan: &Plan, report: &mut Report) -> Result<()> {
    let (n, warmup) = (plan.rtt, plan.warmup);
    eprintln!("latency: raw PUB -> SUB, {n} events one at a time");
    let raw = run("raw-evlat", raw_latency(n, warmup))?;
    eprintln!("latency: mlmesh publish -> subscription, {n} events one at a time");
    let mesh = run("mesh-evlat", mesh_latency(n, warmup))?;
    report.json.push(raw.json("event_latency", "raw_pub_sub"));
    report
        .json
        .push(mesh.json("event_latency", "mlmesh_publish"));
    report.latency = Some((raw, mesh));
    Ok(())
}

async fn raw_latency(n: usize, warmup: usize) -> Result<Latency> {
    let (mut publisher, mut sub) = raw_pair().await?;
    // Late probes drain before the timed part.
    while tokio::time::timeout(Duration::from_millis(50), sub.recv())
        .await
        .is_ok()
    {}
    let payload = Bytes::from(vec![0xab; PAYLOAD]);
    let mut timer = Timer::new(n, warmup);
    while let Some(t) = timer.start() {
        publisher.send(ZmqMessage::from(payload.clone())).await?;
        let msg = tokio::time::timeout(WAIT, sub.recv()).await??;
        timer.stop(t);
        if msg.get(0).map(Bytes::len) != Some(PAYLOAD) {
            bail!("the raw SUB received a message of another size");
        }
    }
    Ok(timer.finish())
}

async fn mesh_latency(n: usize, warmup: usize) -> Result<Latency> {
    let (a, b, mut sub) = mesh_pair(Overflow::default()).await?;
    let topic = Topic::new("bench.data")?;
    let data = payload()?;
    let mut timer = Timer::new(n, warmup);
    while let Some(t) = timer.start() {
        a.publish_raw(&topic, data.clone()).await?;
        let event = tokio::time::timeout(WAIT, sub.recv()).await?;
        timer.stop(t);
        match event {
            Some(ev) if ev.topic() == &topic && ev.missed == 0 => {}
            other => bail!("expected the next bench.data event, got {other:?}"),
        }
    }
    let latency = timer.finish();
    a.shutdown().await;
    b.shutdown().await;
    Ok(latency)
}

fn median_flow(mut runs: Vec<Flow>) -> Flow {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.swap_remove(runs.len() / 2)
}

/// Raw zmq.rs: PUB -> SUB, one 100-byte frame per message. With `window`, the sender
/// keeps at most that many unreceived (an application-level credit, lossless); without,
/// it sends as fast as `send` returns and the PUB drops what its queues cannot hold.
async fn raw_events(n: u64, window: Option<u64>) -> Result<Flow> {
    let (mut publisher, sub) = raw_pair().await?;
    let progress = Arc::new(Progress::default());
    let receiver = tokio::spawn(count_raw(sub, n, progress.clone()));
    let payload = Bytes::from(vec![0xab; PAYLOAD]);
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    for sent in 0..n {
        if let Some(w) = window {
            progress.wait_room(sent, w).await?;
        }
        publisher.send(ZmqMessage::from(payload.clone())).await?;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    progress.stop_when_idle(n).await;
    let (received, last) = receiver.await??;
    Ok(Flow {
        sent: n,
        received,
        secs: last.saturating_duration_since(t0).as_secs_f64(),
        send_secs,
        cpu_secs: cpu_secs() - cpu0,
        ..Flow::default()
    })
}

async fn count_raw(mut sub: SubSocket, n: u64, progress: Arc<Progress>) -> Result<(u64, Instant)> {
    let mut count = 0;
    let mut last = Instant::now();
    let stop = progress.stop.notified();
    tokio::pin!(stop);
    while count < n {
        let msg = tokio::select! {
            biased;
            msg = sub.recv() => msg?,
            _ = &mut stop => break,
        };
        // Late probes are shorter than the payload: skip them.
        if msg.get(0).map(Bytes::len) == Some(PAYLOAD) {
            count += 1;
            progress.record(count, n, &mut last);
        }
    }
    Ok((count, last))
}

/// mlmesh: node A `publish_raw`s a pre-encoded 100-byte payload, node B's subscription
/// receives. Losses come from the counters (A's drops, B's sequence gaps) and the count.
async fn mesh_events(n: u64, overflow: Overflow) -> Result<Flow> {
    let (a, b, mut sub) = mesh_pair(overflow).await?;

    let topic = Topic::new("bench.data")?;
    let data = payload()?;
    let (sa, sb) = (a.stats(), b.stats());
    let progress = Arc::new(Progress::default());
    let receiver = tokio::spawn({
        let progress = progress.clone();
        async move {
            let mut count = 0;
            let mut last = Instant::now();
            let stop = progress.stop.notified();
            tokio::pin!(stop);
            while count < n {
                let event = tokio::select! {
                    biased;
                    ev = sub.recv() => ev,
                    _ = &mut stop => break,
                };
                match event {
                    Some(ev) if ev.topic().as_str() == "bench.data" => {
                        count += 1;
                        progress.record(count, n, &mut last);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (count, last)
        }
    });
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    for _ in 0..n {
        a.publish_raw(&topic, data.clone()).await?;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    progress.stop_when_idle(n).await;
    let (received, last) = receiver.await?;
    let cpu = cpu_secs() - cpu0;
    let (ea, eb) = (a.stats(), b.stats());
    a.shutdown().await;
    b.shutdown().await;
    Ok(Flow {
        sent: n,
        received,
        secs: last.saturating_duration_since(t0).as_secs_f64(),
        send_secs,
        cpu_secs: cpu,
        dropped: ea.events_dropped - sa.events_dropped,
        missed: eb.events_missed - sb.events_missed,
        sub_dropped: eb.subscription_dropped - sb.subscription_dropped,
        frames: ea.frames_published - sa.frames_published,
    })
}

/// A raw PUB and a SUB subscribed to everything, connected: a probe went through.
async fn raw_pair() -> Result<(PubSocket, SubSocket)> {
    let mut publisher = PubSocket::new();
    let endpoint = publisher.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut sub = SubSocket::new();
    sub.subscribe("").await?;
    sub.connect(&endpoint).await?;
    // The slow joiner: probe until the subscription has reached the PUB.
    let deadline = Instant::now() + WAIT;
    loop {
        publisher.send(ZmqMessage::from("probe")).await?;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(20), sub.recv()).await {
            m?;
            return Ok((publisher, sub));
        }
        if Instant::now() > deadline {
            bail!("the raw SUB received no probe within {WAIT:?}");
        }
    }
}

/// Node A (publishing with `overflow`) and node B seeded with it, B subscribed to
/// `bench.**` and connected to A's PUB: a probe went through, and the probes are drained.
async fn mesh_pair(overflow: Overflow) -> Result<(NodeHandle, NodeHandle, Subscription)> {
    let mesh = unique_mesh();
    let mut config = Config::local("bench-pub", &mesh);
    config.limits.publish_overflow = overflow;
    let a = Node::builder(config).spawn().await?;
    let b = Node::builder(seeded("bench-sub", &mesh, &a))
        .spawn()
        .await?;
    let mut sub = b.subscribe("bench.**")?;
    wait_peer(&b, a.id()).await?;
    // The slow joiner: probe (another topic, so its sequence does not count) until B's
    // SUB is connected and subscribed.
    let warm = Topic::new("bench.warm")?;
    let deadline = Instant::now() + WAIT;
    loop {
        a.publish_raw(&warm, payload()?).await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), sub.recv()).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("B received no probe event within {WAIT:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    while sub.try_recv().is_some() {}
    Ok((a, b, sub))
}
