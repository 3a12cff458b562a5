//! A small mlmesh on this host, told as a story: nodes join over mDNS (on loopback),
//! events fan out to every interested peer, instructions are acknowledged, one error
//! comes back with a standard code, and a node that leaves is noticed.
//!
//! ```text
//! cargo run --example mesh              # runs the story and exits 0
//! cargo run --example mesh -- --keep    # stays up afterwards (Ctrl-C to stop)
//! cargo run --example mesh -- --seeds   # mDNS off: the nodes find each other through a seed
//! ```
//! mDNS here uses only the loopback interface, so nothing leaves this host.

use std::time::{Duration, Instant};

use anyhow::Context;
use mlmesh::{Config, Node, NodeHandle, PeerEvent, Status};
use serde::{Deserialize, Serialize};

/// `demo.validate` instruction: check a batch of rows before training.
#[derive(Debug, Serialize, Deserialize)]
struct Validate {
    dataset: String,
    rows: u32,
}

/// Its ack.
#[derive(Debug, Serialize, Deserialize)]
struct Validated {
    dataset: String,
    accepted: u32,
}

/// `train.epoch.ended` event.
#[derive(Debug, Serialize, Deserialize)]
struct EpochEnded {
    epoch: u32,
    loss: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let seeds_only = std::env::args().any(|a| a == "--seeds");
    let t0 = Instant::now();
    let say = |what: &str| println!("[{:>6.3}s] {what}", t0.elapsed().as_secs_f64());

    let mesh = format!("demo-{}", std::process::id());
    let config = |name: &str| {
        let mut c = Config::default(); // loopback, mDNS on `lo`, ephemeral ports
        c.node.name = name.into();
        c.node.mesh = mesh.clone();
        c.discovery.mdns = !seeds_only;
        c
    };

    say(&format!(
        "starting three nodes in mesh {mesh:?} ({})",
        if seeds_only {
            "seeds only"
        } else {
            "mDNS on loopback"
        }
    ));
    let validator = Node::builder(config("validator"))
        .role("validator")
        .handle("demo.validate", |req: Validate, _ctx| async move {
            if req.rows == 0 {
                return Err(Status::error(
                    mlmesh::Code::InvalidArgument,
                    "an empty dataset cannot be validated",
                )
                .with_field("rows"));
            }
            Ok(Validated {
                dataset: req.dataset,
                accepted: req.rows - req.rows / 100,
            })
        })
        .spawn()
        .await
        .context("starting the validator")?;
    let mut trainer_config = config("trainer");
    let mut monitor_config = config("monitor");
    if seeds_only {
        trainer_config.discovery.seeds = vec![validator.endpoints().rpc.clone()];
        monitor_config.discovery.seeds = vec![validator.endpoints().rpc.clone()];
    }
    let trainer = Node::builder(trainer_config)
        .role("trainer")
        .spawn()
        .await?;
    let monitor = Node::builder(monitor_config)
        .role("monitor")
        .spawn()
        .await?;

    wait_for_mesh(&[&validator, &trainer, &monitor], &say).await?;

    say("monitor subscribes to `train.**`; validator to `train.*.ended`");
    let mut monitor_events = monitor.subscribe("train.**")?;
    let mut validator_events = validator.subscribe("train.*.ended")?;
    // Subscriptions reach publishers asynchronously (ZeroMQ's slow joiner): probe first.
    settle(&trainer, &mut [&mut monitor_events, &mut validator_events]).await?;

    say("trainer asks for validation (an instruction; every instruction gets an ack)");
    let ack: Validated = trainer
        .request(
            "demo.validate",
            &Validate {
                dataset: "iris-v3".into(),
                rows: 150,
            },
        )
        .await?;
    say(&format!("  ack from the validator: {ack:?}"));

    say("trainer sends a bad instruction: the error carries a standard code and the field");
    match trainer
        .request::<_, Validated>(
            "demo.validate",
            &Validate {
                dataset: "empty".into(),
                rows: 0,
            },
        )
        .await
    {
        Err(status) => say(&format!("  error ack: {status}")),
        Ok(v) => anyhow::bail!("expected an error, got {v:?}"),
    }
    match trainer.request::<_, ()>("demo.deploy", &()).await {
        Err(status) => say(&format!("  nobody serves demo.deploy: {status}")),
        Ok(()) => anyhow::bail!("expected NO_RESPONDERS"),
    }

