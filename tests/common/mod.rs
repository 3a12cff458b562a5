//! The one shared harness of the integration tests: configs, bounded waits, and node
//! processes that can be killed for real.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlmesh::{Config, Node, NodeHandle, NodeId};

/// Every wait in these tests ends by this much, at the latest, unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// Logs to the test output when `MLMESH_LOG` is set (e.g. `MLMESH_LOG=mlmesh=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MLMESH_LOG")
                .unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A mesh name no other test uses, so tests running at once never see each other.
pub fn unique_mesh() -> String {
    format!("t{}", &NodeId::new().0.simple().to_string()[20..])
}

/// Loopback, mDNS off, ephemeral ports, a short heartbeat so liveness tests are quick.
pub fn local(name: &str, mesh: &str) -> Config {
    let mut c = Config::local(name, mesh);
    c.liveness.heartbeat_ms = 200;
    c
}

/// The same, with `seed` as the only seed.
pub fn seeded(name: &str, mesh: &str, seed: &NodeHandle) -> Config {
    let mut c = local(name, mesh);
    c.discovery.seeds = vec![seed.endpoints().rpc.clone()];
    c.discovery.seed_interval_ms = 200;
    c
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node` lists exactly `n` peers, all of them alive.
pub async fn wait_peers(node: &NodeHandle, n: usize) {
    let what = format!("{} to see {n} peers", node.name());
    wait_until(&what, WAIT, || {
        let p = node.peers();
        p.len() == n && p.iter().all(|p| p.state == mlmesh::PeerState::Alive)
    })
    .await;
}

/// A node with no handlers, for seeding.
pub async fn plain(config: Config) -> NodeHandle {
    Node::builder(config).spawn().await.expect("node starts")
}

/// Path of the `mlmesh-node` binary built with these tests.
pub fn node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mlmesh-node")
}

/// An `mlmesh-node` process. Dropping it kills it.
#[derive(Debug)]
pub struct ChildNode {
    pub child: Child,
    pub id: NodeId,
    pub rpc: String,
    pub publish: String,
}

impl ChildNode {
    /// Starts `mlmesh-node` with `MLMESH_*` settings and arguments, and waits (bounded)
    /// for its ready line.
    pub fn spawn(env: &[(&str, String)], args: &[&str]) -> ChildNode {
        let mut cmd = Command::new(node_bin());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("mlmesh-node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("mlmesh-node printed its ready line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let field = |k: &str| v[k].as_str().expect("ready line field").to_owned();
        ChildNode {
            child,
            id: field("id").parse().expect("node id"),
            rpc: field("rpc"),
            publish: field("pub"),
        }
    }

    /// A child on loopback with mDNS off, seeded by `seed`, in `mesh`.
    pub fn seeded(name: &str, mesh: &str, seed: &str, args: &[&str]) -> ChildNode {
        Self::spawn(
            &[
                ("MLMESH_NODE__NAME", name.into()),
                ("MLMESH_NODE__MESH", mesh.into()),
                ("MLMESH_DISCOVERY__MDNS", "false".into()),
                ("MLMESH_DISCOVERY__SEEDS", seed.into()),
                ("MLMESH_DISCOVERY__SEED_INTERVAL_MS", "200".into()),
                ("MLMESH_LIVENESS__HEARTBEAT_MS", "200".into()),
            ],
            args,
        )
    }

    /// SIGKILL: the process dies without a goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for a graceful exit; returns its exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe_free_signal(self.child.id(), "TERM");
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        None
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal by name with `kill(1)`, to keep `unsafe` out of the tests.
pub fn unsafe_free_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}
