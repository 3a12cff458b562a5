//! The typed client of `tracking/1`.
//!
//! ```no_run
//! # async fn run(node: mlmesh::NodeHandle) -> Result<(), mlmesh::Status> {
//! use mlmesh::clients::Tracking;
//! use mlmesh::protocol::tracking::RunStatus;
//!
//! let tracking = Tracking::new(&node);
//! let run = tracking.start_run("churn", Some("baseline")).await?;
//! run.log_param("lr", "0.01").ok();
//! for epoch in 0..10 {
//!     run.log_metric("loss", 1.0 / (epoch + 1) as f64, epoch).ok(); // never waits on the network
//! }
//! let report = run.end(RunStatus::Finished).await?;
//! assert!(report.unacknowledged.is_empty());
//! # Ok(()) }
//! ```
//!
//! A run lives on the tracker that started it ([`RunInfo::tracker`]); calls naming a
//! run go there. A client that does not know a run's tracker (the run was started
//! elsewhere, or its tracker restarted with a new node id) finds it by broadcasting
//! `tracking.run.get` and remembers the tracker that answers OK (SPEC 15.6).

use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use mlmesh_protocol::tracking::{
    self, Experiment, ExperimentCreate, ExperimentGet, LogBatch, Logged, MetricHistory, MetricPage,
    Run, RunEnd, RunGet, RunId, RunInfo, RunPage, RunSearch, RunStart, RunStatus,
};
use mlmesh_protocol::{Code, NodeId, Status};

use crate::node::{CallOptions, NodeHandle};
use crate::FastMap;

pub use super::logger::{EndReport, LogError, LoggerOptions, RunLogger, Unacknowledged};

/// Runs whose tracker a client remembers; past this, it forgets them all and finds
/// them again as needed.
const MAX_REMEMBERED: usize = 16_384;

/// A `tracking/1` client on a node.
#[derive(Debug, Clone)]
pub struct Tracking {
    node: NodeHandle,
    trackers: Arc<Mutex<FastMap<RunId, NodeId>>>,
}

impl Tracking {
    /// A client that calls through `node`.
    pub fn new(node: &NodeHandle) -> Self {
        Self {
            node: node.clone(),
            trackers: Arc::default(),
        }
    }

    /// The node it calls through.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The experiment named `name`, created if new (on whichever tracker answers).
    pub async fn experiment(&self, req: &ExperimentCreate) -> Result<Experiment, Status> {
        tracking::limits::check_experiment_create(req)?;
        self.node.request(tracking::EXPERIMENT_CREATE, req).await
    }

    /// An experiment by id or name.
    pub async fn get_experiment(&self, req: &ExperimentGet) -> Result<Experiment, Status> {
        self.node.request(tracking::EXPERIMENT_GET, req).await
    }

    /// Starts a run in `experiment` (created if new), with the system tags
    /// (`mlmesh.source.name`, `mlmesh.user`, `mlmesh.source.git.commit`) filled in, and a
    /// background logger with the default options.
    pub async fn start_run(
        &self,
        experiment: &str,
        name: Option<&str>,
    ) -> Result<RunLogger, Status> {
        let req = RunStart {
            experiment: experiment.to_owned(),
            name: name.map(str::to_owned),
            ..RunStart::default()
        };
        self.start(req, LoggerOptions::default()).await
    }

    /// Starts a run as `req` says, with a background logger configured by `options`.
    pub async fn start(
        &self,
        mut req: RunStart,
        options: LoggerOptions,
    ) -> Result<RunLogger, Status> {
        for (k, v) in system_tags() {
            req.tags.entry(k.to_owned()).or_insert(v);
        }
        tracking::limits::check_run_start(&req)?;
        let info: RunInfo = self.node.request(tracking::RUN_START, &req).await?;
        self.remember(info.id, info.tracker);
        Ok(RunLogger::spawn(self.clone(), info, options))
    }

    /// Ends a run (FINISHED, FAILED or KILLED).
    pub async fn end_run(&self, run: RunId, status: RunStatus) -> Result<RunInfo, Status> {
        let req = RunEnd {
            run,
            status,
            end_ms: None,
        };
        self.call_run(run, tracking::RUN_END, &req, CallOptions::default())
            .await
    }

    /// A run with its params, tags, metric summaries and inputs.
    pub async fn get_run(&self, run: RunId) -> Result<Run, Status> {
        self.call_run(
            run,
            tracking::RUN_GET,
            &RunGet { run },
            CallOptions::default(),
        )
        .await
    }

    /// Logs a batch at once and waits for its ack: all of it or none. (A [`RunLogger`]
    /// batches in the background instead.)
    pub async fn log(&self, batch: &LogBatch) -> Result<Logged, Status> {
        tracking::limits::check_log(batch)?;
        self.call_run(batch.run, tracking::RUN_LOG, batch, CallOptions::default())
            .await
    }

