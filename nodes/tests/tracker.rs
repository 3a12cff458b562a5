//! The experiment tracker over real nodes, real sockets and a real SQLite file: the
//! `tracking/1` behaviour suite (`behaviour/tracking.rs`) on the built-in tracker, and
//! what is the built-in store's own: two trackers, persistence across `kill -9`, the
//! logger riding out a restart, and the restart sweep of crashed runs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
#[macro_use]
mod behaviour;

use std::time::Duration;

use mlmesh::clients::{LoggerOptions, Tracking};
use mlmesh::protocol::tracking::{self, RunSearch, RunStart, RunStatus};
use mlmesh::Node;
use mlmesh_nodes::tracker::Tracker;

use behaviour::tracking::{batch, metric, start};
use common::*;

tracking_tests!(Backend::BuiltIn);

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
    // A client that never saw these runs finds each where it lives, once it knows both
    // trackers (seeded with the first, it learns of the second a moment later: CI once
    // asked before that and got NOT_FOUND, rightly).
    let stranger_node = client_of(&n1, &mesh).await;
    wait_alive(&stranger_node, n2.id()).await;
    let stranger = Tracking::new(&stranger_node);
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
