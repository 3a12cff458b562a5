//! The experiment tracker over real nodes, real sockets and a real SQLite file: MLflow's
//! semantics and limits, atomic batches, idempotent retries, persistence across
//! `kill -9`, concurrent writers, crashed runs, search, two trackers, and the logger.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use mlmesh::clients::{LoggerOptions, Tracking};
use mlmesh::protocol::tracking::{
    self, DatasetInput, ExperimentCreate, LogBatch, Logged, Metric, MetricHistory, Param,
    RunSearch, RunStart, RunStatus, Tag,
};
use mlmesh::{CallOptions, Code, MessageId, Node, NodeHandle};
use mlmesh_nodes::tracker::Tracker;

use common::*;

struct Mesh {
    tracker: NodeHandle,
    client: NodeHandle,
    tracking: Tracking,
    _dir: tempfile::TempDir,
}

async fn mesh() -> Mesh {
    init_tracing();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(&store_section(dir.path())).unwrap();
    let tracker = t
        .serve(Node::builder(local("tracker", &mesh)))
        .spawn()
        .await
        .unwrap();
    t.watch(&tracker);
    let client = client_of(&tracker, &mesh).await;
    let tracking = Tracking::new(&client);
    Mesh {
        tracker,
        client,
        tracking,
        _dir: dir,
    }
}

fn metric(key: &str, value: f64, step: i64, timestamp: u64) -> Metric {
    Metric {
        key: key.into(),
        value,
        timestamp,
        step,
    }
}

fn batch(run: tracking::RunId) -> LogBatch {
    LogBatch {
        run,
        params: vec![],
        metrics: vec![],
        tags: vec![],
        inputs: vec![],
    }
}

