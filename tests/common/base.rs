//! What every integration test of the workspace needs: configs, unique meshes, bounded
//! waits and event synchronisation. Included by `tests/common/mod.rs` and, by path, by
//! `nodes/tests/common/mod.rs`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlmesh::{Config, NodeHandle, NodeId};

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

/// Awaits `fut`, panicking naming `what` if it takes longer than `timeout`: a bounded
/// wait for a join handle, a shutdown or a batch of calls.
pub async fn within<F: std::future::Future>(what: &str, timeout: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(timeout, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Publishes `probe` from `publisher` every 50 ms until `sub` receives it from that
/// node, discarding anything else `sub` holds. ZeroMQ connects a SUB asynchronously and
/// a PUB drops what it has no subscriber for yet (the slow joiner), so event tests call
/// this before the events they count.
pub async fn sync_events(publisher: &NodeHandle, sub: &mut mlmesh::Subscription, probe: &str) {
    let what = format!("{probe} from {} to arrive", publisher.name());
    within(&what, WAIT, async {
        loop {
            publisher
                .publish(probe, &())
                .await
                .expect("probe published");
            let until = tokio::time::Instant::now() + Duration::from_millis(50);
            while let Ok(Some(ev)) = tokio::time::timeout_at(until, sub.recv()).await {
                if ev.topic().as_str() == probe && ev.source() == publisher.id() {
                    return;
                }
            }
        }
    })
    .await
}

/// Checks `cond` every 10 ms for `period` and panics naming `what` if it ever holds: the
/// bounded way to show that something does not happen.
pub async fn never(what: &str, period: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(!cond(), "{what} happened after {:?}", start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next peer event that `pred` accepts (others are skipped); panics naming `what`
/// after `timeout`.
pub async fn next_peer_event(
    events: &mut tokio::sync::broadcast::Receiver<mlmesh::PeerEvent>,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&mlmesh::PeerEvent) -> bool,
) -> mlmesh::PeerEvent {
    use tokio::sync::broadcast::error::RecvError;
    within(what, timeout, async {
        loop {
            match events.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("peer events closed while waiting for {what}"),
            }
        }
    })
    .await
}

/// Runs `cmd`, a test binary re-run with `--exact test` inside the network namespace
/// `ns` (stdout and stderr piped), until it exits or `timeout` passes, then calls
/// `on_timeout` to kill what it left behind. Prints its output, panics unless `test`
/// passed in it, and returns its stdout.
pub fn run_inner_test(
    mut cmd: Command,
    ns: &str,
    test: &str,
    timeout: Duration,
    on_timeout: impl FnOnce(),
) -> String {
    let mut child = cmd.spawn().expect("ip netns exec starts");
    // Read without joining: node processes the run leaves behind may hold the pipes.
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        buf
    };
    let out = collect(Box::new(child.stdout.take().expect("piped stdout")));
    let err = collect(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            on_timeout();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    let text = |b: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    let (stdout, stderr) = (text(&out), text(&err));
    println!("--- {test} inside {ns}: stdout ---\n{stdout}");
    println!("--- {test} inside {ns}: stderr ---\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("{test} inside {ns} ran over {timeout:?}"));
    assert!(status.success(), "{test} failed inside {ns} ({status})");
    assert!(
        stdout.contains("1 passed"),
        "the re-run inside {ns} ran no test named {test}"
    );
    stdout
}

/// A network namespace made for one test (`ip netns add`, `lo` up). Dropping it kills,
/// by pid, every process still inside (the test's own children) and deletes it, also
/// when the test panics. Needs root and iproute2.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A fresh namespace `mlmesh-<tag>-<random>`.
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "mlmesh-{tag}-{}",
            &NodeId::new().0.simple().to_string()[24..]
        );
        run_ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`; panics with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// SIGKILLs every process inside.
    pub fn kill_all(&self) {
        kill_all_in(&self.name);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// SIGKILLs, by pid, every process in the namespace `name` (as `ip netns pids` lists).
fn kill_all_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<u32>() {
            if pid > 1 && pid != std::process::id() {
                signal(pid, "KILL");
            }
        }
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 (`ip`) is installed");
    assert!(
        out.status.success(),
        "`ip {}` failed (these tests need root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Sends a signal by name with `kill(1)` (no `unsafe` in tests).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
