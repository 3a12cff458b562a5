//! The background logger against a real tracker: what it cannot get acknowledged is
//! reported item by item, and one refused item does not cost the rest of its batch.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use mlmesh::clients::{LogError, Tracking};
use mlmesh::protocol::tracking::RunStatus;
use mlmesh::{Code, Node};
use mlmesh_nodes::tracker::Tracker;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_item_is_reported_alone_and_its_batch_mates_are_kept() {
    init_tracing();
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(&store_section(dir.path())).unwrap();
    let tracker = t
        .serve(Node::builder(local("tracker", &mesh)))
        .spawn()
        .await
        .unwrap();
    let client = client_of(&tracker, &mesh).await;
    let tracking = Tracking::new(&client);
    let run = tracking.start_run("logger", None).await.unwrap();
    let id = run.info().id;

    run.log_param("lr", "0.1").unwrap();
    run.flush().await;
    // Queued together, so they travel in one batch: the changed param is refused by the
    // tracker (params are written once), the rest must still land.
    run.log_param("lr", "0.2").unwrap();
    run.log_param("epochs", "10").unwrap();
    for step in 0..500 {
        run.log_metric("loss", f64::from(step), i64::from(step))
            .unwrap();
    }
    // Refused on the spot, before any network: the item breaks a limit.
    let err = run.log_metric("bad:key", 1.0, 0).unwrap_err();
    assert!(
        matches!(&err, LogError::Invalid(s) if s.field.as_deref() == Some("key")),
        "{err}"
    );

    let report = run.end(RunStatus::Finished).await.unwrap();
    assert_eq!(report.metrics_acknowledged, 500);
    assert_eq!(
        report.unacknowledged.len(),
        1,
        "{:?}",
        report.unacknowledged
    );
    let refused = &report.unacknowledged[0];
    assert_eq!(refused.status.code, Code::InvalidArgument);
    assert_eq!(refused.batch.params.len(), 1);
    assert_eq!(refused.batch.params[0].value, "0.2");
    assert!(refused.batch.metrics.is_empty());

    let got = tracking.get_run(id).await.unwrap();
    assert_eq!(got.params["lr"], "0.1");
    assert_eq!(got.params["epochs"], "10");
    assert_eq!(got.metrics["loss"].count, 500);
}
