//! The one shared harness of the integration tests: configs, bounded waits, and node
//! processes that can be killed for real.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlmesh::{Config, Node, NodeHandle, NodeId};

mod base;
pub use base::*;

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
        cmd.args(args).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd)
    }

    /// A child on loopback with mDNS off, seeded by `seed`, in `mesh`.
    pub fn seeded(name: &str, mesh: &str, seed: &str, args: &[&str]) -> ChildNode {
        Self::seeded_beating(name, mesh, seed, 200, args)
    }

    /// As [`ChildNode::seeded`], with a heartbeat every `heartbeat_ms`.
    pub fn seeded_beating(
        name: &str,
        mesh: &str,
        seed: &str,
        heartbeat_ms: u64,
        args: &[&str],
    ) -> ChildNode {
        Self::spawn(
            &[
                ("MLMESH_NODE__NAME", name.into()),
                ("MLMESH_NODE__MESH", mesh.into()),
                ("MLMESH_DISCOVERY__MDNS", "false".into()),
                ("MLMESH_DISCOVERY__SEEDS", seed.into()),
                ("MLMESH_DISCOVERY__SEED_INTERVAL_MS", "200".into()),
                ("MLMESH_LIVENESS__HEARTBEAT_MS", heartbeat_ms.to_string()),
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
        signal(self.child.id(), "TERM");
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

// ---------------------------------------------------------------------------------------
// Network namespaces and what runs inside them (tests/mdns.rs; usable by any test that
// needs mDNS or several "hosts"). They need root and iproute2 (`ip netns`).

/// Hosts on one Ethernet segment, all on this machine: host `i` (from 0) is a namespace
/// with a veth `e{i+1}`, address `10.99.S.{i+1}/24`, plugged into a bridge `br0` in a
/// namespace of its own. `S` is random per `Lan`; the addresses exist only inside these
/// namespaces, so nothing leaves the machine. Dropping it deletes them all.
#[derive(Debug)]
pub struct Lan {
    pub hosts: Vec<NetNs>,
    pub bridge: NetNs,
    pub subnet: u8,
}

impl Lan {
    pub fn new(hosts: usize) -> Lan {
        let bridge = NetNs::new("br");
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let subnet = 1 + NodeId::new().as_bytes()[15] % 254;
        let hosts = (0..hosts)
            .map(|i| {
                let host = NetNs::new(&format!("h{}", i + 1));
                let port = format!("p{}", i + 1);
                let iface = Self::iface(i);
                bridge.ip(&[
                    "link", "add", &port, "type", "veth", "peer", "name", &iface, "netns",
                    &host.name,
                ]);
                bridge.ip(&["link", "set", &port, "master", "br0"]);
                bridge.ip(&["link", "set", &port, "up"]);
                host.ip(&[
                    "addr",
                    "add",
                    &format!("10.99.{subnet}.{}/24", i + 1),
                    "dev",
                    &iface,
                ]);
                host.ip(&["link", "set", &iface, "up"]);
                host
            })
            .collect();
        Lan {
            hosts,
            bridge,
            subnet,
        }
    }

    /// The interface of host `i` on the segment.
    pub fn iface(i: usize) -> String {
        format!("e{}", i + 1)
    }

    /// The address of host `i` on the segment.
    pub fn addr(&self, i: usize) -> String {
        format!("10.99.{}.{}", self.subnet, i + 1)
    }

    /// Unplugs host `i` from the bridge (its interface stays up: packets just vanish).
    pub fn cut(&self, i: usize) {
        self.bridge
            .ip(&["link", "set", &format!("p{}", i + 1), "down"]);
    }

    /// Plugs host `i` back in.
    pub fn heal(&self, i: usize) {
        self.bridge
            .ip(&["link", "set", &format!("p{}", i + 1), "up"]);
    }
}

/// Panics unless this process runs in a namespace made by [`NetNs`] (`ip netns identify`
/// names it): the guard every mDNS test body starts with, so that mDNS never runs in the
/// machine's own network namespace.
pub fn assert_in_test_netns() {
    let out = Command::new("ip")
        .args(["netns", "identify", &std::process::id().to_string()])
        .output()
        .expect("iproute2 (`ip`) is installed");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        name.starts_with("mlmesh-"),
        "refusing to run mDNS outside a test namespace (in {name:?})"
    );
}

/// Set in a test binary that [`rerun_inside`] started; its value is the caller's.
pub const INSIDE_NETNS: &str = "MESHTEST_INSIDE_NETNS";

/// The value passed by [`rerun_inside`], when this process is such a re-run.
pub fn inside_netns() -> Option<String> {
    std::env::var(INSIDE_NETNS).ok()
}

/// Runs the test `test` of this very test binary again inside `ns` (`ip netns exec NS
/// <this binary> --exact TEST`), with [`INSIDE_NETNS`] = `value`. Prints its output and
/// panics unless that run passes within `timeout` (killing what it left in `ns` if not).
/// Returns its stdout.
pub fn rerun_inside(ns: &NetNs, test: &str, value: &str, timeout: Duration) -> String {
    let exe = std::env::current_exe().expect("path of this test binary");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE_NETNS, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_inner_test(cmd, &ns.name, test, timeout, || ns.kill_all())
}

impl ChildNode {
    /// Starts a prepared `mlmesh-node` command (stdout is taken for the ready line; stderr
    /// is left as `cmd` sets it) and waits (bounded) for its ready line.
    pub fn start(mut cmd: Command) -> ChildNode {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("mlmesh-node starts");
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
            panic!("mlmesh-node printed no ready line within {WAIT:?}");
        };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mlmesh-node's ready line {line:?} is not JSON ({e}); see its stderr");
            }
        };
        let field = |k: &str| v[k].as_str().expect("ready line field").to_owned();
        ChildNode {
            id: field("id").parse().expect("node id"),
            rpc: field("rpc"),
            publish: field("pub"),
            child,
        }
    }

    /// As [`ChildNode::spawn`], run through `prefix` (e.g. [`NetNs::exec_prefix`]). The
    /// child's pid is the node's own: `ip netns exec` execs it.
    pub fn spawn_via(prefix: &[String], env: &[(&str, String)], args: &[&str]) -> ChildNode {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(node_bin());
                c
            }
            None => Command::new(node_bin()),
        };
        cmd.args(args).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd)
    }
}

