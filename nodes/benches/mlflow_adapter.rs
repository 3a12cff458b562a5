//! The cost of the MLflow adapter: metrics logged through the mesh into MLflow, against
//! MLflow's own Python client into the same server, in one run.
//!
//! ```text
//! cargo bench -p mlmesh-nodes --bench mlflow_adapter            # full counts, ~1 min
//! MLMESH_BENCH_QUICK=1 cargo bench -p mlmesh-nodes --bench mlflow_adapter   # smoke run
//! cargo bench -p mlmesh-nodes --bench mlflow_adapter -- --json  # + JSON lines on stdout
//! ```
//!
//! Needs the venv of `.ci/mlflow-deps.sh` (MLflow 3.17.2). The bench starts one
//! `mlflow server` (SQLite in `target/tmp`, one worker, telemetry and job execution off)
//! on 127.0.0.1, then measures, each after a warm-up, on a fresh run each:
//!
//! - `mesh_logger`: a trainer node's [`RunLogger`](mlmesh::clients::RunLogger) fed
//!   100,000 `log_metric` calls (10,000 quick), timed to `end()`'s report (everything
//!   acknowledged by the adapter, hence by MLflow); metrics/s.
//! - `mesh_log_batch_1000`: `Tracking::log` of 1,000 metrics, awaited one after the
//!   other, 50 calls (10 quick); metrics/s.
//! - `mesh_log_single`: `Tracking::log` of one metric, awaited, 500 calls (100 quick);
//!   calls/s.
//! - `client_log_batch_1000` and `client_log_metric_single`: the same two with
//!   `MlflowClient.log_batch` and `MlflowClient.log_metric(..., synchronous=True)` from
//!   the venv's Python, against the same server.
//!
//! Path of a metric through the mesh: trainer node → ZeroMQ (loopback) → adapter node →
//! HTTP (kept-alive, loopback) → MLflow → SQLite; the adapter records the reply in its
//! own SQLite store before it acknowledges.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use mlmesh::clients::{LoggerOptions, Tracking};
use mlmesh::protocol::tracking::{LogBatch, Metric, RunStart, RunStatus};
use mlmesh::{Config, Node};
use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};

/// The Python side: `url n_batches n_single`; prints one JSON object.
const CLIENT: &str = r#"
import json, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric
url, n_batches, n_single = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = MlflowClient(tracking_uri=url)
exp = c.create_experiment("bench-client-%d" % time.time_ns())
def batch(run, k):
    now = int(time.time() * 1000)
    c.log_batch(run, metrics=[Metric("loss", 1.0 / (i + 1), now, k * 1000 + i) for i in range(1000)])
run = c.create_run(exp).info.run_id
batch(run, 0)
t = time.perf_counter()
for k in range(1, n_batches + 1):
    batch(run, k)
batch_rate = n_batches * 1000 / (time.perf_counter() - t)
run = c.create_run(exp).info.run_id
for i in range(20):
    c.log_metric(run, "loss", 1.0, step=i, synchronous=True)
t = time.perf_counter()
for i in range(n_single):
    c.log_metric(run, "loss", 1.0 / (i + 1), step=100 + i, synchronous=True)
single_rate = n_single / (time.perf_counter() - t)
print(json.dumps({"client_log_batch_1000": batch_rate, "client_log_metric_single": single_rate}))
"#;

