//! Several hosts on this machine, for fault tests: network namespaces on one bridge,
//! real node processes on each, and the instruments that check what held.
//!
//! - **Outside** (what `cargo test` starts), [`on_lan`] makes a [`Lan`]: a namespace
//!   per host with a veth `e{i+1}` at `10.99.S.{i+1}/24`, all plugged into a bridge
//!   in a namespace of its own. It then runs *this same test binary* again inside host
//!   0 (`ip netns exec`), selecting the one test, and passes or fails with that run.
//!   Dropping the `Lan` kills (by pid) every process left in its namespaces and deletes
//!   them, also when the test panics or the inner run overruns its time. Fault tests
//!   take one lock, so they run one at a time however many test threads there are.
//! - **Inside**, the test body gets a [`Lab`]: it starts node processes on any host
//!   ([`Proc`], through `ip netns exec`), cuts and restores links on the bridge, and
//!   runs the in-process probe node on host 0. Nodes find each other over real mDNS on
//!   their host's interface ([`Discovery::Mdns`]), or with mDNS off through one seed,
//!   the probe at `tcp://10.99.S.1:7001` ([`Discovery::Seeds`]).
//! - Every child's stderr goes to a file, read back for `panicked`; its peak memory
//!   (`VmHWM`) is read before it is killed; calls are timed against their deadlines
//!   ([`Calls`]). Measurements are printed as `MEASURE` lines.
//!
//! Durations scale with `MLMESH_SOAK` (a factor, default 1): see [`soak`].
//! Needs root and iproute2.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlmesh::protocol::sys::Describe;
use mlmesh::{Code, Config, NodeId, Status};

use super::{run_inner_test, signal, NetNs, WAIT};

/// Set in a test binary that [`on_lan`] re-ran inside host 0; its value describes the
/// [`Lab`].
pub const INSIDE: &str = "MLMESH_FAULTS_INSIDE";

/// Set in the inner run: the path of the test binary as cargo built it (the inner run is
/// a copy of it elsewhere), next to which `mlmesh-node` is found.
const TEST_BIN: &str = "MLMESH_FAULTS_TEST_BIN";

/// The probe's fixed rpc port in seeds mode (ports are per namespace: no clash).
pub const SEED_PORT: u16 = 7001;

/// The scale of every fault test: `MLMESH_SOAK=10` runs ten times the rounds and
/// durations (and allows ten times the time). 1 when unset or unreadable.
pub fn soak() -> u32 {
    std::env::var("MLMESH_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Prints one measurement line, `MEASURE <test> <what>: <value>`, the form
/// RELIABILITY.md quotes.
pub fn measure(test: &str, what: &str, value: impl std::fmt::Display) {
    println!("MEASURE {test} {what}: {value}");
}

/// Milliseconds of a duration, for `MEASURE` lines.
pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------
// Namespaces and the bridge (outside).

/// Hosts on one Ethernet segment: host `i` is a namespace with a veth `e{i+1}` at
/// `10.99.S.{i+1}/24`, its other end `p{i+1}` in the bridge's namespace, on `br0`.
#[derive(Debug)]
pub struct Lan {
    pub hosts: Vec<NetNs>,
    pub bridge: NetNs,
    pub subnet: u8,
}

impl Lan {
    pub fn new(hosts: usize) -> Lan {
        let bridge = NetNs::new("fbr");
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let subnet = 1 + NodeId::new().as_bytes()[15] % 254;
        let mut lan = Lan {
            hosts: Vec::new(),
            bridge,
            subnet,
        };
        for i in 0..hosts {
            let host = NetNs::new(&format!("fh{}", i + 1));
            let port = format!("p{}", i + 1);
            let iface = format!("e{}", i + 1);
            lan.bridge.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", &iface, "netns", &host.name,
            ]);
            lan.bridge.ip(&["link", "set", &port, "master", "br0"]);
            lan.bridge.ip(&["link", "set", &port, "up"]);
            let addr = format!("10.99.{subnet}.{}/24", i + 1);
            host.ip(&["addr", "add", &addr, "dev", &iface]);
            host.ip(&["link", "set", &iface, "up"]);
            lan.hosts.push(host);
        }
        lan
    }
}

impl Drop for Lan {
    /// Kills every process on every host first (a process of one host may be the
    /// parent of another's), then the namespaces go (fields drop after this).
    fn drop(&mut self) {
        for h in &self.hosts {
            h.kill_all();
        }
    }
}

