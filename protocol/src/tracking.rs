//! `tracking/1`: experiments, runs, params, metrics, tags and dataset inputs.
//!
//! The names and payloads of SPEC.md section 15. MLflow's tracking model is the floor:
//! what it records is recorded here, with its limits ([`limits`]), and a
//! `tracking.run.log` batch is atomic (all or nothing).
//!
//! | topic | kind | payload → reply |
//! |---|---|---|
//! | `tracking.experiment.create` | instruction | [`ExperimentCreate`] → [`Experiment`] (get or create by name) |
//! | `tracking.experiment.get` | instruction | [`ExperimentGet`] → [`Experiment`] |
//! | `tracking.run.start` | instruction | [`RunStart`] → [`RunInfo`] |
//! | `tracking.run.end` | instruction | [`RunEnd`] → [`RunInfo`] |
//! | `tracking.run.get` | instruction | [`RunGet`] → [`Run`] |
//! | `tracking.run.log` | instruction | [`LogBatch`] → [`Logged`] |
//! | `tracking.run.search` | instruction | [`RunSearch`] → [`RunPage`] |
//! | `tracking.metric.history` | instruction | [`MetricHistory`] → [`MetricPage`] |
//! | `tracking.experiment.created` | event | [`Experiment`] |
//! | `tracking.run.started` | event | [`RunInfo`] |
//! | `tracking.run.ended` | event | [`RunInfo`] (FINISHED, FAILED, KILLED or CRASHED) |
//! | `tracking.metrics.logged` | event | [`MetricsLogged`] |
//! | `tracking.params.logged` | event | [`ParamsLogged`] |
//! | `tracking.tags.set` | event | [`TagsSet`] |
//! | `tracking.inputs.logged` | event | [`InputsLogged`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ids::{ExperimentId, RunId};
use crate::NodeId;

pub mod limits;

/// The schema version of every `tracking.*` topic in this module.
pub const SCHEMA: u32 = 1;

/// Instruction: get or create an experiment by name.
pub const EXPERIMENT_CREATE: &str = "tracking.experiment.create";
/// Instruction: an experiment by id or name.
pub const EXPERIMENT_GET: &str = "tracking.experiment.get";
/// Instruction: start a run.
pub const RUN_START: &str = "tracking.run.start";
/// Instruction: end a run.
pub const RUN_END: &str = "tracking.run.end";
/// Instruction: a run with its params, tags, metric summaries and inputs.
pub const RUN_GET: &str = "tracking.run.get";
/// Instruction: log a batch of params, metrics, tags and inputs, atomically.
pub const RUN_LOG: &str = "tracking.run.log";
/// Instruction: search runs with a filter.
pub const RUN_SEARCH: &str = "tracking.run.search";
/// Instruction: the full history of one metric of a run.
pub const METRIC_HISTORY: &str = "tracking.metric.history";

/// Every instruction of `tracking/1`.
pub const INSTRUCTIONS: &[&str] = &[
    EXPERIMENT_CREATE,
    EXPERIMENT_GET,
    RUN_START,
    RUN_END,
    RUN_GET,
    RUN_LOG,
    RUN_SEARCH,
    METRIC_HISTORY,
];

/// Event: an experiment was created.
pub const EXPERIMENT_CREATED: &str = "tracking.experiment.created";
/// Event: a run started.
pub const RUN_STARTED: &str = "tracking.run.started";
/// Event: a run ended (or crashed).
pub const RUN_ENDED: &str = "tracking.run.ended";
/// Event: metrics were logged.
pub const METRICS_LOGGED: &str = "tracking.metrics.logged";
/// Event: params were logged.
pub const PARAMS_LOGGED: &str = "tracking.params.logged";
/// Event: tags were set.
pub const TAGS_SET: &str = "tracking.tags.set";
/// Event: dataset inputs were logged.
pub const INPUTS_LOGGED: &str = "tracking.inputs.logged";

/// Tags (`name → value`).
pub type Tags = BTreeMap<String, String>;

/// Payload of `tracking.experiment.create`: the experiment of that name, created if new.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentCreate {
    /// The experiment's name, unique on its tracker.
    pub name: String,
    /// Tags set when the experiment is created (ignored if it exists).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    /// Where its runs' artifacts go; the tracker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_location: Option<String>,
}

/// Payload of `tracking.experiment.get`: by id, or else by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentGet {
    /// The experiment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ExperimentId>,
    /// The experiment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Its id.
    pub id: ExperimentId,
    /// Its name.
    pub name: String,
    /// Where its runs' artifacts go.
    pub artifact_location: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Tags,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

/// The lifecycle of a run. A run starts RUNNING and ends once; CRASHED is set by the
/// tracker when the run's owner left the mesh without ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", try_from = "String")]
pub enum RunStatus {
    /// Started, not ended.
    Running,
    /// Ended normally.
    Finished,
    /// Ended with a failure.
    Failed,
    /// Stopped by someone.
    Killed,
    /// Its owner left the mesh while it was running.
    Crashed,
}

impl RunStatus {
    /// The status as it reads on the wire and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Finished => "FINISHED",
            Self::Failed => "FAILED",
            Self::Killed => "KILLED",
            Self::Crashed => "CRASHED",
        }
    }

    /// The status of its wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Finished,
            Self::Failed,
            Self::Killed,
            Self::Crashed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

impl TryFrom<String> for RunStatus {
    type Error = String;

