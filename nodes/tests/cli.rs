//! The `mlmesh` command, run as a process against real nodes over loopback (mDNS off,
//! seeds on): listings that never show dead nodes, calls and their exit statuses,
//! run-scoped routing between two trackers, events both ways with exact payloads and
//! counted gaps, pipelines into `head`, `hz`, `doctor`'s explanations, `mlmesh run`, and
//! (in a network namespace of its own) mDNS.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[allow(unused_imports)] // the shared harness re-exports what other test files use
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mlmesh::clients::Tracking;
use mlmesh::{Config, Node, NodeHandle};
use mlmesh_nodes::tracker::Tracker;
use serde_json::Value;

use common::*;

const MLMESH: &str = env!("CARGO_BIN_EXE_mlmesh");

/// The longest any one command may run in these tests.
const COMMAND: Duration = Duration::from_secs(20);

/// What a finished command left.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

/// How the command finds the mesh: the seed `seed`, mDNS off, quick heartbeats.
fn env_for(mesh: &str, seed: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MLMESH_NODE__MESH", mesh.to_owned()),
        ("MLMESH_DISCOVERY__MDNS", "false".into()),
        ("MLMESH_DISCOVERY__SEEDS", seed.to_owned()),
        ("MLMESH_DISCOVERY__SEED_INTERVAL_MS", "200".into()),
        ("MLMESH_LIVENESS__HEARTBEAT_MS", "200".into()),
    ]
}

