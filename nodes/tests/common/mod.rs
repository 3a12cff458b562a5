//! The shared harness of the standard nodes' tests: loopback meshes, bounded waits,
//! stores in temporary directories, and node processes that can be killed for real.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlmesh::{Config, Node, NodeHandle, NodeId, PeerState};
use mlmesh_nodes::store::StoreSection;

mod backend;
#[allow(unused_imports)] // not every test binary uses the backends
pub use backend::*;
pub mod hosts; // hosts as network namespaces on a bridge: the fault tests' harness

// The workspace's base harness (configs, unique meshes, bounded waits), shared with the
// runtime's own tests.
#[path = "../../../tests/common/base.rs"]
mod base;
pub use base::*;

/// A store in `dir`.
pub fn store_section(dir: &Path) -> StoreSection {
    StoreSection {
        data_dir: dir.to_path_buf(),
        ..StoreSection::default()
    }
}

/// Waits until `node` sees the node `id` alive.
pub async fn wait_alive(node: &NodeHandle, id: NodeId) {
    let what = format!("{} to see {id} alive", node.name());
    wait_until(&what, WAIT, || {
        node.peers()
            .iter()
            .any(|p| p.id == id && p.state == PeerState::Alive)
    })
    .await;
}

/// A plain node seeded by `server`, returned once it sees `server` alive.
pub async fn client_of(server: &NodeHandle, mesh: &str) -> NodeHandle {
    client_with(server, seeded("client", mesh, server)).await
}

/// A plain node of `config` (seeded by `server`), returned once it sees `server` alive.
pub async fn client_with(server: &NodeHandle, config: Config) -> NodeHandle {
    let client = Node::builder(config).spawn().await.expect("client starts");
    wait_alive(&client, server.id()).await;
    client
}

/// A node binary's process. Dropping it kills it.
#[derive(Debug)]
pub struct NodeProc {
    pub child: Child,
    pub id: NodeId,
    pub rpc: String,
    pub publish: String,
}

impl NodeProc {
    /// Starts `bin` on loopback with mDNS off and `env` on top, and waits (bounded) for
    /// its ready line.
    pub fn start(bin: &str, env: &[(&str, String)]) -> NodeProc {
        let mut cmd = Command::new(bin);
        cmd.env("MLMESH_DISCOVERY__MDNS", "false")
            .env("MLMESH_NETWORK__BIND", "127.0.0.1")
            .env("MLMESH_LIVENESS__HEARTBEAT_MS", "200");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{bin} starts: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} printed no ready line within {WAIT:?}");
        };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{bin}'s ready line {line:?} is not JSON ({e}); see its stderr");
            }
        };
        let field = |k: &str| v[k].as_str().expect("ready line field").to_owned();
        NodeProc {
            id: field("id").parse().expect("node id"),
            rpc: field("rpc"),
            publish: field("pub"),
            child,
        }
    }

    /// A config for a node of `mesh` seeded by this process.
    pub fn seed_of(&self, name: &str, mesh: &str) -> Config {
        let mut c = local(name, mesh);
        c.discovery.seeds = vec![self.rpc.clone()];
        c.discovery.seed_interval_ms = 200;
        c
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        panic!("the node did not exit within {WAIT:?} of SIGTERM");
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next event of `sub` whose topic is `topic`, skipping others; panics after [`WAIT`].
pub async fn next_event(sub: &mut mlmesh::Subscription, topic: &str) -> mlmesh::Event {
    within(&format!("event {topic}"), WAIT, async {
        loop {
            let ev = sub.recv().await.expect("subscription open");
            if ev.topic().as_str() == topic {
                return ev;
            }
        }
    })
    .await
}