    /// Only the name: MessagePack decoders would otherwise take an integer for a variant's
    /// index (`status: 1` read as FINISHED).
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| {
            format!("`{s}` is not a run status (RUNNING, FINISHED, FAILED, KILLED, CRASHED)")
        })
    }
}

/// Payload of `tracking.run.start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    /// The experiment's name (created if new).
    pub experiment: String,
    /// The run's name; the tracker makes one up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags set at start (the reserved `mlmesh.` ones included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    /// The parent run, for nested runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunId>,
    /// Start time, Unix milliseconds; the tracker's clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
}

/// A run's identity and lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run's id.
    pub id: RunId,
    /// Its experiment's id.
    pub experiment_id: ExperimentId,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: RunStatus,
    /// Start time, Unix milliseconds.
    pub start_ms: u64,
    /// End time, Unix milliseconds, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    /// The node that started it; when that node leaves the mesh, a RUNNING run becomes CRASHED.
    pub owner: NodeId,
    /// The tracker node that holds it (requests naming the run go there).
    pub tracker: NodeId,
    /// The parent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunId>,
    /// Where the run's artifacts go.
    pub artifact_uri: String,
}

/// Payload of `tracking.run.end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    /// The run.
    pub run: RunId,
    /// FINISHED, FAILED or KILLED.
    pub status: RunStatus,
    /// End time, Unix milliseconds; the tracker's clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

/// Payload of `tracking.run.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGet {
    /// The run.
    pub run: RunId,
}

/// One metric value. `value` may be NaN or infinite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The metric's key.
    pub key: String,
    /// Its value.
    pub value: f64,
    /// When it was measured, Unix milliseconds.
    pub timestamp: u64,
    /// The training step.
    #[serde(default)]
    pub step: i64,
}

/// A param: written once per run and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A tag: the last write wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A dataset a run consumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatasetInput {
    /// The dataset's name.
    pub name: String,
    /// A digest of its content.
    pub digest: String,
    /// Where it comes from (a URI or a description).
    pub source: String,
    /// How the run used it: `train`, `eval`, `test`, ...
    #[serde(default)]
    pub context: String,
}

/// Payload of `tracking.run.log`: applied entirely or not at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The run.
    pub run: RunId,
    /// Params (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Metrics (at most 1000).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    /// Tags (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Dataset inputs (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<DatasetInput>,
}

/// Reply to `tracking.run.log`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    /// Metric values written.
    pub metrics: u32,
    /// Metric values dropped as exact duplicates of recorded ones.
    #[serde(default)]
    pub duplicates: u32,
}

/// What a run's metric key stands at. "Latest" is the value with the highest step, and
/// among those the latest timestamp (and among those the largest value, so that it is
/// well defined); NaN values take part in "latest" but not in `min`/`max`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// The latest value.
    pub last: f64,
    /// Its step.
    pub step: i64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The smallest value, NaN aside (absent when every value is NaN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest value, NaN aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// How many values are recorded.
    pub count: u64,
}

/// A run with its data: the reply to `tracking.run.get`, an item of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Identity and lifecycle.
    pub info: RunInfo,
    /// Params.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// One summary per metric key.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricSummary>,
    /// Dataset inputs.
    #[serde(default)]
    pub inputs: Vec<DatasetInput>,
}

/// Payload of `tracking.run.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSearch {
    /// Experiment names to search; all of the tracker's when empty.
    #[serde(default)]
    pub experiments: Vec<String>,
    /// The filter, in the language of MLflow's `search_runs`; everything when empty.
    #[serde(default)]
    pub filter: String,
    /// Orderings such as `metrics.rmse ASC`; start time, newest first, when empty.
    #[serde(default)]
    pub order_by: Vec<String>,
    /// At most this many runs in the page (1..=50000).
    #[serde(default = "default_max_results")]
    pub max_results: u32,
    /// The `next_page_token` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}

impl Default for RunSearch {
    fn default() -> Self {
        Self {
            experiments: Vec::new(),
            filter: String::new(),
            order_by: Vec::new(),
            max_results: default_max_results(),
            page_token: None,
        }
    }
}

fn default_max_results() -> u32 {
    1000
}

/// Reply to `tracking.run.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs of this page.
    pub runs: Vec<Run>,
    /// Pass it back for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Payload of `tracking.metric.history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricHistory {
    /// The run.
    pub run: RunId,
    /// The metric's key.
    pub key: String,
    /// At most this many values in the page (1..=25000).
    #[serde(default = "default_history_page")]
    pub max_results: u32,
    /// The `next_page_token` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}

fn default_history_page() -> u32 {
    25_000
}

/// Reply to `tracking.metric.history`: values by step, then timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPage {
    /// The values of this page.
    pub metrics: Vec<Metric>,
    /// Pass it back for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Event `tracking.metrics.logged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLogged {
    /// The run.
    pub run: RunId,
    /// Its experiment.
    pub experiment_id: ExperimentId,
    /// The values written (duplicates left out).
    pub metrics: Vec<Metric>,
}

/// Event `tracking.params.logged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsLogged {
    /// The run.
    pub run: RunId,
    /// The params of the batch.
    pub params: Vec<Param>,
}

/// Event `tracking.tags.set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagsSet {
    /// The run.
    pub run: RunId,
    /// The tags of the batch.
    pub tags: Vec<Tag>,
}

/// Event `tracking.inputs.logged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputsLogged {
    /// The run.
    pub run: RunId,
    /// The inputs of the batch.
    pub inputs: Vec<DatasetInput>,
}
