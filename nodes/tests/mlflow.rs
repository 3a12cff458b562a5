//! The MLflow adapter (`mlmesh-mlflow`) in front of a real MLflow server that this test
//! binary starts on loopback (from the venv `.ci/mlflow-deps.sh` makes): the same
//! `tracking/1` and `registry/1` behaviour suites as the built-in nodes, then what is
//! the adapter's own: what MLflow's REST API shows of a run and a model logged through
//! the mesh, an MLflow that is down or hangs, and the adapter binary restarted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
#[macro_use]
mod behaviour;

use common::Backend;

tracking_tests!(Backend::Mlflow);
registry_tests!(Backend::Mlflow);

use std::process::Command;
use std::time::{Duration, Instant};

use mlmesh::clients::{Registry, Tracking};
use mlmesh::protocol::registry::VersionCreate;
use mlmesh::protocol::tracking::{self, LogBatch, Logged, RunStart, RunStatus};
use mlmesh::{CallOptions, Code, MessageId, Node, NodeHandle};
use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};

use behaviour::tracking::{batch, metric};
use common::*;

/// An adapter node for `url`, with `section` on top of the test defaults.
async fn adapter_at(
    mesh: &str,
    dir: &std::path::Path,
    section: MlflowSection,
) -> (Mlflow, NodeHandle) {
    let section = MlflowSection {
        data_dir: dir.to_path_buf(),
        ..section
    };
    let a = Mlflow::open(&section).unwrap();
    let node = a
        .serve(Node::builder(local("mlflow", mesh)))
        .spawn()
        .await
        .unwrap();
    a.watch(&node);
    (a, node)
}

