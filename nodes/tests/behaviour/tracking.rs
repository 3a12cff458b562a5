//! The behaviour of a `tracking/1` provider, whatever serves it: MLflow's semantics and
//! limits, atomic batches, idempotent retries, events, crashed runs, search, concurrent
//! writers. Run for the built-in tracker by `tests/tracker.rs` and for the MLflow
//! adapter by `tests/mlflow.rs`; where the standard lets a backend differ, the test asks
//! [`Backend::caps`].

use std::time::Duration;

use mlmesh::clients::Tracking;
use mlmesh::protocol::tracking::{
    self, DatasetInput, ExperimentCreate, LogBatch, Logged, Metric, MetricHistory, Param,
    RunSearch, RunStart, RunStatus, Tag,
};
use mlmesh::{CallOptions, Code, MessageId, NodeHandle};

use crate::common::*;

pub struct Mesh {
    pub tracker: NodeHandle,
    pub client: NodeHandle,
    pub tracking: Tracking,
    _served: Served,
}

/// A tracker of `backend` and a client node that sees it.
pub async fn mesh(backend: Backend) -> Mesh {
    init_tracing();
    let mesh = unique_mesh();
    let served = backend.tracker("tracker", &mesh).await;
    let tracker = served.node.clone();
    let client = backend.client(&tracker, &mesh).await;
    let tracking = Tracking::new(&client);
    Mesh {
        tracker,
        client,
        tracking,
        _served: served,
    }
}

pub fn metric(key: &str, value: f64, step: i64, timestamp: u64) -> Metric {
    Metric {
        key: key.into(),
        value,
        timestamp,
        step,
    }
}

pub fn batch(run: tracking::RunId) -> LogBatch {
    LogBatch {
        run,
        params: vec![],
        metrics: vec![],
        tags: vec![],
        inputs: vec![],
    }
}

pub async fn start(t: &Tracking, experiment: &str) -> tracking::RunInfo {
    let run = t.start_run(experiment, None).await.unwrap();
    let info = run.info().clone();
    std::mem::forget(run); // keep it RUNNING; this test logs with direct calls
    info
}

pub async fn runs_params_metrics_tags_follow_mlflow_semantics(backend: Backend) {
    let m = mesh(backend).await;
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

pub async fn every_limit_is_invalid_argument_naming_the_item(backend: Backend) {
    let m = mesh(backend).await;
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

pub async fn a_retried_request_gets_the_original_reply_and_writes_nothing_twice(backend: Backend) {
    let m = mesh(backend).await;
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
    if backend.caps().counts_earlier_duplicates {
        assert_eq!(
            fresh,
            Logged {
                metrics: 0,
                duplicates: 2
            },
            "a new id is a new request"
        );
    } else {
        // Executed again; the backend drops the exact duplicates without counting them.
        assert_eq!(
            fresh.metrics + fresh.duplicates,
            2,
            "a new id is a new request"
        );
        let run = m.tracking.get_run(info.id).await.unwrap();
        assert_eq!(run.metrics["m"].count, 2, "nothing written twice");
    }

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

pub async fn events_report_every_change(backend: Backend) {
    let m = mesh(backend).await;
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

pub async fn a_run_whose_owner_leaves_the_mesh_becomes_crashed(backend: Backend) {
    let m = mesh(backend).await;
    let mut sub = m.client.subscribe("tracking.run.ended").unwrap();
    // The owner is a separate node that starts a run and leaves without ending it.
    let owner = backend
        .client(&m.tracker, &m.tracker.config().node.mesh)
        .await;
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

pub async fn search_filters_orders_and_pages_like_mlflow(backend: Backend) {
    let m = mesh(backend).await;
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

pub async fn eight_writer_nodes_at_once_lose_nothing(backend: Backend) {
    let m = mesh(backend).await;
    let mesh_name = m.tracker.config().node.mesh.clone();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let tracker = m.tracker.clone();
        let mesh_name = mesh_name.clone();
        tasks.push(tokio::spawn(async move {
            let node = backend.client(&tracker, &mesh_name).await;
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

/// A key's history longer than a message holds comes back in pages that each fit, with
/// the default `max_results` (25,000): every value once, in order, none lost at a page
/// boundary. (With millisecond timestamps 25,000 values are about 1.5 MB.)
pub async fn a_long_history_comes_back_in_pages_that_fit(backend: Backend) {
    let m = mesh(backend).await;
    let t = &m.tracking;
    let info = start(t, "history").await;
    let n = 25_000i64;
    let ts = 1_700_000_000_000u64;
    for chunk in 0..n / 1000 {
        let mut b = batch(info.id);
        b.metrics = (chunk * 1000..(chunk + 1) * 1000)
            .map(|step| metric("loss", 1.0 / (step + 1) as f64, step, ts + step as u64))
            .collect();
        t.log(&b).await.unwrap();
    }
    // The default page: what a client that leaves `max_results` out asks for.
    let mut req: MetricHistory = mlmesh::protocol::from_payload(
        &mlmesh::protocol::to_payload(&serde_json::json!({"run": info.id, "key": "loss"})).unwrap(),
    )
    .unwrap();
    assert_eq!(req.max_results, 25_000);
    let (mut steps, mut pages) = (Vec::new(), 0);
    loop {
        let page = t.metric_history(&req).await.unwrap();
        pages += 1;
        assert!(!page.metrics.is_empty(), "page {pages} is empty");
        steps.extend(page.metrics.iter().map(|m| m.step));
        match page.next_page_token {
            Some(token) => req.page_token = Some(token),
            None => break,
        }
        assert!(pages < 100, "too many pages");
    }
    assert!(pages > 1, "25,000 values do not fit one message");
    assert_eq!(steps, (0..n).collect::<Vec<_>>());
}

/// Runs with many long params make pages larger than a message may be: a search cuts its
/// pages by size, whatever `max_results` says, and the token carries on without losing or
/// repeating a run.
pub async fn run_search_pages_are_cut_to_the_message_size_limit(backend: Backend) {
    let m = mesh(backend).await;
    let t = &m.tracking;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..5 {
        let info = start(t, "large").await;
        let mut b = batch(info.id);
        // 100 params of 5,000 bytes: about 500 KB of params per run.
        b.params = (0..tracking::limits::MAX_PARAMS_PER_BATCH)
            .map(|k| Param {
                key: format!("p{k}"),
                value: format!("{i}").repeat(5_000),
            })
            .collect();
        t.log(&b).await.unwrap();
        ids.insert(info.id);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut req = RunSearch {
        experiments: vec!["large".into()],
        max_results: 1000,
        ..RunSearch::default()
    };
    let mut pages = 0;
    loop {
        let page = t.search(&req).await.unwrap();
        pages += 1;
        assert!(
            !page.runs.is_empty() && page.runs.len() < 2,
            "two runs of 500 KB do not fit one page: {}",
            page.runs.len()
        );
        for run in &page.runs {
            assert_eq!(run.params.len(), 100);
            assert!(seen.insert(run.info.id), "run {} twice", run.info.id);
        }
        match page.next_page_token {
            Some(token) => req.page_token = Some(token),
            None => break,
        }
        assert!(pages <= 5, "more pages than runs");
    }
    assert_eq!(seen, ids);
}