/// Panics unless this process runs in a namespace made by [`NetNs`]: mDNS never runs in
/// the machine's own network namespace.
pub fn assert_in_test_netns() {
    let out = Command::new("ip")
        .args(["netns", "identify", &std::process::id().to_string()])
        .output()
        .expect("iproute2 (`ip`) is installed");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        name.starts_with("mlmesh-"),
        "refusing to run a fault test outside a test namespace (in {name:?})"
    );
}

/// Fault tests run one at a time: each one loads both cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// How hosts find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Real mDNS on each host's interface; no seeds.
    Mdns,
    /// mDNS off; every node's one seed is the probe on host 0.
    Seeds,
}

/// Runs `body` inside host 0 of a fresh [`Lan`] of `hosts` hosts (see the module doc).
/// `test` is the test's own name, which the re-run selects. The inner run may take
/// `budget` (times [`soak`]).
pub fn on_lan<F: Future<Output = ()>>(
    test: &str,
    hosts: usize,
    discovery: Discovery,
    budget: Duration,
    body: impl FnOnce(Lab) -> F,
) {
    if let Ok(value) = std::env::var(INSIDE) {
        assert_in_test_netns();
        let lab = Lab::parse(&value);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body(lab));
        // Nodes and tasks the body leaves behind are not waited for.
        rt.shutdown_timeout(Duration::from_secs(1));
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::new(hosts);
    let names: Vec<&str> = lan.hosts.iter().map(|h| h.name.as_str()).collect();
    let value = format!(
        "{} {} {} {}",
        lan.subnet,
        match discovery {
            Discovery::Mdns => "mdns",
            Discovery::Seeds => "seeds",
        },
        lan.bridge.name,
        names.join(" ")
    );
    // Run a copy of this binary: a rebuild during a long run (a soak while someone edits
    // the tree) replaces the file, and the inner run starts more copies of itself (its
    // trainers) by path.
    let copy_dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("path of this test binary");
    let copy = copy_dir.path().join(exe.file_name().expect("a file name"));
    std::fs::copy(&exe, &copy).expect("copy the test binary");
    let started = Instant::now();
    rerun_inside(&lan, &copy, test, &value, budget * soak());
    println!(
        "MEASURE {test} wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs the test `test` of `exe` (a copy of this binary) inside host 0 of `lan`, with [`INSIDE`] =
/// `value`; prints its output; panics unless it passes within `timeout` (then kills
/// everything it left on the hosts).
fn rerun_inside(lan: &Lan, exe: &Path, test: &str, value: &str, timeout: Duration) {
    let ns = &lan.hosts[0];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(exe)
        // --include-ignored: the inner run of an ignored test runs it too.
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(INSIDE, value)
        .env(
            TEST_BIN,
            std::env::current_exe().expect("path of this test binary"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_inner_test(cmd, &ns.name, test, timeout, || {
        for h in &lan.hosts {
            h.kill_all();
        }
    });
}

// ---------------------------------------------------------------------------------------
// The lab (inside).

/// What a test body knows of its hosts.
#[derive(Debug, Clone)]
pub struct Lab {
    /// Host namespaces, host 0 (where the body runs) first.
    pub hosts: Vec<String>,
    /// The bridge's namespace.
    pub bridge: String,
    /// Host `i` is `10.99.<subnet>.<i+1>`.
    pub subnet: u8,
    pub discovery: Discovery,
    /// A fresh mesh name for this run.
    pub mesh: String,
    /// The heartbeat of the tests' nodes: 1000 ms (the default; gone after 3 s of
    /// silence) over mDNS, where a node dropped by mistake under load comes back only
    /// through the runtime's second look at peers dropped for silence (RELIABILITY.md,
    /// finding 1); 500 ms with seeds, whose ticks heal such a drop.
    pub heartbeat_ms: u32,
    /// Where children's stderr files and stores go; removed with the lab's last clone.
    pub dir: Arc<tempfile::TempDir>,
}

impl Lab {
    fn parse(value: &str) -> Lab {
        let mut words = value.split_whitespace();
        let subnet = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let discovery = match words.next() {
            Some("seeds") => Discovery::Seeds,
            _ => Discovery::Mdns,
        };
        let bridge = words.next().unwrap_or_default().to_owned();
        Lab {
            hosts: words.map(String::from).collect(),
            bridge,
            subnet,
            discovery,
            heartbeat_ms: match discovery {
                Discovery::Mdns => 1000,
                Discovery::Seeds => 500,
            },
            mesh: super::unique_mesh(),
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.99.{}.{}", self.subnet, i + 1)
    }

    /// Host `i`'s interface on the segment.
    pub fn iface(i: usize) -> String {
        format!("e{}", i + 1)
    }

    /// The command prefix that runs a program on host `i`.
    pub fn on_host(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.hosts[i]]
            .map(String::from)
            .to_vec()
    }

    /// Cuts host `i` off: its bridge port stops forwarding (`bridge link set .. state
    /// disabled`). Both ends of its cable stay up with their addresses and carrier, so
    /// nothing on either side is told: packets just vanish, connections stay open, as in
    /// a partition upstream of the host.
    pub fn cut(&self, i: usize) {
        self.port_state(i, "0");
    }

    /// Restores host `i`'s port to forwarding.
    pub fn heal(&self, i: usize) {
        self.port_state(i, "3");
    }

    fn port_state(&self, i: usize, state: &str) {
        let port = format!("p{}", i + 1);
        let out = Command::new("bridge")
            .args([
                "-n",
                &self.bridge,
                "link",
                "set",
                "dev",
                &port,
                "state",
                state,
            ])
            .output()
            .expect("iproute2 (`bridge`) is installed");
        assert!(
            out.status.success(),
            "`bridge link set dev {port} state {state}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// The seed every node uses in seeds mode.
    pub fn seed(&self) -> String {
        format!("tcp://{}:{SEED_PORT}", self.addr(0))
    }

    /// `MLMESH_*` settings of a node process on host `i`, bound to the host's address,
    /// discovering as the lab says, with heartbeat `heartbeat_ms`.
    pub fn node_env(&self, i: usize, name: &str, heartbeat_ms: u32) -> Vec<(String, String)> {
        let mut env = vec![
            ("MLMESH_NODE__NAME", name.to_owned()),
            ("MLMESH_NODE__MESH", self.mesh.clone()),
            ("MLMESH_NETWORK__BIND", self.addr(i)),
            ("MLMESH_LIVENESS__HEARTBEAT_MS", heartbeat_ms.to_string()),
        ];
        // The nodes' own logs, in their stderr files for a failure's report: at info
        // (nodes starting, peers joining), or as `MLMESH_FAULTS_NODE_LOG` says.
        let filter = std::env::var("MLMESH_FAULTS_NODE_LOG").unwrap_or_else(|_| "info".into());
        env.push(("MLMESH_LOG", filter));
        match self.discovery {
            Discovery::Mdns => {
                env.push(("MLMESH_DISCOVERY__MDNS", "true".into()));
                env.push(("MLMESH_DISCOVERY__MDNS_INTERFACES", Self::iface(i)));
            }
            Discovery::Seeds => {
                env.push(("MLMESH_DISCOVERY__MDNS", "false".into()));
                env.push(("MLMESH_DISCOVERY__SEEDS", self.seed()));
                env.push(("MLMESH_DISCOVERY__SEED_INTERVAL_MS", "500".into()));
            }
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The config of the in-process probe on host 0: in seeds mode it is the seed (fixed
    /// rpc port, no seeds of its own).
    pub fn probe_config(&self, name: &str, heartbeat_ms: u32) -> Config {
        let mut c = Config::default();
        c.node.name = name.into();
        c.node.mesh = self.mesh.clone();
        c.network.bind = self.addr(0).parse().expect("an IPv4 address");
        c.liveness.heartbeat_ms = heartbeat_ms;
        match self.discovery {
            Discovery::Mdns => {
                c.discovery.mdns = true;
                c.discovery.mdns_interfaces = vec![Self::iface(0)];
            }
            Discovery::Seeds => {
                c.discovery.mdns = false;
                c.network.rpc_port = SEED_PORT;
            }
        }
        c
    }

    /// A fresh directory under the lab's temporary one.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("create a directory");
        p
    }

    /// Starts `bin args` on host `i` with `env`; see [`Proc`].
    pub fn launch(
        &self,
        i: usize,
        label: &str,
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Launch {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i]])
            .arg(bin)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stderr = self.dir.path().join(format!(
            "{label}-{}.stderr",
            &NodeId::new().0.simple().to_string()[24..]
        ));
        Launch::start(cmd, label, i, stderr)
    }
}

/// Starts `bin args` in this process's own namespace (loopback tests), its stderr in a
/// file under `dir`; see [`Proc`].
pub fn launch_local(
    label: &str,
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    dir: &Path,
) -> Launch {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stderr = dir.join(format!(
        "{label}-{}.stderr",
        &NodeId::new().0.simple().to_string()[24..]
    ));
    Launch::start(cmd, label, 0, stderr)
}

/// The `mlmesh-node` binary of the root crate, next to this test binary's directory
/// (`target/<profile>/mlmesh-node`). `cargo test --workspace` builds it; alone, run
/// `cargo build --bin mlmesh-node` first.
pub fn mlmesh_node_bin() -> PathBuf {
    let exe = std::env::var_os(TEST_BIN)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("path of this test binary"));
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("mlmesh-node");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin mlmesh-node` (cargo test --workspace builds it)",
        bin.display()
    );
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin) < modified(&exe) {
        // `cargo test -p mlmesh-nodes` does not rebuild the root crate's binary.
        eprintln!(
            "note: {} is older than this test binary; `cargo build --bin mlmesh-node` if the runtime changed",
            bin.display()
        );
    }
    bin
}

/// libfaketime (apt package `faketime`), preloaded to give a process another wall clock.
pub fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing: `apt-get install faketime` (.ci/run installs it)")
        })
}

/// The environment that runs a process with its wall clock `offset` away (e.g. `+7m`,
/// `-11m`): libfaketime fakes `CLOCK_REALTIME` only, so the monotonic clock that
/// timers and liveness use is the host's, as on a real machine with a wrong clock.
pub fn skewed_clock(offset: &str) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            libfaketime().to_string_lossy().into_owned(),
        ),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ]
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A process being started: its ready line has not been read yet. Launch many, then
/// wait for each (so that they start at once).
#[derive(Debug)]
pub struct Launch {
    proc: Proc,
}

impl Launch {
    fn start(mut cmd: Command, label: &str, host: usize, stderr: PathBuf) -> Launch {
        let err = std::fs::File::create(&stderr).expect("create a stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label} starts: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let l = lines.clone();
        std::thread::spawn(move || {
            // The ready line is the first JSON object: a test binary run as a process
            // prints libtest's own text before it (`test role_process ... {..}`).
            let mut ready = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !ready {
                    if let Some(at) = line.find("{\"") {
                        let _ = ready_tx.send(line[at..].to_owned());
                        ready = true;
                    }
                } else {
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }
        });
        Launch {
            proc: Proc {
                label: label.to_owned(),
                host,
                pid: child.id(),
                child,
                id: NodeId(uuid::Uuid::nil()),
                rpc: String::new(),
                publish: String::new(),
                ready: serde_json::Value::Null,
                stderr,
                lines,
                ready_rx: Some(ready_rx),
                peak_kib: 0,
            },
        }
    }

    /// Waits (bounded by `timeout`) for the ready line, a JSON object with `id`, `rpc`
    /// and `pub`.
    pub fn ready_within(mut self, timeout: Duration) -> Proc {
        let rx = self.proc.ready_rx.take().expect("not waited for yet");
        let line = match rx.recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => {
                self.proc.kill9();
                panic!(
                    "{} printed no ready line within {timeout:?}; stderr: {}",
                    self.proc.label,
                    self.proc.stderr_text()
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{}'s ready line {line:?} is not JSON ({e}): {}",
                self.proc.label,
                self.proc.stderr_text()
            )
        });
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        self.proc.id = field("id")
            .parse()
            .unwrap_or_else(|_| NodeId(uuid::Uuid::nil()));
        self.proc.rpc = field("rpc");
        self.proc.publish = field("pub");
        self.proc.ready = v;
        self.proc
    }

    /// [`Launch::ready_within`] [`WAIT`].
    pub fn ready(self) -> Proc {
        self.ready_within(WAIT)
    }
}

/// A node process on one of the hosts. Dropping it kills it.
#[derive(Debug)]
pub struct Proc {
    pub label: String,
    pub host: usize,
    pub pid: u32,
    pub child: Child,
    pub id: NodeId,
    pub rpc: String,
    pub publish: String,
    /// The whole ready line.
    pub ready: serde_json::Value,
    pub stderr: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    ready_rx: Option<std::sync::mpsc::Receiver<String>>,
    /// The highest `VmHWM` read, KiB.
    pub peak_kib: u64,
}

impl Proc {
    /// Lines printed after the ready line, taken out.
    pub fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads its peak resident memory now (it is gone once the process is).
    pub fn sample_peak(&mut self) -> u64 {
        self.peak_kib = self.peak_kib.max(proc_kib(self.pid, "VmHWM"));
        self.peak_kib
    }

    /// SIGKILL (no goodbye), after noting its peak memory; reaps it.
    pub fn kill9(&mut self) {
        self.sample_peak();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL without waiting for the exit (for many processes at once); [`Proc::reap`]
    /// later.
    pub fn kill9_nowait(&mut self) {
        self.sample_peak();
        signal(self.pid, "KILL");
    }

    /// SIGTERM without waiting.
    pub fn term_nowait(&mut self) {
        self.sample_peak();
        signal(self.pid, "TERM");
    }

    /// Waits (bounded) for the exit; SIGKILLs it if it does not come. Its exit code.
    pub fn reap(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    /// SIGTERM and wait (bounded): its exit code, `None` if it had to be killed.
    pub fn terminate(&mut self) -> Option<i32> {
        self.term_nowait();
        self.reap(WAIT)
    }

    /// SIGSTOP: frozen, its sockets still open.
    pub fn freeze(&self) {
        signal(self.pid, "STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.pid, "CONT");
    }

    /// What it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last `chars` characters of its stderr.
    pub fn stderr_tail(&self, chars: usize) -> String {
        let text = self.stderr_text();
        let skip = text.chars().count().saturating_sub(chars);
        text.chars().skip(skip).collect()
    }

    /// Panics if it wrote `panicked` to stderr.
    pub fn assert_no_panic(&self) {
        let text = self.stderr_text();
        assert!(
            !text.contains("panicked"),
            "{} panicked; its stderr:\n{text}",
            self.label
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
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

/// The resident-memory bound of a node process with the default limits, in KiB, and
/// how it is made up. The runtime's own queues are bounded by configuration (publish
/// queue 64 MiB, 1024 frames of at most 16 KiB per subscriber, 256 requests of at most
/// 1 MiB in progress); a debug build's code, heap and SQLite caches take the rest. A
/// node whose peak stays under this did not grow with the faults it went through.
pub fn rss_bound_kib(subscribers: u64) -> u64 {
    // Code, runtime, mDNS, SQLite page caches of a debug build: measured 15-40 MiB.
    let base = 96 * 1024;
    // Not the full 64 MiB + 256 MiB the limits allow: these tests never fill them
    // (their batches are under 100 KiB and at most a few dozen in flight).
    let queues = 32 * 1024;
    let per_subscriber = 1024 * 16 * 1024 / 1024 / 8; // 1024 frames, batches ~2 KiB
    base + queues + subscribers * per_subscriber
}

// ---------------------------------------------------------------------------------------
// What the tests check.

/// Every call of a test, timed against its deadline.
#[derive(Debug, Default)]
pub struct Calls {
    pub total: u64,
    pub ok: u64,
    /// Non-OK outcomes by code name.
    pub codes: BTreeMap<String, u64>,
    pub worst: Duration,
    /// The largest `latency - deadline` (zero when every call beat its deadline).
    pub worst_over: Duration,
    pub worst_deadline: Duration,
}

/// How late a call may come back beyond its deadline before the test fails: the
/// runtime's timer and a loaded 2-core machine's scheduling, not the network.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(1500);

impl Calls {
    /// Records one outcome.
    pub fn record<T>(&mut self, took: Duration, deadline: Duration, r: &Result<T, Status>) {
        self.total += 1;
        match r {
            Ok(_) => self.ok += 1,
            Err(s) => *self.codes.entry(format!("{:?}", s.code)).or_default() += 1,
        }
        if took > self.worst {
            self.worst = took;
            self.worst_deadline = deadline;
        }
        self.worst_over = self.worst_over.max(took.saturating_sub(deadline));
    }

    /// Adds another recorder's counts.
    pub fn merge(&mut self, other: &Calls) {
        self.total += other.total;
        self.ok += other.ok;
        for (k, v) in &other.codes {
            *self.codes.entry(k.clone()).or_default() += v;
        }
        if other.worst > self.worst {
            self.worst = other.worst;
            self.worst_deadline = other.worst_deadline;
        }
        self.worst_over = self.worst_over.max(other.worst_over);
    }

    /// Panics unless every call came back by its deadline plus [`DEADLINE_SLACK`].
    pub fn assert_bounded(&self, what: &str) {
        self.assert_bounded_by(what, DEADLINE_SLACK);
    }

    /// Panics unless every call came back by its deadline plus `slack`.
    pub fn assert_bounded_by(&self, what: &str, slack: Duration) {
        assert!(
            self.worst_over <= slack,
            "{what}: a call came back {:?} after its deadline ({self})",
            self.worst_over
        );
    }
}

impl std::fmt::Display for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls, {} OK, errors {:?}; worst {:.0} ms (deadline {:.0} ms), worst past deadline {:.0} ms",
            self.total,
            self.ok,
            self.codes,
            self.worst.as_secs_f64() * 1e3,
            self.worst_deadline.as_secs_f64() * 1e3,
            self.worst_over.as_secs_f64() * 1e3
        )
    }
}

/// Whether an outcome leaves the instruction's effect unknown or undone in a way a
/// retry under the same id may settle (the logger's rule, SPEC 9.4).
pub fn worth_retrying(s: &Status) -> bool {
    s.code.is_retryable() || matches!(s.code, Code::Cancelled | Code::NotFound)
}

/// Asks the node at `rpc` for `sys.describe` over a fresh REQ socket, as an outsider
/// (no `caller`): how a test reads a process's peer table. `None` when no OK answer
/// comes within two seconds.
pub async fn describe_of(rpc: &str) -> Option<Describe> {
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

/// A member of a mesh as the convergence checks see it: its id and how to read its
/// table (the probe reads its own; processes answer `sys.describe`).
#[derive(Debug, Clone)]
pub enum Member {
    Probe(mlmesh::NodeHandle),
    Process { id: NodeId, rpc: String, pid: u32 },
}

impl Member {
    pub fn of(p: &Proc) -> Member {
        Member::Process {
            id: p.id,
            rpc: p.rpc.clone(),
            pid: p.pid,
        }
    }

    pub fn id(&self) -> NodeId {
        match self {
            Member::Probe(n) => n.id(),
            Member::Process { id, .. } => *id,
        }
    }

    /// The ids in its peer table (alive or suspect, as `sys.describe` lists them), or
    /// `None` if it did not answer.
    pub async fn view(&self) -> Option<BTreeSet<NodeId>> {
        match self {
            Member::Probe(n) => Some(n.peers().into_iter().map(|p| p.id).collect()),
            Member::Process { rpc, .. } => describe_of(rpc)
                .await
                .map(|d| d.peers.iter().map(|p| p.id).collect()),
        }
    }
}

/// Every member's view against "every other member".
pub async fn agreement(members: &[Member]) -> (bool, Vec<String>) {
    let all: BTreeSet<NodeId> = members.iter().map(Member::id).collect();
    let views = futures::future::join_all(members.iter().map(Member::view)).await;
    let mut ok = true;
    let mut report = Vec::new();
    for (m, v) in members.iter().zip(views) {
        let mut want = all.clone();
        want.remove(&m.id());
        match v {
            Some(v) if v == want => {}
            Some(v) => {
                ok = false;
                let missing: Vec<String> = want.difference(&v).map(|id| id.to_string()).collect();
                let extra: Vec<String> = v.difference(&want).map(|id| id.to_string()).collect();
                report.push(format!(
                    "{}: missing {} {:?}, extra {} {:?}",
                    m.id(),
                    missing.len(),
                    &missing[..missing.len().min(3)],
                    extra.len(),
                    &extra[..extra.len().min(3)]
                ));
            }
            None => {
                ok = false;
                let threads = match m {
                    Member::Process { pid, .. } => threads_of(*pid),
                    Member::Probe(_) => String::new(),
                };
                report.push(format!("{}: no answer{threads}", m.id()));
            }
        }
    }
    (ok, report)
}

/// Where each thread of process `pid` is, from `/proc`: its name, state, kernel wait
/// channel and system call number (202 is `futex`, 232 `epoll_wait`), so that a process
/// that stopped answering says whether it is stuck, and where.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!(" (process {pid} is gone)");
    };
    let read = |tid: &str, file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let mut out = format!(" (process {pid}, threads:");
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let stat = read(&tid, "stat");
        // The state follows the name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.get(..1))
            .unwrap_or("?");
        let syscall = read(&tid, "syscall");
        let syscall = syscall.split(' ').next().unwrap_or("?");
        out.push_str(&format!(
            " {}[{}] {state} {} {syscall};",
            read(&tid, "comm"),
            tid,
            read(&tid, "wchan"),
        ));
    }
    out.push(')');
    out
}

/// Polls until every member lists exactly every other member; the time it took. Panics
/// naming `what` (and who disagrees) after `timeout`.
pub async fn wait_agreement(what: &str, timeout: Duration, members: &[Member]) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, report) = agreement(members).await;
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