/// Runs `script` with the venv's Python (MLflow's own client), `args` after it, and
/// returns its stdout parsed as JSON.
fn mlflow_client(script: &str, args: &[&str]) -> serde_json::Value {
    let python = mlflow_venv().join("bin/python");
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", python.display()));
    assert!(
        out.status.success(),
        "MLflow's client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// What MLflow's own client reads of a run and a registered model.
const READ_BACK: &str = r#"
import json, sys
from mlflow import MlflowClient
url, run_id, model = sys.argv[1:4]
c = MlflowClient(tracking_uri=url, registry_uri=url)
run = c.get_run(run_id)
mv = c.get_model_version_by_alias(model, "champion")
print(json.dumps({
    "experiment": c.get_experiment(run.info.experiment_id).name,
    "status": run.info.status,
    "run_name": run.info.run_name,
    "params": run.data.params,
    "tags": run.data.tags,
    "latest": run.data.metrics,
    "history": [[m.step, m.value] for m in c.get_metric_history(run_id, "loss")],
    "datasets": [[d.dataset.name, d.dataset.digest] for d in run.inputs.dataset_inputs],
    "version": mv.version,
    "source": mv.source,
    "version_run": mv.run_id,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_itself_shows_what_the_mesh_logged() {
    init_tracing();
    let server = mlflow_server();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    // No namespace: names in MLflow are the mesh's, as an MLflow user sees them.
    let (_a, node) = adapter_at(
        &mesh,
        dir.path(),
        MlflowSection {
            url: server.url.clone(),
            ..MlflowSection::default()
        },
    )
    .await;
    let trainer = Backend::Mlflow.client(&node, &mesh).await;
    let experiment = format!("seen-{}", unique_mesh());
    let run = Tracking::new(&trainer)
        .start_run(&experiment, Some("baseline"))
        .await
        .unwrap();
    run.log_param("lr", "0.5").unwrap();
    run.log_input(tracking::DatasetInput {
        name: "churn".into(),
        digest: "d1".into(),
        source: "generated:seed=7".into(),
        context: "train".into(),
    })
    .unwrap();
    for step in 0..25 {
        run.log_metric("loss", 1.0 / f64::from(step + 1), i64::from(step))
            .unwrap();
    }
    let info = run.info().clone();
    let report = run.end(RunStatus::Finished).await.unwrap();
    assert!(
        report.unacknowledged.is_empty(),
        "{:?}",
        report.unacknowledged
    );
    let registry = Registry::new(&trainer);
    let source = format!("{}/model.json", info.artifact_uri);
    let v = registry
        .register(&VersionCreate {
            name: experiment.clone(),
            source: source.clone(),
            run_id: Some(info.id),
            ..VersionCreate::default()
        })
        .await
        .unwrap();
    registry
        .set_alias(&experiment, "champion", v.version)
        .await
        .unwrap();

    let seen = mlflow_client(READ_BACK, &[&server.url, info.id.as_str(), &experiment]);
    assert_eq!(seen["experiment"], experiment.as_str());
    assert_eq!(seen["status"], "FINISHED");
    assert_eq!(seen["run_name"], "baseline");
    assert_eq!(seen["params"]["lr"], "0.5");
    assert_eq!(seen["latest"]["loss"], 1.0 / 25.0);
    let history = seen["history"].as_array().unwrap();
    assert_eq!(history.len(), 25);
    assert_eq!(history[3], serde_json::json!([3, 0.25]));
    // The system tags a mesh client sets show as MLflow's own.
    assert_eq!(seen["tags"]["mlflow.user"], seen["tags"]["mlmesh.user"]);
    assert!(seen["tags"]["mlflow.source.name"].is_string(), "{seen}");
    assert_eq!(seen["datasets"], serde_json::json!([["churn", "d1"]]));
    assert_eq!(seen["version"], v.version.to_string());
    assert_eq!(seen["source"], source.as_str());
    assert_eq!(seen["version_run"], info.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlflow_that_is_down_or_hangs_is_unavailable_never_a_hang() {
    init_tracing();
    let mesh = unique_mesh();
    // Nothing listens on this port.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // This one accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hang.incoming().take(8) {
            conns.push(c);
        }
        conns
    });
    for (port, timeout_ms) in [(down, 10_000), (hang_port, 300)] {
        let dir = tempfile::tempdir().unwrap();
        let (_a, node) = adapter_at(
            &mesh,
            dir.path(),
            MlflowSection {
                url: format!("http://127.0.0.1:{port}"),
                timeout_ms,
                ..MlflowSection::default()
            },
        )
        .await;
        let client = client_of(&node, &mesh).await;
        for _ in 0..2 {
            let asked = Instant::now();
            let err = client
                .request_with::<_, tracking::RunInfo>(
                    tracking::RUN_START,
                    &RunStart {
                        experiment: "down".into(),
                        ..RunStart::default()
                    },
                    CallOptions::default().deadline(WAIT),
                )
                .await
                .unwrap_err();
            assert_eq!(err.code, Code::Unavailable, "{err}");
            assert!(err.code.is_retryable());
            assert!(err.message.contains("mlflow"), "{err}");
            assert!(
                asked.elapsed() < Duration::from_millis(timeout_ms.min(2_000) + 2_000),
                "answered after {:?}",
                asked.elapsed()
            );
        }
        // The adapter is still there and says the same of every family.
        let err = client
            .request::<_, mlmesh::protocol::registry::RegisteredModel>(
                mlmesh::protocol::registry::MODEL_GET,
                &mlmesh::protocol::registry::ModelGet { name: "m".into() },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unavailable, "{err}");
        client.shutdown().await;
        node.shutdown().await;
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_binary_keeps_replies_and_owners_across_kill_9() {
    init_tracing();
    let server = mlflow_server();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    // Fixed ports, so that the nodes' seed finds the restarted adapter.
    let port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let env = [
        ("MLMESH_NODE__MESH", mesh.clone()),
        ("MLMESH_NODE__NAME", "mlflow".to_owned()),
        ("MLMESH_NETWORK__RPC_PORT", port()),
        ("MLMESH_NETWORK__PUB_PORT", port()),
        ("MLMESH_MLFLOW__URL", server.url.clone()),
        ("MLMESH_MLFLOW__DATA_DIR", dir.path().display().to_string()),
        ("MLMESH_MLFLOW__NAMESPACE", unique_namespace()),
    ];
    let bin = env!("CARGO_BIN_EXE_mlmesh-mlflow");
    let mut first = NodeProc::start(bin, &env);
    let owner = Node::builder(first.seed_of("owner", &mesh))
        .spawn()
        .await
        .unwrap();
    wait_alive(&owner, first.id).await;
    let tracking = Tracking::new(&owner);
    let run = tracking.start_run("restarts", None).await.unwrap();
    let id = run.info().id;
    std::mem::forget(run); // stays RUNNING: its owner is what this test is about
    let mut b: LogBatch = batch(id);
    b.metrics = vec![metric("m", 1.0, 0, 1), metric("m", 2.0, 1, 2)];
    let key = MessageId::new();
    let logged = tracking
        .log_with(&b, CallOptions::default().id(key))
        .await
        .unwrap();
    assert_eq!(
        logged,
        Logged {
            metrics: 2,
            duplicates: 0
        }
    );
    first.kill9();

    let second = NodeProc::start(bin, &env);
    wait_alive(&owner, second.id).await;
    // The retry of the batch gets the stored reply from the restarted adapter.
    let again = tracking
        .log_with(&b, CallOptions::default().id(key))
        .await
        .unwrap();
    assert_eq!(again, logged);
    let got = tracking.get_run(id).await.unwrap();
    assert_eq!(got.metrics["m"].count, 2);
    assert_eq!(got.info.owner, owner.id(), "the owner survived the restart");
    assert_eq!(got.info.tracker, second.id);
    // The owner leaves: the restarted adapter still knows its run, and crashes it.
    let watcher = Node::builder(second.seed_of("watcher", &mesh))
        .spawn()
        .await
        .unwrap();
    wait_alive(&watcher, second.id).await;
    owner.shutdown().await;
    let watching = Tracking::new(&watcher);
    let asked = Instant::now();
    loop {
        let status = watching.get_run(id).await.unwrap().info.status;
        if status == RunStatus::Crashed {
            break;
        }
        assert!(asked.elapsed() < WAIT, "still {status:?} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}
