//! A small ML team's mesh on this host, told as a story: a tracker and a model registry
//! (each with its SQLite store), a trainer, a deployer and a monitor find each other; the
//! trainer trains a real model (logistic regression by gradient descent on data it
//! generates), logs params and per-epoch metrics through the standard `tracking/1`
//! names, writes the model file, registers it and points the alias `champion` at it;
//! the deployer hears of it, locates `champion` and loads the file; the monitor sees
//! every change go by; a bad instruction gets a standard error; and a worker that dies
//! mid-run has its run marked CRASHED.
//!
//! ```text
//! cargo run --example mesh              # runs the story and exits 0
//! cargo run --example mesh -- --keep    # stays up afterwards (Ctrl-C to stop)
//! cargo run --example mesh -- --seeds   # mDNS off: the nodes find each other through a seed
//! cargo run --example mesh -- --mlflow http://127.0.0.1:5000   # MLflow serves tracking and registry
//! ```
//! With `--mlflow URL` one node, the MLflow adapter (`mlmesh-mlflow`), replaces the
//! tracker and the registry, and the same story is logged into that MLflow server. Start
//! it with a local artifact root, so that the trainer can write the model file where
//! MLflow says the run's artifacts go: `mlflow server --backend-store-uri
//! sqlite:///mlflow.db --default-artifact-root $PWD/mlartifacts --port 5000 --workers 1`.
//! mDNS here uses only the loopback interface, so nothing leaves this host. The stores
//! live in a temporary directory, removed at the end.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mlmesh::clients::{Registry, Tracking};
use mlmesh::protocol::registry::{self, VersionCreate};
use mlmesh::protocol::tracking::{self, DatasetInput, LogBatch, Param, RunInfo, RunStatus};
use mlmesh::{Config, Event, Node, NodeHandle, Subscription};
use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};
use mlmesh_nodes::registry::Registry as RegistryNode;
use mlmesh_nodes::store::StoreSection;
use mlmesh_nodes::tracker::Tracker;
use serde::{Deserialize, Serialize};

/// What the trainer writes and the deployer loads.
#[derive(Debug, Serialize, Deserialize)]
struct ModelFile {
    weights: Vec<f64>,
    bias: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let seeds_only = std::env::args().any(|a| a == "--seeds");
    let mlflow_url = std::env::args().skip_while(|a| a != "--mlflow").nth(1);
    let t0 = Instant::now();
    let say = |what: &str| println!("[{:>6.3}s] {what}", t0.elapsed().as_secs_f64());

    let mesh = format!("demo-{}", std::process::id());
    let data = tempfile::Builder::new().prefix("mlmesh-demo-").tempdir()?;
    let mut seed: Option<String> = None;
    let config = |name: &str, seed: &Option<String>| {
        let mut c = Config::default(); // loopback, mDNS on `lo`, ephemeral ports
        c.node.name = name.into();
        c.node.mesh = mesh.clone();
        c.discovery.mdns = !seeds_only;
        if seeds_only {
            c.discovery.seeds = seed.iter().cloned().collect();
        }
        c
    };
    let store = |dir: &str| StoreSection {
        data_dir: data.path().join(dir),
        ..StoreSection::default()
    };

