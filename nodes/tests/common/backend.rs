//! One behavioural suite, two backends: the built-in nodes, or the MLflow adapter in
//! front of a real MLflow server. [`Caps`] is the one place that says where the
//! standard lets them differ (SPEC.md section 17); the suite asks it, nowhere else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mlmesh::{Node, NodeHandle, NodeId};
use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};
use mlmesh_nodes::registry::Registry;
use mlmesh_nodes::tracker::Tracker;

use super::{client_with, local, seeded, store_section};

/// What serves `tracking/1` and `registry/1` in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `mlmesh-tracker` and `mlmesh-registry` over their SQLite stores.
    BuiltIn,
    /// `mlmesh-mlflow` over the MLflow server of this test binary.
    Mlflow,
}

/// The differences the standard allows a backend (SPEC.md section 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `Logged.duplicates` counts values equal to ones recorded by earlier
    /// instructions (an adapter counts those within the batch only).
    pub counts_earlier_duplicates: bool,
    /// Runs in `tracking.run.search` pages carry `min`, `max` and `count`.
    pub search_summaries: bool,
    /// A `tracking.run.log` batch that fails after it was sent leaves nothing written.
    pub atomic_batches: bool,
}

/// A serving node and what it needs kept alive.
#[derive(Debug)]
pub struct Served {
    pub node: NodeHandle,
    _dir: tempfile::TempDir,
}

impl Backend {
    pub fn caps(self) -> Caps {
        match self {
            Backend::BuiltIn => Caps {
                counts_earlier_duplicates: true,
                search_summaries: true,
                atomic_batches: true,
            },
            Backend::Mlflow => Caps {
                counts_earlier_duplicates: false,
                search_summaries: false,
                atomic_batches: false,
            },
        }
    }

    /// A node serving `tracking/1` in `mesh`, named `name`, watching for crashed runs.
    pub async fn tracker(self, name: &str, mesh: &str) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = match self {
            Backend::BuiltIn => {
                let t = Tracker::open(&store_section(dir.path())).expect("store opens");
                let node = t
                    .serve(Node::builder(local(name, mesh)))
                    .spawn()
                    .await
                    .expect("tracker starts");
                t.watch(&node);
                node
            }
            Backend::Mlflow => adapter(name, mesh, &dir).await,
        };
        Served { node, _dir: dir }
    }

    /// A plain node seeded by `server`, returned once it sees `server` alive. A client
    /// of the adapter waits for a reply as long as the adapter waits for MLflow
    /// (`timeout_ms`): the one MLflow server of a test binary serves every test at once
    /// with one worker, and under the suite a 1,000-metric `runs/log-batch` was measured
    /// to take 5.6 s, so the mesh's default 5 s deadline would fail calls that MLflow
    /// is still answering.
    pub async fn client(self, server: &NodeHandle, mesh: &str) -> NodeHandle {
        let mut config = seeded("client", mesh, server);
        if self == Backend::Mlflow {
            config.limits.default_deadline_ms = MlflowSection::default()
                .timeout_ms
                .try_into()
                .expect("MLflow's timeout fits a deadline");
        }
        client_with(server, config).await
    }

    /// A node serving `registry/1` in `mesh`, named `name`.
    pub async fn registry(self, name: &str, mesh: &str) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = match self {
            Backend::BuiltIn => {
                let r = Registry::open(&store_section(dir.path())).expect("store opens");
                r.serve(Node::builder(local(name, mesh)))
                    .spawn()
                    .await
                    .expect("registry starts")
            }
            Backend::Mlflow => adapter(name, mesh, &dir).await,
        };
        Served { node, _dir: dir }
    }
}

/// An adapter over this binary's MLflow server, in a namespace of its own: every test
/// sees an empty MLflow, as it sees an empty store with the built-in nodes.
async fn adapter(name: &str, mesh: &str, dir: &tempfile::TempDir) -> NodeHandle {
    let server = mlflow_server();
    let section = MlflowSection {
        url: server.url.clone(),
        data_dir: dir.path().to_path_buf(),
        namespace: unique_namespace(),
        ..MlflowSection::default()
    };
    let a = Mlflow::open(&section).expect("adapter opens");
    let node = a
        .serve(Node::builder(local(name, mesh)))
        .spawn()
        .await
        .expect("adapter starts");
    a.watch(&node);
    node
}

/// A namespace no other test uses: `t<12 hex>-`.
pub fn unique_namespace() -> String {
    format!("t{}-", &NodeId::new().0.simple().to_string()[20..])
}

/// The MLflow of the venv `.ci/mlflow-deps.sh` makes (or `$MLMESH_MLFLOW_VENV`).
pub fn mlflow_venv() -> PathBuf {
    std::env::var_os("MLMESH_MLFLOW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/mlflow-venv"
            ))
        })
}

/// An `mlflow server` on loopback for this test binary, started by the first test that
/// needs it. It is stopped when the binary exits (its watchdog shell sees its stdin
/// close) or when dropped.
#[derive(Debug)]
pub struct MlflowServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its files: `mlflow.db`, `artifacts/`, `server.log`.
    pub dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // The watchdog stops the server's process group when its stdin closes.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The shared server of this test binary; panics (failing the test) if MLflow is not
/// installed or does not come up.
pub fn mlflow_server() -> &'static MlflowServer {
    static SERVER: OnceLock<Result<MlflowServer, String>> = OnceLock::new();
    match SERVER.get_or_init(MlflowServer::start) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /health` answered 200.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

impl MlflowServer {
    /// Starts `mlflow server` (one worker, SQLite, telemetry and job execution off) and
    /// waits, at most 90 s, for `/health`.
    pub fn start() -> Result<MlflowServer, String> {
        let venv = mlflow_venv();
        let mlflow = venv.join("bin/mlflow");
        if !mlflow.exists() {
            // As the interop tests do for pyzmq: make the venv on first use, so that
            // `cargo test --workspace` works on a fresh machine (it needs PyPI once).
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
            let installed = Command::new("bash")
                .arg(format!("{root}/.ci/mlflow-deps.sh"))
                .current_dir(root)
                .env("MLMESH_MLFLOW_VENV", &venv)
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !installed || !mlflow.exists() {
                return Err(format!(
                    "MLflow is not installed: {} is missing and `.ci/mlflow-deps.sh` could not \
                     make it (it needs python3-venv and PyPI). Run it by hand to see why.",
                    mlflow.display()
                ));
            }
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("mlflow-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("artifacts")).map_err(|e| e.to_string())?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // A watchdog shell starts the server in a process group of its own; when this
        // process exits (however it exits), the shell's stdin closes and it stops that
        // group (`mlflow server` runs uvicorn as a child process).
        let script = r#"
setsid "$@" &
server=$!
read _ignored
kill -TERM "-$server" 2>/dev/null
sleep 2
kill -KILL "-$server" 2>/dev/null
rm -rf "$MLMESH_SERVER_DIR"
"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("mlflow-watchdog")
            .arg(&mlflow)
            .args(["server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}/mlflow.db", dir.display()))
            .arg("--default-artifact-root")
            .arg(dir.join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "true")
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("MLMESH_SERVER_DIR", &dir)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", mlflow.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let server = MlflowServer {
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.clone(),
            child,
            stdin: Some(stdin),
        };
        let start = Instant::now();
        while !healthy(port) {
            let log = || std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            if start.elapsed() > Duration::from_secs(90) {
                return Err(format!(
                    "mlflow server did not answer /health within 90 s; its log:\n{}",
                    log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}