    /// [`Tracking::log`] with call options (a fixed request id, to repeat a batch).
    pub async fn log_with(&self, batch: &LogBatch, options: CallOptions) -> Result<Logged, Status> {
        self.call_run(batch.run, tracking::RUN_LOG, batch, options)
            .await
    }

    /// Every value of one metric of a run, a page at a time.
    pub async fn metric_history(&self, req: &MetricHistory) -> Result<MetricPage, Status> {
        self.call_run(
            req.run,
            tracking::METRIC_HISTORY,
            req,
            CallOptions::default(),
        )
        .await
    }

    /// Searches the runs of one tracker (all of them, in a mesh with one tracker).
    pub async fn search(&self, req: &RunSearch) -> Result<RunPage, Status> {
        self.node.request(tracking::RUN_SEARCH, req).await
    }

    /// Searches every tracker of the mesh and merges the first pages (each tracker's
    /// own order is kept; trackers are concatenated). Paging is per tracker: use
    /// [`Tracking::search`] with a target to page one of them.
    pub async fn search_all(&self, req: &RunSearch) -> Result<Vec<Run>, Status> {
        let acks = self
            .node
            .broadcast::<_, RunPage>(tracking::RUN_SEARCH, req, None)
            .await?;
        let mut runs = Vec::new();
        for ack in acks {
            let page = ack.result?;
            for run in &page.runs {
                self.remember(run.info.id, ack.node);
            }
            runs.extend(page.runs);
        }
        Ok(runs)
    }

    /// Sends an instruction about `run` to the tracker that holds it, finding that
    /// tracker first if need be, and once more if it has moved.
    pub(crate) async fn call_run<Req, Resp>(
        &self,
        run: RunId,
        topic: &str,
        req: &Req,
        options: CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let known = self.remembered(run);
        let tracker = match known {
            Some(t) => t,
            None => self.locate(run).await?,
        };
        let first = self
            .node
            .request_with(topic, req, options.clone().to(tracker))
            .await;
        match first {
            Err(s) if known.is_some() && moved(&s) => {
                self.forget(run);
                let again = self.locate(run).await?;
                self.node.request_with(topic, req, options.to(again)).await
            }
            other => other,
        }
    }

    /// The tracker that holds `run`: the one that answers `tracking.run.get` with OK.
    async fn locate(&self, run: RunId) -> Result<NodeId, Status> {
        let acks = self
            .node
            .broadcast::<_, Run>(tracking::RUN_GET, &RunGet { run }, None)
            .await?;
        let found = acks.iter().find(|a| a.result.is_ok()).map(|a| a.node);
        match found {
            Some(t) => {
                self.remember(run, t);
                Ok(t)
            }
            None => {
                // A tracker that could not answer may hold it: say so rather than NOT_FOUND.
                let unsure = acks
                    .into_iter()
                    .find_map(|a| a.result.err().filter(|s| s.code != Code::NotFound));
                Err(unsure.unwrap_or_else(|| {
                    Status::error(
                        Code::NotFound,
                        format!("no tracker in the mesh holds run {run}"),
                    )
                    .with_field("run")
                }))
            }
        }
    }

    fn remembered(&self, run: RunId) -> Option<NodeId> {
        self.trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&run)
            .copied()
    }

    fn remember(&self, run: RunId, tracker: NodeId) {
        let mut map = self
            .trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
        map.insert(run, tracker);
    }

    fn forget(&self, run: RunId) {
        self.trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&run);
    }
}

/// Whether a call to a run's remembered tracker failed because that tracker is gone or
/// no longer holds the run.
fn moved(s: &Status) -> bool {
    matches!(s.code, Code::NoResponders | Code::NotFound)
}

/// The system tags a client sets at run start (read once per process).
fn system_tags() -> Vec<(&'static str, String)> {
    static TAGS: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    TAGS.get_or_init(read_system_tags).clone()
}

fn read_system_tags() -> Vec<(&'static str, String)> {
    let mut tags = Vec::new();
    if let Some(program) = std::env::args().next() {
        let name = std::path::Path::new(&program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(program);
        tags.push(("mlmesh.source.name", name));
    }
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("USERNAME")) {
        tags.push(("mlmesh.user", user));
    }
    if let Some(commit) = git_commit() {
        tags.push(("mlmesh.source.git.commit", commit));
    }
    tags
}

/// The commit checked out in the working directory's repository, read from `.git`
/// (no `git` process).
fn git_commit() -> Option<String> {
    let cwd = std::env::current_dir().ok()?;
    let git = cwd
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|p| p.is_dir())?;
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let hash = match head.strip_prefix("ref: ") {
        None => head.to_owned(),
        Some(r) => match std::fs::read_to_string(git.join(r)) {
            Ok(h) => h.trim().to_owned(),
            Err(_) => std::fs::read_to_string(git.join("packed-refs"))
                .ok()?
                .lines()
                .find(|l| l.ends_with(r))?
                .split(' ')
                .next()?
                .to_owned(),
        },
    };
    (hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}