async fn start(t: &Tracking, experiment: &str) -> tracking::RunInfo {
    let run = t.start_run(experiment, None).await.unwrap();
    let info = run.info().clone();
    std::mem::forget(run); // keep it RUNNING; this test logs with direct calls
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_params_metrics_tags_follow_mlflow_semantics() {
    let m = mesh().await;
    let t = &m.tracking;
    let exp = t
        .experiment(&ExperimentCreate {
            name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = t
        .experiment(&ExperimentCreate {
            name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(exp.id, again.id, "create is get-or-create by name");

    let info = start(t, "churn").await;
    assert_eq!(info.experiment_id, exp.id);
    assert_eq!(info.status, RunStatus::Running);
    assert_eq!(info.owner, m.client.id());
    assert_eq!(info.tracker, m.tracker.id());
    assert!(info
        .artifact_uri
        .ends_with(&format!("{}/artifacts", info.id)));

    let mut b = batch(info.id);
    b.params = vec![Param {
        key: "lr".into(),
        value: "0.01".into(),
    }];
    b.tags = vec![Tag {
        key: "team".into(),
        value: "vision".into(),
    }];
    b.metrics = vec![
        metric("loss", 0.9, 0, 10),
        metric("loss", 0.5, 1, 20),
        metric("loss", f64::NAN, 2, 30),
        metric("loss", f64::INFINITY, 2, 5), // same step, earlier: not the latest
        metric("loss", 0.5, 1, 20),          // exact duplicate
    ];
    b.inputs = vec![DatasetInput {
        name: "iris".into(),
        digest: "abc123".into(),
        source: "file:///data/iris.csv".into(),
        context: "train".into(),
    }];
    let logged = t.log(&b).await.unwrap();
    assert_eq!(
        logged,
        Logged {
            metrics: 4,
            duplicates: 1
        }
    );

    // The same param value again is fine; another value is refused, naming the item,
    // and nothing of that batch is written (atomic).
    let mut b2 = batch(info.id);
    b2.params = vec![Param {
        key: "lr".into(),
        value: "0.01".into(),
    }];
    b2.metrics = vec![metric("acc", 0.7, 0, 40)];
    t.log(&b2).await.unwrap();
    let mut b3 = batch(info.id);
    b3.metrics = vec![metric("acc", 0.8, 1, 50)];
    b3.tags = vec![Tag {
        key: "team".into(),
        value: "nlp".into(),
    }];
    b3.params = vec![
        Param {
            key: "epochs".into(),
            value: "10".into(),
        },
        Param {
            key: "lr".into(),
            value: "0.1".into(),
        },
    ];
    let err = t.log(&b3).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.field.as_deref(), Some("params[1].value"), "{err}");

    let run = t.get_run(info.id).await.unwrap();
    assert_eq!(
        run.params.len(),
        1,
        "epochs of the failed batch is not written"
    );
    assert_eq!(run.params["lr"], "0.01");
    assert_eq!(
        run.tags["team"], "vision",
        "the failed batch's tag is not written"
    );
    assert_eq!(
        run.metrics["acc"].count, 1,
        "the failed batch's metric is not written"
    );
    let loss = run.metrics["loss"];
    assert!(
        loss.last.is_nan(),
        "latest = highest step, then latest timestamp"
    );
    assert_eq!((loss.step, loss.timestamp, loss.count), (2, 30, 4));
    assert_eq!(loss.min, Some(0.5));
    assert_eq!(loss.max, Some(f64::INFINITY));
    assert_eq!(run.inputs.len(), 1);
    assert!(
        run.tags.contains_key("mlmesh.source.name"),
        "system tags at start"
    );

    // Tags: the last write wins.
    let mut b4 = batch(info.id);
    b4.tags = vec![Tag {
        key: "team".into(),
        value: "nlp".into(),
    }];
    t.log(&b4).await.unwrap();
    assert_eq!(t.get_run(info.id).await.unwrap().tags["team"], "nlp");

    // Full history, by step then timestamp, NaN and infinity intact.
    let page = t
        .metric_history(&MetricHistory {
            run: info.id,
            key: "loss".into(),
            max_results: 3,
            page_token: None,
        })
        .await
        .unwrap();
    let values: Vec<f64> = page.metrics.iter().map(|m| m.value).collect();
    assert_eq!(&values[..2], &[0.9, 0.5]);
    assert_eq!(values[2], f64::INFINITY);
    let rest = t
        .metric_history(&MetricHistory {
            run: info.id,
            key: "loss".into(),
            max_results: 3,
            page_token: page.next_page_token.clone(),
        })
        .await
        .unwrap();
    assert_eq!(rest.metrics.len(), 1);
    assert!(rest.metrics[0].value.is_nan());
    assert!(rest.next_page_token.is_none());

    let ended = t.end_run(info.id, RunStatus::Finished).await.unwrap();
    assert_eq!(ended.status, RunStatus::Finished);
    assert!(ended.end_ms.is_some());
    let err = t.end_run(info.id, RunStatus::Crashed).await.unwrap_err();
    assert_eq!(err.field.as_deref(), Some("status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_invalid_argument_naming_the_item() {
    let m = mesh().await;
    let info = start(&m.tracking, "limits").await;
    type Edit = Box<dyn Fn(&mut LogBatch)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|b| b.metrics = vec![metric("m", 1.0, 0, 0); 1001]),
            "metrics",
        ),
        (
            Box::new(|b| {
                b.params = (0..101)
                    .map(|i| Param {
                        key: format!("p{i}"),
                        value: "v".into(),
                    })
                    .collect()
            }),
            "params",
        ),
        (
            Box::new(|b| {
                b.tags = (0..101)
                    .map(|i| Tag {
                        key: format!("t{i}"),
                        value: "v".into(),
                    })
                    .collect()
            }),
            "tags",
        ),
        (
            Box::new(|b| b.metrics = vec![metric("ok", 1.0, 0, 0), metric("bad:key", 1.0, 0, 0)]),
            "metrics[1].key",
        ),
        (
            Box::new(|b| b.metrics = vec![metric(&"k".repeat(251), 1.0, 0, 0)]),
            "metrics[0].key",
        ),
        (
            Box::new(|b| b.metrics = vec![metric("a//b", 1.0, 0, 0)]),
            "metrics[0].key",
        ),
        (
            Box::new(|b| {
                b.params = vec![Param {
                    key: "p".into(),
                    value: "v".repeat(6001),
                }]
            }),
            "params[0].value",
        ),
        (
            Box::new(|b| {
                b.tags = vec![Tag {
                    key: "t".into(),
                    value: "v".repeat(8001),
                }]
            }),
            "tags[0]",
        ),
        (
            Box::new(|b| {
                b.tags = vec![Tag {
                    key: "mlmesh.anything".into(),
                    value: "x".into(),
                }]
            }),
            "tags[0]",
        ),
    ];
    for (edit, field) in cases {
        let mut b = batch(info.id);
        edit(&mut b);
        // Straight to the tracker, past the client's own check.
        let err = m
            .client
            .request::<_, Logged>(tracking::RUN_LOG, &b)
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument, "{field}: {err}");
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
    }
    let mut ok = batch(info.id);
    ok.metrics = vec![metric("m", 1.0, 0, 0); 1000];
    m.client
        .request::<_, Logged>(tracking::RUN_LOG, &ok)
        .await
        .unwrap();

    let err = m
        .client
        .request::<_, tracking::RunInfo>(tracking::RUN_START, &RunStart::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.field.as_deref()),
        (Code::InvalidArgument, Some("experiment"))
    );
    let mut unknown = batch(tracking::RunId::new());
    unknown.metrics = vec![metric("m", 1.0, 0, 0)];
    let err = m
        .client
        .request::<_, Logged>(tracking::RUN_LOG, &unknown)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.field.as_deref()),
        (Code::NotFound, Some("run"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_gets_the_original_reply_and_writes_nothing_twice() {
    let m = mesh().await;
    let info = start(&m.tracking, "retries").await;
    let mut b = batch(info.id);
    b.metrics = vec![metric("m", 1.0, 0, 1), metric("m", 2.0, 1, 2)];
    let id = MessageId::new();
    let first = m
        .tracking
        .log_with(&b, CallOptions::default().id(id))
        .await
        .unwrap();
    let second = m
        .tracking
        .log_with(&b, CallOptions::default().id(id))
        .await
        .unwrap();
    assert_eq!(
        first,
        Logged {
            metrics: 2,
            duplicates: 0
        }
    );
    assert_eq!(second, first, "the stored reply, not a second execution");
    let fresh = m.tracking.log(&b).await.unwrap();
    assert_eq!(
        fresh,
        Logged {
            metrics: 0,
            duplicates: 2
        },
        "a new id is a new request"
    );

    // The same for a run start: one run, not two.
    let req = RunStart {
        experiment: "retries".into(),
        name: Some("once".into()),
        ..Default::default()
    };
    let id = MessageId::new();
    let a: tracking::RunInfo = m
        .client
        .request_with(tracking::RUN_START, &req, CallOptions::default().id(id))
        .await
        .unwrap();
    let b: tracking::RunInfo = m
        .client
        .request_with(tracking::RUN_START, &req, CallOptions::default().id(id))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    let page = m
        .tracking
        .search(&RunSearch {
            filter: "attributes.run_name = 'once'".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_every_change() {
    let m = mesh().await;
    let mut sub = m.client.subscribe("tracking.**").unwrap();
    sync_events(&m.tracker, &mut sub, "tracking.probe.sent").await;
    let run = m.tracking.start_run("events", Some("ev")).await.unwrap();
    let started: tracking::RunInfo = next_event(&mut sub, tracking::RUN_STARTED)
        .await
        .decode()
        .unwrap();
    assert_eq!(started.id, run.info().id);
    run.log_metric("loss", 0.25, 3).unwrap();
    run.log_param("lr", "0.1").unwrap();
    run.flush().await;
    let logged: tracking::MetricsLogged = next_event(&mut sub, tracking::METRICS_LOGGED)
        .await
        .decode()
        .unwrap();
    assert_eq!(
        (logged.run, logged.metrics[0].value, logged.metrics[0].step),
        (run.info().id, 0.25, 3)
    );
    let params: tracking::ParamsLogged = next_event(&mut sub, tracking::PARAMS_LOGGED)
        .await
        .decode()
        .unwrap();
    assert_eq!(params.params[0].key, "lr");
    let id = run.info().id;
    let report = run.end(RunStatus::Failed).await.unwrap();
    assert_eq!(report.info.status, RunStatus::Failed);
    let ended: tracking::RunInfo = next_event(&mut sub, tracking::RUN_ENDED)
        .await
        .decode()
        .unwrap();
    assert_eq!((ended.id, ended.status), (id, RunStatus::Failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_owner_leaves_the_mesh_becomes_crashed() {
    let m = mesh().await;
    let mut sub = m.client.subscribe("tracking.run.ended").unwrap();
    // The owner is a separate node that starts a run and leaves without ending it.
    let owner = client_of(&m.tracker, &m.tracker.config().node.mesh).await;
    let run = Tracking::new(&owner)
        .start_run("crash", None)
        .await
        .unwrap();
    let id = run.info().id;
    std::mem::forget(run);
    sync_events(&m.tracker, &mut sub, "tracking.run.ended").await;
    owner.shutdown().await;
    let ended: tracking::RunInfo = next_event(&mut sub, tracking::RUN_ENDED)
        .await
        .decode()
        .unwrap();
    assert_eq!((ended.id, ended.status), (id, RunStatus::Crashed));
    assert_eq!(
        m.tracking.get_run(id).await.unwrap().info.status,
        RunStatus::Crashed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_orders_and_pages_like_mlflow() {
    let m = mesh().await;
    let t = &m.tracking;
    let mut ids = Vec::new();
    for i in 0..30 {
        let info = start(t, "search").await;
        let mut b = batch(info.id);
        b.metrics = vec![metric("rmse", f64::from(i) / 30.0, 0, 1)];
        b.params = vec![Param {
            key: "lr".into(),
            value: if i % 2 == 0 { "0.01" } else { "0.1" }.into(),
        }];
        b.tags = vec![Tag {
            key: "team".into(),
            value: if i % 3 == 0 { "vision" } else { "nlp" }.into(),
        }];
        t.log(&b).await.unwrap();
        ids.push(info.id);
    }
    let other = start(t, "elsewhere").await;
    let mut b = batch(other.id);
    b.metrics = vec![metric("rmse", 0.0, 0, 1)];
    t.log(&b).await.unwrap();

    let search = |filter: &str, order: &[&str], max: u32, token: Option<String>| RunSearch {
        experiments: vec!["search".into()],
        filter: filter.into(),
        order_by: order.iter().map(|s| s.to_string()).collect(),
        max_results: max,
        page_token: token,
    };
    // rmse < 0.5 → i in 0..15; lr = 0.01 → even; team = vision → i % 3 == 0: i in {0, 6, 12}.
    let f = "metrics.rmse < 0.5 and params.lr = '0.01' and tags.team = 'vision'";
    let page = t
        .search(&search(f, &["metrics.rmse DESC"], 100, None))
        .await
        .unwrap();
    let got: Vec<_> = page.runs.iter().map(|r| r.info.id).collect();
    assert_eq!(got, vec![ids[12], ids[6], ids[0]]);

    // Paging: two pages make the whole ordered list.
    let p1 = t
        .search(&search("", &["metrics.rmse ASC"], 20, None))
        .await
        .unwrap();
    let p2 = t
        .search(&search(
            "",
            &["metrics.rmse ASC"],
            20,
            p1.next_page_token.clone(),
        ))
        .await
        .unwrap();
    assert!(p2.next_page_token.is_none());
    let all: Vec<_> = p1.runs.iter().chain(&p2.runs).map(|r| r.info.id).collect();
    assert_eq!(all, ids, "ascending rmse is creation order");

    let page = t
        .search(&search(
            "attributes.status = 'RUNNING' and tags.team LIKE 'vis%'",
            &[],
            100,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 10);

    // A malformed filter points at the position.
    let err = t
        .search(&search("metrics.rmse < 0.5 and params.lr =", &[], 10, None))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.field.as_deref()),
        (Code::InvalidArgument, Some("filter"))
    );
    assert!(err.message.contains("position 34"), "{}", err.message);
    let err = t
        .search(&search("metrics.rmse < 'x'", &[], 10, None))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    let err = t
        .search(&search("", &["nope.x"], 10, None))
        .await
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("order_by[0]"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writer_nodes_at_once_lose_nothing() {
    let m = mesh().await;
    let mesh_name = m.tracker.config().node.mesh.clone();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let tracker = m.tracker.clone();
        let mesh_name = mesh_name.clone();
        tasks.push(tokio::spawn(async move {
            let node = client_of(&tracker, &mesh_name).await;
            let run = Tracking::new(&node)
                .start_run("concurrent", Some(&format!("writer-{w}")))
                .await
                .unwrap();
            for step in 0..2000 {
                run.log_metric("x", f64::from(step), i64::from(step))
                    .unwrap();
            }
            run.log_param("writer", &w.to_string()).unwrap();
            let report = run.end(RunStatus::Finished).await.unwrap();
            node.shutdown().await;
            report
        }));
    }
    for task in tasks {
        let report = within("a writer", Duration::from_secs(60), task)
            .await
            .unwrap();
        assert!(
            report.unacknowledged.is_empty(),
            "{:?}",
            report.unacknowledged
        );
        assert_eq!(report.metrics_acknowledged, 2000);
        let run = m.tracking.get_run(report.info.id).await.unwrap();
        assert_eq!(run.metrics["x"].count, 2000);
        assert_eq!(run.info.status, RunStatus::Finished);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trackers_each_serve_and_a_run_is_found_where_it_lives() {
    init_tracing();
    let mesh = unique_mesh();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let t1 = Tracker::open(&store_section(d1.path())).unwrap();
    let n1 = t1
        .serve(Node::builder(local("tracker1", &mesh)))
        .spawn()
        .await
        .unwrap();
    let t2 = Tracker::open(&store_section(d2.path())).unwrap();
    let n2 = t2
        .serve(Node::builder(seeded("tracker2", &mesh, &n1)))
        .spawn()
        .await
        .unwrap();
    let client = client_of(&n1, &mesh).await;
    wait_alive(&client, n2.id()).await;
    let tracking = Tracking::new(&client);
    let mut on = std::collections::HashSet::new();
    let mut runs = Vec::new();
    for _ in 0..8 {
        let info = start(&tracking, "two").await;
        on.insert(info.tracker);
        runs.push(info);
    }
    assert_eq!(on.len(), 2, "least-outstanding routing uses both trackers");
    // A client that never saw these runs finds each where it lives.
    let stranger = Tracking::new(&client_of(&n1, &mesh).await);
    for info in &runs {
        let mut b = batch(info.id);
        b.metrics = vec![metric("m", 1.0, 0, 0)];
        stranger.log(&b).await.unwrap();
        let run = stranger.get_run(info.id).await.unwrap();
        assert_eq!(run.info.tracker, info.tracker);
        assert_eq!(run.metrics["m"].count, 1);
    }
    let all = stranger.search_all(&RunSearch::default()).await.unwrap();
    assert_eq!(all.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_kill_9_and_the_logger_rides_out_a_restart() {
    init_tracing();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MLMESH_NODE__MESH", mesh.clone()),
        ("MLMESH_NODE__NAME", "tracker".to_string()),
        ("MLMESH_STORE__DATA_DIR", dir.path().display().to_string()),
        ("MLMESH_NETWORK__RPC_PORT", "0".to_string()),
    ];
    let bin = env!("CARGO_BIN_EXE_mlmesh-tracker");
    let mut proc = NodeProc::start(bin, &env);
    // The tracker listens on fixed ports so that the client's seed finds it again.
    let rpc_port = proc.rpc.rsplit(':').next().unwrap().to_string();
    let pub_port = proc.publish.rsplit(':').next().unwrap().to_string();
    drop(proc);
    let env = [
        env[0].clone(),
        env[1].clone(),
        env[2].clone(),
        ("MLMESH_NETWORK__RPC_PORT", rpc_port),
        ("MLMESH_NETWORK__PUB_PORT", pub_port),
    ];
    proc = NodeProc::start(bin, &env);
    let client = Node::builder(proc.seed_of("trainer", &mesh))
        .spawn()
        .await
        .unwrap();
    wait_alive(&client, proc.id).await;
    let tracking = Tracking::new(&client);
    let options = LoggerOptions {
        give_up_after: Duration::from_secs(30),
        ..LoggerOptions::default()
    };
    let run = tracking
        .start(
            RunStart {
                experiment: "durable".into(),
                ..Default::default()
            },
            options,
        )
        .await
        .unwrap();
    for step in 0..5000 {
        run.log_metric("loss", 1.0 / f64::from(step + 1), i64::from(step))
            .unwrap();
    }
    run.flush().await;
    // Acknowledged, then the tracker dies at once: everything acknowledged is there.
    proc.kill9();
    for step in 5000..10_000 {
        run.log_metric("loss", 1.0 / f64::from(step + 1), i64::from(step))
            .unwrap();
    }
    proc = NodeProc::start(bin, &env);
    let id = run.info().id;
    let report = within(
        "end after restart",
        Duration::from_secs(40),
        run.end(RunStatus::Finished),
    )
    .await
    .unwrap();
    assert!(
        report.unacknowledged.is_empty(),
        "{:?}",
        report.unacknowledged
    );
    assert_eq!(report.metrics_acknowledged, 10_000);
    let got = tracking.get_run(id).await.unwrap();
    assert_eq!(
        got.metrics["loss"].count, 10_000,
        "nothing lost, nothing twice"
    );
    assert_eq!(got.info.status, RunStatus::Finished);
    assert_eq!(got.info.tracker, proc.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tracker_crashes_runs_whose_owner_is_gone() {
    init_tracing();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let t = Tracker::open(&store_section(dir.path())).unwrap();
        let tracker = t
            .serve(Node::builder(local("tracker", &mesh)))
            .spawn()
            .await
            .unwrap();
        let owner = client_of(&tracker, &mesh).await;
        let gone = Tracking::new(&owner)
            .start_run("orphans", None)
            .await
            .unwrap();
        let stays = Tracking::new(&owner)
            .start_run("orphans", None)
            .await
            .unwrap();
        let ids = (gone.info().id, stays.info().id);
        // The tracker stops first: it never sees the owner leave.
        tracker.shutdown().await;
        owner.shutdown().await;
        drop((gone, stays, t));
        ids
    };
    // A second owner whose run must survive the restart: it is alive when the tracker
    // comes back.
    let t = within("the store to be free", WAIT, async {
        loop {
            match Tracker::open(&store_section(dir.path())) {
                Ok(t) => return t,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let tracker = t
        .serve(Node::builder(local("tracker", &mesh)))
        .spawn()
        .await
        .unwrap();
    let mut sub = {
        let watcher = client_of(&tracker, &mesh).await;
        let tracking = Tracking::new(&watcher);
        let alive = tracking.start_run("orphans", Some("alive")).await.unwrap();
        let alive_id = alive.info().id;
        std::mem::forget(alive);
        let mut sub = watcher.subscribe("tracking.run.ended").unwrap();
        sync_events(&tracker, &mut sub, "tracking.run.ended").await;
        t.watch_with(&tracker, Duration::from_millis(300));
        let mut crashed = std::collections::HashSet::new();
        while crashed.len() < 2 {
            let ended: tracking::RunInfo = next_event(&mut sub, tracking::RUN_ENDED)
                .await
                .decode()
                .unwrap();
            assert_eq!(ended.status, RunStatus::Crashed);
            assert_ne!(ended.id, alive_id, "its owner is alive");
            crashed.insert(ended.id);
        }
        assert_eq!(crashed, [first, second].into_iter().collect());
        let got = tracking.get_run(alive_id).await.unwrap();
        assert_eq!(got.info.status, RunStatus::Running);
        sub
    };
    assert!(sub.try_recv().is_none());
}