    say(&format!(
        "starting a tracker, a registry, a trainer, a deployer and a monitor in mesh {mesh:?} ({})",
        if seeds_only {
            "seeds only: the tracker is the seed"
        } else {
            "mDNS on loopback"
        }
    ));
    let (tracker, registry) = if let Some(url) = &mlflow_url {
        // One adapter node serves both families, in front of MLflow.
        let section = MlflowSection {
            url: url.clone(),
            data_dir: data.path().join("mlflow"),
            ..MlflowSection::default()
        };
        let adapter = Mlflow::open(&section)?;
        adapter.probe().await.context("MLflow at --mlflow")?;
        let node = adapter
            .serve(Node::builder(config("mlflow", &seed)))
            .spawn()
            .await
            .context("starting the MLflow adapter")?;
        adapter.watch(&node);
        say(&format!(
            "  tracker and registry: the MLflow adapter, in front of {url}"
        ));
        (node.clone(), node)
    } else {
        let tracker_node = Tracker::open(&store("tracker"))?;
        let tracker = tracker_node
            .serve(Node::builder(config("tracker", &seed)))
            .spawn()
            .await
            .context("starting the tracker")?;
        tracker_node.watch(&tracker);
        let registry_node = RegistryNode::open(&store("registry"))?;
        let registry = registry_node
            .serve(Node::builder(config(
                "registry",
                &Some(tracker.endpoints().rpc.clone()),
            )))
            .spawn()
            .await
            .context("starting the registry")?;
        (tracker, registry)
    };
    seed = Some(tracker.endpoints().rpc.clone());
    let trainer = Node::builder(config("trainer", &seed))
        .role("trainer")
        .spawn()
        .await?;
    let deployer = Node::builder(config("deployer", &seed))
        .role("deployer")
        .spawn()
        .await?;
    let monitor = Node::builder(config("monitor", &seed))
        .role("monitor")
        .spawn()
        .await?;
    say(&format!("  stores in {}", data.path().display()));
    let mut everyone = vec![&tracker, &trainer, &deployer, &monitor];
    if mlflow_url.is_none() {
        everyone.push(&registry); // else the tracker itself
    }
    wait_for_mesh(&everyone, &say).await?;

    say("monitor subscribes to `tracking.**` and `registry.**`; deployer to `registry.alias.*`");
    let mut watch_tracking = monitor.subscribe("tracking.**")?;
    let mut watch_registry = monitor.subscribe("registry.**")?;
    let mut deploys = deployer.subscribe("registry.alias.*")?;
    // Subscriptions reach publishers asynchronously (ZeroMQ's slow joiner): probe first.
    settle(&tracker, "tracking.probe.sent", &mut [&mut watch_tracking]).await?;
    settle(
        &registry,
        "registry.alias.probed",
        &mut [&mut watch_registry, &mut deploys],
    )
    .await?;

    // ---- Training -------------------------------------------------------------------
    let (train, eval) = dataset(500, 7);
    let tracking = Tracking::new(&trainer);
    let run = tracking.start_run("churn", Some("logreg-baseline")).await?;
    let info = run.info().clone();
    say(&format!(
        "trainer started run {} ({}) on the tracker; artifacts go to {}",
        info.name,
        short(info.id.as_str()),
        info.artifact_uri
    ));
    let (lr, epochs) = (0.5, 25);
    run.log_param("lr", &lr.to_string())?;
    run.log_param("epochs", &epochs.to_string())?;
    run.log_param("model", "logistic_regression")?;
    for (context, rows) in [("train", &train), ("eval", &eval)] {
        run.log_input(DatasetInput {
            name: "churn-synthetic".into(),
            digest: digest(rows),
            source: "generated:seed=7".into(),
            context: context.into(),
        })?;
    }
    let mut model = ModelFile {
        weights: vec![0.0; 4],
        bias: 0.0,
    };
    for epoch in 0..epochs {
        let loss = gradient_step(&mut model, &train, lr);
        run.log_metric("train_loss", loss, epoch)?;
        run.log_metric("eval_accuracy", accuracy(&model, &eval), epoch)?;
    }
    run.flush().await;
    say(&format!(
        "  {epochs} epochs logged in the background (the loop never waited on the network); eval accuracy {:.3}",
        accuracy(&model, &eval)
    ));

    say("trainer tries to change a param (params are written once): a standard error comes back");
    let retry = LogBatch {
        run: info.id,
        params: vec![Param {
            key: "lr".into(),
            value: "0.1".into(),
        }],
        metrics: vec![],
        tags: vec![],
        inputs: vec![],
    };
    match tracking.log(&retry).await {
        Err(status) => say(&format!("  error ack: {status}")),
        Ok(l) => anyhow::bail!("expected INVALID_ARGUMENT, got {l:?}"),
    }