fn metric(step: i64) -> Metric {
    Metric {
        key: "loss".into(),
        value: 1.0 / (step as f64 + 1.0),
        timestamp: 1,
        step,
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let quick = std::env::var("MLMESH_BENCH_QUICK").is_ok_and(|v| v == "1");
    let json_out = std::env::args().any(|a| a == "--json");
    let (n_logger, n_batches, n_single) = if quick {
        (10_000, 10, 100)
    } else {
        (100_000, 50, 500)
    };
    eprintln!("load before: {}", uptime());
    let server = common::MlflowServer::start().map_err(anyhow::Error::msg)?;
    eprintln!("mlflow server at {} ({})", server.url, server.dir.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results: Vec<(&str, f64, &str)> = Vec::new();
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let adapter = Mlflow::open(&MlflowSection {
            url: server.url.clone(),
            data_dir: dir.path().to_path_buf(),
            ..MlflowSection::default()
        })?;
        let node = adapter
            .serve(Node::builder(Config::local("mlflow", "bench-mlflow")))
            .spawn()
            .await?;
        let mut c = Config::local("trainer", "bench-mlflow");
        c.discovery.seeds = vec![node.endpoints().rpc.clone()];
        let trainer = Node::builder(c).spawn().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !trainer.peers().iter().any(|p| p.id == node.id()) {
            ensure!(
                Instant::now() < deadline,
                "the trainer did not find the adapter"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tracking = Tracking::new(&trainer);

        // The background logger, as a training loop uses it.
        let options = LoggerOptions {
            capacity: 2 * n_logger,
            ..LoggerOptions::default()
        };
        let warm = tracking
            .start(
                RunStart {
                    experiment: "bench-mesh".into(),
                    ..RunStart::default()
                },
                options.clone(),
            )
            .await?;
        for i in 0..2_000 {
            warm.log_metric("loss", 1.0, i).ok();
        }
        warm.end(RunStatus::Finished).await?;
        let run = tracking
            .start(
                RunStart {
                    experiment: "bench-mesh".into(),
                    ..RunStart::default()
                },
                options,
            )
            .await?;
        let t = Instant::now();
        for i in 0..n_logger {
            run.log_metric("loss", 1.0 / (i as f64 + 1.0), i as i64)
                .context("logger buffer")?;
        }
        let report = run.end(RunStatus::Finished).await?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(
            report.unacknowledged.is_empty() && report.metrics_acknowledged == n_logger as u64,
            "the logger lost metrics: {report:?}"
        );
        results.push(("mesh_logger", n_logger as f64 / secs, "metrics/s"));

        // Batches of 1,000, one at a time.
        let run = tracking.start_run("bench-mesh", None).await?;
        let id = run.info().id;
        let batch = |k: i64| LogBatch {
            run: id,
            params: vec![],
            metrics: (0..1000).map(|i| metric(k * 1000 + i)).collect(),
            tags: vec![],
            inputs: vec![],
        };
        tracking.log(&batch(0)).await?;
        let t = Instant::now();
        for k in 1..=n_batches {
            tracking.log(&batch(k)).await?;
        }
        results.push((
            "mesh_log_batch_1000",
            n_batches as f64 * 1000.0 / t.elapsed().as_secs_f64(),
            "metrics/s",
        ));

        // One metric per call.
        let one = |step: i64| LogBatch {
            run: id,
            params: vec![],
            metrics: vec![metric(step)],
            tags: vec![],
            inputs: vec![],
        };
        for i in 0..20 {
            tracking.log(&one(-1 - i)).await?;
        }
        let t = Instant::now();
        for i in 0..n_single {
            tracking.log(&one(1_000_000 + i)).await?;
        }
        results.push((
            "mesh_log_single",
            n_single as f64 / t.elapsed().as_secs_f64(),
            "calls/s",
        ));
        run.end(RunStatus::Finished).await?;
        trainer.shutdown().await;
        node.shutdown().await;
        anyhow::Ok(())
    })?;

    let python = common::mlflow_venv().join("bin/python");
    let out = Command::new(&python)
        .arg("-c")
        .arg(CLIENT)
        .args([
            server.url.as_str(),
            &n_batches.to_string(),
            &n_single.to_string(),
        ])
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .env("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "MLflow's client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for (case, unit) in [
        ("client_log_batch_1000", "metrics/s"),
        ("client_log_metric_single", "calls/s"),
    ] {
        results.push((case, client[case].as_f64().unwrap_or(0.0), unit));
    }
    eprintln!("load after: {}", uptime());

    let get = |case: &str| results.iter().find(|r| r.0 == case).map_or(0.0, |r| r.1);
    eprintln!();
    eprintln!("| case | value | vs MLflow's client |");
    eprintln!("|---|---|---|");
    for (case, value, unit) in &results {
        let base = match *case {
            "mesh_logger" | "mesh_log_batch_1000" => get("client_log_batch_1000"),
            "mesh_log_single" => get("client_log_metric_single"),
            _ => 0.0,
        };
        let ratio = if base > 0.0 {
            format!("{:.2}x", value / base)
        } else {
            "-".into()
        };
        eprintln!("| {case} | {value:.0} {unit} | {ratio} |");
        if json_out {
            println!(
                "{}",
                json!({"system": if case.starts_with("mesh") { "mlmesh-mlflow" } else { "mlflow-client" },
                       "case": case, "value": value, "unit": unit})
            );
        }
    }
    drop(server);
    Ok(())
}