/// Asks the node at `rpc` for `sys.describe` over a fresh REQ socket, as an outsider
/// (no `caller`, so it does not become a candidate): how a test reads a node process's
/// peer list. `None` when no OK answer comes within two seconds.
pub async fn describe_of(rpc: &str) -> Option<mlmesh::protocol::sys::Describe> {
    use mlmesh::protocol::{from_payload, sys, to_payload, Body, Codec, Envelope, Topic};
    use zeromq::{Socket, SocketRecv, SocketSend};

    let mut options = zeromq::SocketOptions::default();
    options.connect_timeout(Duration::from_secs(1));
    let mut req = zeromq::ReqSocket::with_options(options);
    let call = async {
        req.connect(rpc).await.ok()?;
        let data = to_payload(&sys::DescribeRequest::default()).ok()?;
        let topic = Topic::new(sys::DESCRIBE).ok()?;
        let request = Envelope::request(topic, NodeId::new(), 1000, data.into());
        let codec = Codec::default();
        req.send(codec.encode(&request).ok()?.into()).await.ok()?;
        let frame = req.recv().await.ok()?.into_vec().pop()?;
        let reply = codec.decode(&frame).ok()?;
        match reply.body {
            Body::Reply { re, status } if re == request.id && status.is_ok() => {
                from_payload(&reply.data).ok()
            }
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmSize`, `VmHWM`); 0 if unreadable.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}