fn command(args: &[&str], env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(MLMESH);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a command to its end (bounded by [`COMMAND`]), with `stdin` as its input.
fn run_blocking(mut cmd: Command, stdin: Option<String>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("mlmesh starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let stdout = reader(child.stdout.take().unwrap());
    let stderr = reader(child.stderr.take().unwrap());
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > COMMAND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not end within {COMMAND:?}; stderr: {}",
                stderr.recv().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        code,
        stdout: stdout.recv_timeout(COMMAND).unwrap(),
        stderr: stderr.recv_timeout(COMMAND).unwrap(),
    };
    assert!(
        !out.stderr.contains("panicked"),
        "{cmd:?} panicked: {}",
        out.stderr
    );
    out
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// Runs `mlmesh ARGS` off the async runtime, so that in-process nodes keep serving it.
async fn mlmesh(args: &[&str], env: &[(&'static str, String)], stdin: Option<&str>) -> Output {
    let cmd = command(args, env);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || run_blocking(cmd, stdin))
        .await
        .unwrap()
}

/// A command that keeps running (`sub`, `doctor`): its stdout lines as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(args: &[&str], env: &[(&'static str, String)]) -> Running {
        let mut cmd = command(args, env);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("mlmesh starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, waiting at most `timeout` (off the async runtime).
    async fn line(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return Some(line),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if Instant::now() >= deadline => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
            }
        }
    }

    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits (bounded) for the exit status.
    async fn exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < COMMAND {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("mlmesh did not exit within {COMMAND:?}");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracker node in this process, with its store in a temporary directory.
async fn tracker(name: &str, config: Config) -> (NodeHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(&store_section(dir.path())).unwrap();
    let mut config = config;
    config.node.name = name.into();
    let node = t.serve(Node::builder(config)).spawn().await.unwrap();
    t.watch(&node);
    (node, dir)
}

/// A plain node serving `demo.echo` (its payload back) and `demo.slow` (after 2 s).
async fn echo_node(mesh: &str) -> NodeHandle {
    Node::builder(local("echo", mesh))
        .handle_raw("demo.echo", |data: Bytes, _ctx| async move { Ok(data) })
        .handle_raw("demo.slow", |data: Bytes, _ctx| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(data)
        })
        .spawn()
        .await
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_usage_errors_and_config_print() {
    let none: &[(&str, String)] = &[];
    let top = mlmesh(&["--help"], none, None).await;
    assert_eq!(top.code, Some(0));
    assert!(top.stdout.contains("101 NO_RESPONDERS"), "{}", top.stdout);
    for sub in [
        "nodes", "describe", "sub", "pub", "call", "hz", "doctor", "run",
    ] {
        let help = mlmesh(&[sub, "--help"], none, None).await;
        assert_eq!(help.code, Some(0), "{sub}");
        assert!(
            help.stdout.contains("Example"),
            "{sub} --help has no example"
        );
        if ["sub", "pub", "call"].contains(&sub) {
            assert!(
                help.stdout.contains("{\"$bytes\": \"00ff\"}"),
                "{sub}: {}",
                help.stdout
            );
        }
    }
    let printed = mlmesh(&["config", "print"], none, None).await;
    assert_eq!(printed.code, Some(0));
    assert!(printed.stdout.contains("[store]") && printed.stdout.contains("heartbeat_ms = 1000"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.toml");
    std::fs::write(&file, &printed.stdout).unwrap();
    let (config, _) =
        Config::load_with::<mlmesh_nodes::store::StoreSection>(Some(&file), "store").unwrap();
    assert_eq!(config.limits, Config::default().limits);

    // Command-line errors: one line naming what is wrong, status 64.
    let bad = mlmesh(&["nodes", "--wait", "1500"], none, None).await;
    assert_eq!(bad.code, Some(64));
    assert!(bad.stderr.contains("needs a unit"), "{}", bad.stderr);
    assert_eq!(mlmesh(&["frobnicate"], none, None).await.code, Some(64));
    assert_eq!(mlmesh(&[], none, None).await.code, Some(64));
    // A bad config: status 78, naming the file.
    let missing = mlmesh(&["nodes", "--config", "/nonexistent/mesh.toml"], none, None).await;
    assert_eq!(missing.code, Some(78));
    assert!(
        missing.stderr.contains("/nonexistent/mesh.toml"),
        "{}",
        missing.stderr
    );
    // Input errors are INVALID_ARGUMENT (3) before anything is sent.
    let topic = mlmesh(&["pub", "Bad.Topic", "{}"], none, None).await;
    assert_eq!(topic.code, Some(3));
    assert!(topic.stderr.contains("Bad.Topic"), "{}", topic.stderr);
    let json = mlmesh(&["call", "demo.echo", "{\"a\": }"], none, None).await;
    assert_eq!(json.code, Some(3));
    assert!(
        json.stderr
            .contains("expected a JSON value at line 1 column 7"),
        "{}",
        json.stderr
    );
    let ping = mlmesh(&["call", "sys.ping"], none, None).await;
    assert_eq!(ping.code, Some(3));
    assert!(ping.stderr.contains("--to NODE"), "{}", ping.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_describe_list_live_nodes_only() {
    init_tracing();
    let mesh = unique_mesh();
    let (seed, _dir) = tracker("tracker1", local("tracker1", &mesh)).await;
    let env = env_for(&mesh, &seed.endpoints().rpc);
    // A second tracker as a process of its own (through `mlmesh run`), killed for real.
    let dir = tempfile::tempdir().unwrap();
    let mut proc_env = env.clone();
    proc_env.push(("MLMESH_NODE__NAME", "doomed".into()));
    proc_env.push(("MLMESH_STORE__DATA_DIR", dir.path().display().to_string()));
    let mut doomed = start_run("tracker", &proc_env);
    wait_alive(&seed, doomed.id).await;

    let listed = mlmesh(&["nodes", "--json"], &env, None).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let nodes = listed.json();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["doomed", "tracker1"], "{}", listed.stdout);
    let t1 = &nodes[1];
    assert_eq!(t1["id"], seed.id().to_string());
    assert_eq!(t1["roles"], serde_json::json!(["tracker"]));
    assert_eq!(t1["rpc"], seed.endpoints().rpc);
    assert_eq!(t1["state"], "alive");
    assert!(t1["serves"]
        .as_array()
        .unwrap()
        .contains(&"tracking.run.get".into()));

    let table = mlmesh(&["nodes"], &env, None).await;
    let lines = table.lines();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAST SEEN"),
        "{}",
        table.stdout
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("tracker1") && l.contains("alive") && l.contains("ago")));

    // kill -9, and list at once: the seed may still hold it, the listing must not.
    doomed.kill9();
    let after = mlmesh(&["nodes", "--json"], &env, None).await;
    let names: Vec<String> = after
        .json()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["tracker1"],
        "a dead node was listed: {}",
        after.stdout
    );

    // describe: by name, by id, by id prefix (hyphens optional).
    let id = seed.id().to_string();
    for spec in [
        "tracker1",
        id.as_str(),
        &id[..8],
        &id.replace('-', "")[..12],
    ] {
        let d = mlmesh(&["describe", spec, "--json"], &env, None).await;
        assert_eq!(d.code, Some(0), "{spec}: {}", d.stderr);
        let d = &d.json()[0];
        assert_eq!(d["id"], id);
        assert_eq!(d["protocol"], 1);
        assert!(d["serves"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["topic"] == "tracking.run.start"));
    }
    let human = mlmesh(&["describe", "tracker1"], &env, None).await;
    assert!(human.stdout.contains("tracking.run.log") && human.stdout.contains("protocol 1"));
    let unknown = mlmesh(&["describe", "nosuch", "--wait", "500ms"], &env, None).await;
    assert_eq!(unknown.code, Some(101));
    assert!(
        unknown.stderr.contains("nosuch") && unknown.stderr.contains("tracker1"),
        "{}",
        unknown.stderr
    );
    seed.shutdown().await;
}

/// `mlmesh run KIND` as a process, once its ready line is printed.
fn start_run(kind: &str, env: &[(&'static str, String)]) -> NodeProc {
    let mut cmd = command(&["run", kind], env);
    cmd.stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("mlmesh run {kind} printed no ready line");
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["store"].as_str().is_some(), "{line}");
    let field = |k: &str| v[k].as_str().unwrap().to_owned();
    NodeProc {
        id: field("id").parse().unwrap(),
        rpc: field("rpc"),
        publish: field("pub"),
        child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_a_standard_node_that_calls_reach() {
    let mesh = unique_mesh();
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_for(&mesh, "tcp://127.0.0.1:9"); // seeds are replaced below
    env.retain(|(k, _)| *k != "MLMESH_DISCOVERY__SEEDS");
    env.push(("MLMESH_STORE__DATA_DIR", dir.path().display().to_string()));
    let mut registry = start_run("registry", &env);
    let env = env_for(&mesh, &registry.rpc);
    let created = mlmesh(
        &["call", "registry.model.create", r#"{"name":"fraud"}"#],
        &env,
        None,
    )
    .await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    assert_eq!(created.json()[0]["name"], "fraud");
    let again = mlmesh(
        &["call", "registry.model.create", r#"{"name":"fraud"}"#],
        &env,
        None,
    )
    .await;
    assert_eq!(again.code, Some(6), "ALREADY_EXISTS: {}", again.stderr);
    assert!(
        again.stderr.starts_with("mlmesh: ALREADY_EXISTS"),
        "{}",
        again.stderr
    );
    assert_eq!(registry.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_statuses_stdin_lines_and_exact_payloads() {
    init_tracing();
    let mesh = unique_mesh();
    let echo = echo_node(&mesh).await;
    let env = env_for(&mesh, &echo.endpoints().rpc);

    // Every kind of value crosses the wire and comes back exactly as written.
    let values = [
        r#"{"int":18446744073709551615,"neg":-9223372036854775808,"f":0.1,"one":1.0,"negzero":-0.0}"#,
        r#"{"nan":{"$float":"NaN"},"inf":{"$float":"-Infinity"},"bits":{"$float":"0x7ff0000000000001"}}"#,
        r#"{"f32":{"$float32":1.5},"bin":{"$bytes":"00ff10"},"ext":{"$ext":[-1,"00000001"]}}"#,
        r#"{"$map":[[1,"int key"],[{"$bytes":"01"},null]]}"#,
        r#"["text \"quoted\" é ✓",[],{},true,null,{"z":1,"a":2}]"#,
    ];
    let input = values.join("\n\n") + "\n";
    let out = mlmesh(&["call", "demo.echo"], &env, Some(&input)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.lines(), values);

    // A bad line stops the calls: the replies before it are printed, in order.
    let input = "{\"n\":1}\n{\"n\":2}\n{\"n\": }\n{\"n\":4}\n";
    let out = mlmesh(&["call", "demo.echo"], &env, Some(input)).await;
    assert_eq!(out.code, Some(3));
    assert_eq!(out.lines(), [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(
        out.stderr.trim(),
        "mlmesh: line 3: expected a JSON value at column 7"
    );
    let out = mlmesh(&["call", "demo.echo", "--keep-going"], &env, Some(input)).await;
    assert_eq!(out.code, Some(3));
    let lines = out.lines();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[2].starts_with(r#"{"error":{"code":"INVALID_ARGUMENT""#),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], r#"{"n":4}"#);

    // Exit statuses are the status codes.
    let out = mlmesh(
        &["call", "demo.slow", "{}", "--deadline", "300ms"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("DEADLINE_EXCEEDED"), "{}", out.stderr);
    let out = mlmesh(
        &["call", "nobody.serves.this", "{}", "--wait", "300ms"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(101), "{}", out.stderr);
    assert!(out.stderr.contains("NO_RESPONDERS"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = mlmesh(&["call", "sys.ping", "--to", "echo"], &env, None).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.json()[0]["time"].as_u64().unwrap() > 0);
    let out = mlmesh(
        &[
            "call",
            "demo.echo",
            "--to",
            "nosuch",
            "{}",
            "--wait",
            "300ms",
        ],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(101));
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_scoped_calls_go_to_the_tracker_holding_the_run() {
    init_tracing();
    let mesh = unique_mesh();
    let (a, _da) = tracker("tracker-a", local("a", &mesh)).await;
    let (b, _db) = tracker("tracker-b", seeded("b", &mesh, &a)).await;
    let owner = client_of(&a, &mesh).await;
    wait_alive(&owner, b.id()).await;
    // A run on b, owned by a node that stays (a run owned by the command would be
    // CRASHED as soon as the command leaves the mesh).
    let tracking = Tracking::new(&owner);
    let run = loop {
        let r = tracking.start_run("exp", Some("cli")).await.unwrap();
        let info = r.info().clone();
        std::mem::forget(r);
        if info.tracker == b.id() {
            break info;
        }
    };
    let env = env_for(&mesh, &a.endpoints().rpc);
    let get = format!(r#"{{"run":"{}"}}"#, run.id);
    let input = format!("{get}\n{get}\n{get}\n");
    let out = mlmesh(&["call", "tracking.run.get"], &env, Some(&input)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for reply in out.json() {
        assert_eq!(reply["info"]["id"], run.id.to_string());
        assert_eq!(reply["info"]["status"], "RUNNING");
        assert_eq!(
            reply["info"]["tracker"]["$bytes"],
            b.id().0.simple().to_string()
        );
    }
    // --to names the node: a does not hold the run.
    let out = mlmesh(
        &["call", "tracking.run.get", &get, "--to", "tracker-a"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    // A run nobody holds.
    let out = mlmesh(
        &[
            "call",
            "tracking.run.get",
            r#"{"run":"0190f3c27c1a70008000000000000001"}"#,
        ],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(5));
    assert!(
        out.stderr.contains("no tracker in mesh") && out.stderr.contains("field `run`"),
        "{}",
        out.stderr
    );
    // An invalid argument names the field.
    let out = mlmesh(
        &["call", "tracking.run.get", r#"{"run":"nope"}"#],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(3));
    assert!(out.stderr.contains("(field `run`)"), "{}", out.stderr);
    // --all: one line per tracker.
    let out = mlmesh(&["call", "tracking.run.search", "{}", "--all"], &env, None).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let acks = out.json();
    let names: Vec<&str> = acks.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tracker-a", "tracker-b"]);
    let runs: usize = acks
        .iter()
        .map(|a| a["ok"]["runs"].as_array().unwrap().len())
        .sum();
    assert!(runs >= 1);
    owner.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_reaches_subscribers_exactly_and_flushes_before_exit() {
    init_tracing();
    let mesh = unique_mesh();
    let seed = Node::builder(local("listener", &mesh))
        .spawn()
        .await
        .unwrap();
    let mut sub = seed.subscribe("demo.metrics").unwrap();
    let env = env_for(&mesh, &seed.endpoints().rpc);
    let lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"i":{i},"v":{}.5,"nan":{{"$float":"NaN"}}}}"#, i * 2))
        .collect();
    let input = lines.join("\n") + "\n";
    let out = mlmesh(&["pub", "demo.metrics"], &env, Some(&input)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (i, line) in lines.iter().enumerate() {
        let ev = next_event(&mut sub, "demo.metrics").await;
        assert_eq!(ev.missed, 0);
        let expected = mlmesh_nodes::cli::json::json_to_msgpack(line).unwrap();
        assert_eq!(ev.envelope.data.as_ref(), expected.as_slice(), "event {i}");
    }
    // A bad line stops it, naming the line; the lines before it were published.
    let out = mlmesh(&["pub", "demo.metrics"], &env, Some("{\"i\":0}\n[1,\n")).await;
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr.trim(),
        "mlmesh: line 2: the text ended where a JSON value was expected at column 3"
    );
    let ev = next_event(&mut sub, "demo.metrics").await;
    assert_eq!(ev.decode::<Value>().unwrap(), serde_json::json!({"i": 0}));
    // One payload on the command line.
    let out = mlmesh(
        &["pub", "demo.metrics", r#"{"one":{"$bytes":"ff"}}"#],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ev = next_event(&mut sub, "demo.metrics").await;
    assert_eq!(
        ev.envelope.data.as_ref(),
        [0x81, 0xa3, b'o', b'n', b'e', 0xc4, 0x01, 0xff]
    );
    seed.shutdown().await;
}

/// Publishes `probe` every 50 ms until the command prints a line, which it returns.
async fn until_printed(publisher: &NodeHandle, cli: &Running, probe: &str) -> String {
    within(&format!("{probe} to be printed"), WAIT, async {
        loop {
            publisher.publish(probe, &()).await.unwrap();
            if let Some(line) = cli.line(Duration::from_millis(50)).await {
                return line;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_prints_json_lines_and_counts_gaps() {
    init_tracing();
    let mesh = unique_mesh();
    // A publisher with a queue of one event: a burst drops most of it, as seq gaps.
    let mut config = local("bursty", &mesh);
    config.limits.publish_queue = 1;
    let bursty = Node::builder(config).spawn().await.unwrap();
    let env = env_for(&mesh, &bursty.endpoints().rpc);
    let mut cli = Running::start(&["sub", "demo.**", "other.*"], &env);
    let first: Value =
        serde_json::from_str(&until_printed(&bursty, &cli, "demo.probe").await).unwrap();
    assert_eq!(first["type"], "demo.probe");
    assert_eq!(first["kind"], "event");
    assert_eq!(first["v"], 1);
    assert_eq!(first["source"], bursty.id().to_string());
    assert_eq!(first["source_name"], "bursty");
    assert!(first["seq"].as_u64().unwrap() >= 1 && first["time"].as_u64().unwrap() > 0);
    assert_eq!(first["data"], serde_json::json!(null)); // `()` is nil
                                                        // Drain the other probes.
    while cli.line(Duration::from_millis(200)).await.is_some() {}

    for i in 0..3000u32 {
        bursty.publish("demo.burst", &i).await.unwrap();
    }
    let mut end = None;
    let mut burst = Vec::new();
    within("the end marker", WAIT, async {
        while end.is_none() {
            bursty.publish("other.end", &"end").await.unwrap();
            while let Some(line) = cli.line(Duration::from_millis(50)).await {
                let v: Value = serde_json::from_str(&line).unwrap();
                match v["type"].as_str().unwrap() {
                    "demo.burst" => burst.push(v),
                    "other.end" => end = Some(v),
                    _ => {}
                }
            }
        }
    })
    .await;
    // Each event printed once (two patterns, no duplicates); printed + missed accounts
    // for every seq between the first and the last printed.
    assert!(!burst.is_empty(), "no demo.burst event arrived");
    let seqs: Vec<u64> = burst.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    let missed: u64 = burst
        .iter()
        .skip(1)
        .map(|v| v["missed"].as_u64().unwrap())
        .sum();
    let (lo, hi) = (seqs[0], *seqs.last().unwrap());
    assert_eq!(seqs.len() as u64 + missed, hi - lo + 1);
    for v in &burst {
        assert_eq!(v["data"].as_u64().unwrap() + 1, v["seq"].as_u64().unwrap());
    }
    let dropped = bursty.stats().events_dropped;
    assert!(
        missed > 0,
        "a queue of one dropped {dropped} of the burst, yet no gap was counted"
    );
    // SIGINT ends it gracefully, with status 0; gaps were reported on stderr.
    cli.signal("-INT");
    assert_eq!(cli.exit().await, Some(0));
    assert!(cli.stderr().contains("gap: "), "{}", cli.stderr());
    assert!(
        cli.stderr().contains("of demo.burst from bursty"),
        "{}",
        cli.stderr()
    );
    bursty.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_count_timeout_and_a_pipe_into_head() {
    init_tracing();
    let mesh = unique_mesh();
    let ticker = Node::builder(local("ticker", &mesh)).spawn().await.unwrap();
    let env = env_for(&mesh, &ticker.endpoints().rpc);
    let publishing = {
        let ticker = ticker.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let _ = ticker.publish("demo.tick", &i).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // `| head -n 3` ends the pipeline cleanly: status 0 (pipefail), no broken-pipe panic.
    let script = format!("set -o pipefail; '{MLMESH}' sub 'demo.*' | head -n 3");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || run_blocking(cmd, None))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.lines().len(), 3);
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let out = mlmesh(&["sub", "demo.tick", "--count", "2", "--human"], &env, None).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains(" demo.tick #") && lines[0].contains(" ticker "),
        "{}",
        lines[0]
    );

    // --count not reached by --timeout: DEADLINE_EXCEEDED.
    let out = mlmesh(
        &["sub", "demo.none", "--count", "1", "--timeout", "500ms"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(4));
    assert!(
        out.stderr
            .contains("--count 1: 0 event(s) arrived within 500ms"),
        "{}",
        out.stderr
    );
    // hz: rate and gaps per topic, once a second.
    let out = mlmesh(
        &["hz", "demo.*", "--json", "--timeout", "2500ms"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ticks: Vec<Value> = out
        .json()
        .into_iter()
        .filter(|v| v["type"] == "demo.tick")
        .collect();
    assert!(!ticks.is_empty(), "{}", out.stdout);
    let last = ticks.last().unwrap();
    assert!(last["rate"].as_f64().unwrap() > 5.0, "{last}");
    assert_eq!(last["gaps"], 0);
    assert_eq!(last["sources"], 1);
    publishing.abort();
    ticker.shutdown().await;
}

/// A ROUTER that answers every request with an envelope of protocol version 2.
async fn version_two_node() -> String {
    use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap();
    tokio::spawn(async move {
        while let Ok(msg) = router.recv().await {
            let mut frames = msg.into_vec();
            frames.pop();
            // {"v": 2}: a v2 envelope may have another shape; v is read first.
            frames.push(Bytes::from_static(&[0x81, 0xa1, b'v', 0x02]));
            let mut reply = ZmqMessage::from(frames.remove(0));
            for f in frames {
                reply.push_back(f);
            }
            if router.send(reply).await.is_err() {
                return;
            }
        }
    });
    endpoint.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_seeds_versions_and_ports() {
    init_tracing();
    let mesh = unique_mesh();
    let seed = Node::builder(local("seed", &mesh)).spawn().await.unwrap();
    let other = Node::builder(local("elsewhere", "another-mesh"))
        .spawn()
        .await
        .unwrap();
    let v2 = version_two_node().await;
    let closed = format!("tcp://127.0.0.1:{}", free_port());
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut env = env_for(&mesh, &seed.endpoints().rpc);
    env.push((
        "MLMESH_NETWORK__RPC_PORT",
        held.local_addr().unwrap().port().to_string(),
    ));
    let args = [
        "doctor",
        "--json",
        "--wait",
        "1s",
        "--seed",
        &closed,
        "--seed",
        &other.endpoints().rpc,
        "--seed",
        &v2,
    ];
    let out = mlmesh(&args, &env, None).await;
    assert_eq!(out.code, Some(69), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("doctor found 4 problem(s)"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let findings = out.json();
    let failed = |needle: &str| {
        findings
            .iter()
            .find(|f| f["status"] == "fail" && f["message"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no failed check about {needle:?}: {}", out.stdout))
    };
    let unreachable = failed(&format!("seed at {closed} is unreachable"));
    assert!(unreachable["fix"].as_str().unwrap().contains("--seed"));
    let meshed = failed("of mesh \"another-mesh\"");
    assert!(meshed["fix"]
        .as_str()
        .unwrap()
        .contains("MLMESH_NODE__MESH=another-mesh"));
    let version = failed("another protocol version: it answers in protocol 2");
    assert!(version["fix"].as_str().unwrap().contains("upgrade"));
    let port = failed("is in use by another process");
    assert!(port["fix"].as_str().unwrap().contains("ss -ltnp"));
    assert!(findings
        .iter()
        .any(|f| f["check"] == "seeds" && f["status"] == "ok"));
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "clocks" && f["status"] == "ok"),
        "{}",
        out.stdout
    );
    drop(held);
    other.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_sees_a_node_whose_heartbeats_stop() {
    init_tracing();
    let mesh = unique_mesh();
    let seed = Node::builder(local("seed", &mesh)).spawn().await.unwrap();
    let env = env_for(&mesh, &seed.endpoints().rpc);
    let dir = tempfile::tempdir().unwrap();
    let mut proc_env = env.clone();
    proc_env.push(("MLMESH_NODE__NAME", "frozen".into()));
    proc_env.push(("MLMESH_STORE__DATA_DIR", dir.path().display().to_string()));
    let mut frozen = start_run("tracker", &proc_env);
    wait_alive(&seed, frozen.id).await;
    let mut doctor = Running::start(&["doctor", "--wait", "2500ms"], &env);
    // Once the doctor is in the mesh (and so has met `frozen` through the seed), stop it.
    wait_until("the doctor to join", WAIT, || {
        seed.peers().iter().any(|p| p.roles == ["cli"])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = frozen.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let code = doctor.exit().await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let mut report = String::new();
    while let Some(line) = doctor.line(Duration::from_millis(100)).await {
        report.push_str(&line);
        report.push('\n');
    }
    assert_eq!(code, Some(69), "{report}\n{}", doctor.stderr());
    assert!(
        report.contains("frozen (") && report.contains("stopped sending heartbeats"),
        "{report}"
    );
    assert!(
        report.contains("fix: check that its process runs"),
        "{report}"
    );
    frozen.kill9();
    seed.shutdown().await;
}

/// Runs `script` with `sh` in a new network namespace with only loopback (mDNS must
/// never reach the machine's own network); `None` if namespaces are not available.
async fn in_netns(script: &str) -> Option<Output> {
    let usable = Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("skipped: `unshare -n` is not available (needs root)");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", &format!("ip link set lo up && {script}")])
        .env("MLMESH", MLMESH)
        .env("MLMESH_TRACKER", env!("CARGO_BIN_EXE_mlmesh-tracker"));
    Some(
        tokio::task::spawn_blocking(move || run_blocking(cmd, None))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_finds_nodes_and_doctor_explains_an_empty_network() {
    let dir = tempfile::tempdir().unwrap();
    // Alone: nothing on mDNS, and the doctor says to use seeds.
    let Some(alone) = in_netns("exec \"$MLMESH\" doctor --wait 1500ms").await else {
        return;
    };
    assert_eq!(alone.code, Some(69), "{}\n{}", alone.stdout, alone.stderr);
    assert!(
        alone.stdout.contains("no mDNS records of other nodes"),
        "{}",
        alone.stdout
    );
    assert!(
        alone.stdout.contains("MLMESH_DISCOVERY__SEEDS"),
        "{}",
        alone.stdout
    );
    // With a tracker advertising over mDNS on loopback: listed, found by mDNS.
    let script = format!(
        "MLMESH_STORE__DATA_DIR='{}' MLMESH_NODE__NAME=mdns-tracker \"$MLMESH_TRACKER\" >/dev/null & \
         \"$MLMESH\" nodes --json --wait 5s; status=$?; kill $!; wait; exit $status",
        dir.path().display()
    );
    let found = in_netns(&script).await.unwrap();
    assert_eq!(found.code, Some(0), "{}", found.stderr);
    let nodes = found.json();
    assert_eq!(nodes.len(), 1, "{}", found.stdout);
    assert_eq!(nodes[0]["name"], "mdns-tracker");
    assert_eq!(nodes[0]["via"], "mdns");
}