    let path = artifact_path(&info)?.join("model.json");
    std::fs::create_dir_all(path.parent().context("artifact dir")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&model)?)?;
    let report = run.end(RunStatus::Finished).await?;
    say(&format!(
        "  run ended {}: {} metric values acknowledged in {} batches, {} unacknowledged",
        report.info.status.as_str(),
        report.metrics_acknowledged,
        report.batches,
        report.unacknowledged.len()
    ));
    let summary = tracking.get_run(info.id).await?;
    let loss = &summary.metrics["train_loss"];
    say(&format!(
        "  the tracker's summary of train_loss: last {:.4} at step {}, min {:.4}, {} values",
        loss.last,
        loss.step,
        loss.min.unwrap_or(f64::NAN),
        loss.count
    ));

    // ---- Registering and deploying --------------------------------------------------
    let registry_client = Registry::new(&trainer);
    let version = registry_client
        .register(&VersionCreate {
            name: "churn".into(),
            source: format!("file://{}", path.display()),
            run_id: Some(info.id),
            ..VersionCreate::default()
        })
        .await?;
    say(&format!(
        "trainer registered churn version {} ({})",
        version.version, version.source
    ));
    registry_client
        .set_alias("churn", "champion", version.version)
        .await?;
    say("trainer pointed the alias `champion` at it");

    let ev = next(&mut deploys, registry::ALIAS_SET).await?;
    say(&format!(
        "deployer heard {} from the registry; it locates `champion`",
        ev.topic()
    ));
    let located = Registry::new(&deployer)
        .locate_alias("churn", "champion")
        .await?;
    let file = located
        .source
        .strip_prefix("file://")
        .context("a file URI")?;
    let loaded: ModelFile = serde_json::from_slice(&std::fs::read(file)?)?;
    say(&format!(
        "  deployer loaded churn v{} from {file}: eval accuracy {:.3}",
        located.version,
        accuracy(&loaded, &eval)
    ));

    say("monitor saw, without polling:");
    for sub in [&mut watch_tracking, &mut watch_registry] {
        let mut counts: Vec<(String, usize)> = Vec::new();
        while let Some(ev) = sub.try_recv() {
            let topic = ev.topic().to_string();
            if topic.contains(".probe.") {
                continue;
            }
            match counts.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, n)) => *n += 1,
                None => counts.push((topic, 1)),
            }
        }
        for (topic, n) in counts {
            say(&format!("  {n} x {topic}"));
        }
    }

    if keep {
        say("--keep: the mesh stays up; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }

    // ---- A worker dies mid-run --------------------------------------------------------
    say("a sweep worker starts a run, then dies without ending it (no goodbye)");
    let mut worker_config = config("sweep-worker", &seed);
    worker_config.liveness.heartbeat_ms = 250;
    let worker = Node::builder(worker_config).spawn().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tracker.peers().iter().any(|p| p.id == worker.id()) {
        ensure!(
            Instant::now() < deadline,
            "the worker did not join within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let doomed = Tracking::new(&worker)
        .start_run("churn", Some("sweep-lr-0.9"))
        .await?;
    let doomed_id = doomed.info().id;
    let died = Instant::now();
    drop(doomed); // no `end`: the run stays RUNNING
    drop(worker); // the node stops at once, saying nothing
    loop {
        let ev = next(&mut watch_tracking, tracking::RUN_ENDED).await?;
        let ended: RunInfo = ev.decode()?;
        if ended.id == doomed_id {
            say(&format!(
                "  monitor: run {} is {} ({:?} after the worker died)",
                ended.name,
                ended.status.as_str(),
                died.elapsed()
            ));
            break;
        }
    }

    let mut nodes = vec![trainer, deployer, monitor];
    if mlflow_url.is_none() {
        nodes.push(registry);
    }
    nodes.push(tracker);
    for node in nodes {
        node.shutdown().await;
    }
    say("done");
    Ok(())
}

// ---- The model ------------------------------------------------------------------------

/// Rows of 4 features and a 0/1 label.
type Rows = Vec<([f64; 4], f64)>;

/// `n` rows of 4 features and a label, from two Gaussian clouds; 80% train, 20% eval.
fn dataset(n: usize, seed: u64) -> (Rows, Rows) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut gauss = move || {
        let (u, v) = (uniform().max(1e-12), uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let rows: Rows = (0..n)
        .map(|i| {
            let label = (i % 2) as f64;
            let shift = if label > 0.5 { 1.0 } else { -1.0 };
            let x = [
                gauss() + shift,
                gauss() + 0.5 * shift,
                gauss(),
                gauss() - 0.8 * shift,
            ];
            (x, label)
        })
        .collect();
    let cut = n * 4 / 5;
    (rows[..cut].to_vec(), rows[cut..].to_vec())
}

fn predict(m: &ModelFile, x: &[f64; 4]) -> f64 {
    let z: f64 = m.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>() + m.bias;
    1.0 / (1.0 + (-z).exp())
}

/// One epoch of full-batch gradient descent on the log loss; returns the loss before it.
fn gradient_step(m: &mut ModelFile, rows: &[([f64; 4], f64)], lr: f64) -> f64 {
    let n = rows.len() as f64;
    let (mut gw, mut gb, mut loss) = ([0.0; 4], 0.0, 0.0);
    for (x, y) in rows {
        let p = predict(m, x).clamp(1e-12, 1.0 - 1e-12);
        loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        for (g, v) in gw.iter_mut().zip(x) {
            *g += (p - y) * v;
        }
        gb += p - y;
    }
    for (w, g) in m.weights.iter_mut().zip(gw) {
        *w -= lr * g / n;
    }
    m.bias -= lr * gb / n;
    loss / n
}

fn accuracy(m: &ModelFile, rows: &[([f64; 4], f64)]) -> f64 {
    let right = rows
        .iter()
        .filter(|(x, y)| (predict(m, x) > 0.5) == (*y > 0.5))
        .count();
    right as f64 / rows.len() as f64
}

/// A short content digest of the rows (FNV-1a), for the dataset input.
fn digest(rows: &[([f64; 4], f64)]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for (x, y) in rows {
        for v in x.iter().chain([y]) {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
            }
        }
    }
    format!("{h:016x}")
}

// ---- Story helpers ----------------------------------------------------------------------

/// The local directory of a run's `file://` artifact URI.
fn artifact_path(info: &RunInfo) -> anyhow::Result<std::path::PathBuf> {
    // MLflow with a local artifact root gives a plain path.
    let dir = info
        .artifact_uri
        .strip_prefix("file://")
        .or_else(|| {
            info.artifact_uri
                .starts_with('/')
                .then_some(info.artifact_uri.as_str())
        })
        .context("the tracker gives local (file://) artifact URIs")?;
    Ok(dir.into())
}

/// Waits (bounded) until every node sees all the others, and tells who joined.
async fn wait_for_mesh(nodes: &[&NodeHandle], say: &impl Fn(&str)) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| n.peers().len() < nodes.len() - 1) {
        ensure!(
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

/// Publishes `probe` from `publisher` until every subscription has received it.
async fn settle(
    publisher: &NodeHandle,
    probe: &str,
    subs: &mut [&mut Subscription],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = vec![false; subs.len()];
    while ready.iter().any(|r| !r) {
        ensure!(
            Instant::now() < deadline,
            "subscriptions did not settle within 10 s"
        );
        publisher.publish(probe, &()).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (i, s) in subs.iter_mut().enumerate() {
            while let Some(ev) = s.try_recv() {
                ready[i] |= ev.topic().as_str() == probe;
            }
        }
    }
    Ok(())
}

/// The next event on `topic` (others are skipped), within 10 s.
async fn next(sub: &mut Subscription, topic: &str) -> anyhow::Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = sub.recv().await.context("the node stopped")?;
            if ev.topic().as_str() == topic {
                return Ok(ev);
            }
        }
    })
    .await
    .with_context(|| format!("waiting for {topic}"))?
}

fn names(node: &NodeHandle) -> String {
    node.peers()
        .iter()
        .map(|p| format!("{} ({})", p.name, p.roles.join(",")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(id: &str) -> &str {
    &id[..8]
}