    say("trainer publishes three epochs (events fan out to every interested peer)");
    for epoch in 1..=3u32 {
        let loss = 1.0 / f64::from(epoch + 1);
        trainer
            .publish("train.epoch.ended", &EpochEnded { epoch, loss })
            .await?;
    }
    for (who, sub) in [
        ("monitor", &mut monitor_events),
        ("validator", &mut validator_events),
    ] {
        let mut seen = 0;
        while seen < 3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .context("waiting for an epoch event")?
                .context("the node stopped")?;
            if ev.topic().as_str() != "train.epoch.ended" {
                continue; // a late warm-up probe
            }
            seen += 1;
            let e: EpochEnded = ev.decode()?;
            say(&format!(
                "  {who} got {} #{} from {}: epoch {} loss {:.3}",
                ev.topic(),
                ev.seq(),
                short(ev.source()),
                e.epoch,
                e.loss
            ));
        }
    }

    say("broadcast: every provider of demo.validate acks on its own");
    let acks = trainer
        .broadcast::<_, Validated>(
            "demo.validate",
            &Validate {
                dataset: "iris-v3".into(),
                rows: 10,
            },
            None,
        )
        .await?;
    for a in &acks {
        say(&format!(
            "  {} -> {:?}",
            a.name,
            a.result.as_ref().map(|v| v.accepted)
        ));
    }

    if keep {
        say("--keep: the mesh stays up; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }

    say("validator leaves gracefully; the others notice");
    let mut watch = monitor.watch_peers();
    let gone = validator.id();
    validator.shutdown().await;
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.recv().await {
                Ok(PeerEvent::Left(id, why)) if id == gone => return Ok(why),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("waiting for the validator to leave")??;
    say(&format!(
        "  monitor saw the validator leave ({left:?}); peers now: {}",
        names(&monitor)
    ));

    say("a worker joins, then crashes (dropped without a goodbye); heartbeats tell");
    let mut worker_config = config("worker");
    worker_config.liveness.heartbeat_ms = 250;
    if seeds_only {
        worker_config.discovery.seeds = vec![monitor.endpoints().rpc.clone()];
    }
    let worker = Node::builder(worker_config).spawn().await?;
    let crashed = worker.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !monitor.peers().iter().any(|p| p.id == crashed) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not join within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let crash_at = Instant::now();
    drop(worker);
    let why = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.recv().await {
                Ok(PeerEvent::Left(id, why)) if id == crashed => return Ok(why),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("waiting for the crashed worker to expire")??;
    say(&format!(
        "  monitor dropped the worker after {:?} ({why:?})",
        crash_at.elapsed()
    ));

    trainer.shutdown().await;
    monitor.shutdown().await;
    say("done");
    Ok(())
}

/// Waits (bounded) until every node sees the other two, and tells who joined.
async fn wait_for_mesh(nodes: &[&NodeHandle], say: &impl Fn(&str)) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| n.peers().len() < nodes.len() - 1) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes did not find each other within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in nodes {
        say(&format!("  {} sees: {}", n.name(), names(n)));
    }
    Ok(())
}

/// Publishes probes until every subscription has received one.
async fn settle(
    publisher: &NodeHandle,
    subs: &mut [&mut mlmesh::Subscription],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = vec![false; subs.len()];
    while ready.iter().any(|r| !r) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscriptions did not settle within 10 s"
        );
        publisher.publish("train.warmup.ended", &()).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (i, s) in subs.iter_mut().enumerate() {
            while let Some(ev) = s.try_recv() {
                ready[i] |= ev.topic().as_str() == "train.warmup.ended";
            }
        }
    }
    Ok(())
}

fn names(node: &NodeHandle) -> String {
    node.peers()
        .iter()
        .map(|p| format!("{} ({:?}, {})", p.name, p.state, p.roles.join(",")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(id: mlmesh::NodeId) -> String {
    id.to_string()[..8].to_owned()
}
