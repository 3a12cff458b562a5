//! `tracking/1` over MLflow's experiments, runs and metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;

use mlmesh::protocol::tracking::{
    self, limits, DatasetInput, Experiment, ExperimentCreate, ExperimentGet, ExperimentId,
    InputsLogged, LogBatch, Logged, Metric, MetricHistory, MetricPage, MetricSummary,
    MetricsLogged, ParamsLogged, Run, RunEnd, RunGet, RunId, RunInfo, RunPage, RunSearch, RunStart,
    RunStatus, TagsSet,
};
use mlmesh::protocol::{NodeId, Status};
use mlmesh::{NodeBuilder, NodeHandle};

use super::ids::{self, RunRecord};
use super::wire::{self, Kv};
use super::{invalid, not_found, read, record, write, Change, Inner, Outcome};
use crate::serve::{now_ms, Meta};
use crate::store::internal;

type Result<T> = std::result::Result<T, Status>;

/// MLflow's `log-batch` limits (the same counts as `tracking/1`, and 1 MB of request).
const MAX_METRICS: usize = 1000;
const MAX_PARAMS: usize = 100;
const MAX_TAGS: usize = 100;
const MAX_ITEMS: usize = 1000;
/// Bytes of JSON per `log-batch` or `log-inputs` request, under MLflow's 1 MB.
const MAX_BYTES: usize = 900_000;
/// Page sizes.
const MAX_SEARCH_PAGE: u32 = 50_000;
const MAX_HISTORY_PAGE: u32 = 25_000;
/// Metric keys whose histories a `tracking.run.get` reads at once.
const HISTORIES_AT_ONCE: usize = 4;

/// The tags MLflow's own clients set, for the system tags of `tracking/1`: a run logged
/// through the mesh shows its source, user and commit in MLflow's UI as if MLflow's
/// client had logged it.
const MIRRORED: &[(&str, &str)] = &[
    ("mlmesh.source.name", "mlflow.source.name"),
    ("mlmesh.source.git.commit", "mlflow.source.git.commit"),
    ("mlmesh.user", "mlflow.user"),
    ("mlmesh.note", "mlflow.note.content"),
];
/// MLflow's tag naming a run's parent.
const PARENT_TAG: &str = "mlflow.parentRunId";
/// MLflow's input tag naming a dataset's context.
const CONTEXT_TAG: &str = "mlflow.data.context";

pub(crate) fn serve(b: NodeBuilder, inner: &Arc<Inner>) -> NodeBuilder {
    let b = write(b, tracking::EXPERIMENT_CREATE, inner, experiment_create);
    let b = write(b, tracking::RUN_START, inner, run_start);
    let b = write(b, tracking::RUN_END, inner, run_end);
    let b = write(b, tracking::RUN_LOG, inner, run_log);
    let b = read(b, tracking::EXPERIMENT_GET, inner, |i, req, _| {
        experiment_get(i, req)
    });
    let b = read(b, tracking::RUN_GET, inner, run_get);
    let b = read(b, tracking::METRIC_HISTORY, inner, |i, req, _| {
        metric_history(i, req)
    });
    read(b, tracking::RUN_SEARCH, inner, run_search)
}

// ---- Experiments ----------------------------------------------------------------------

async fn experiment_by_name(inner: &Inner, name: &str) -> Result<Option<wire::Experiment>> {
    let got: std::result::Result<wire::ExperimentReply, _> = inner
        .rest
        .get(
            "experiments/get-by-name",
            &[("experiment_name", inner.in_mlflow(name))],
        )
        .await;
    match got {
        Ok(r) => Ok(Some(r.experiment)),
        Err(f) if f.is_not_found() => Ok(None),
        Err(f) => Err(f.status_at("name")),
    }
}

async fn experiment_by_id(inner: &Inner, id: &str) -> Result<Option<wire::Experiment>> {
    let got: std::result::Result<wire::ExperimentReply, _> = inner
        .rest
        .get("experiments/get", &[("experiment_id", id.to_owned())])
        .await;
    match got {
        Ok(r) => Ok(Some(r.experiment)),
        Err(f) if f.is_not_found() || f.is("INVALID_PARAMETER_VALUE") => Ok(None),
        Err(f) => Err(f.status()),
    }
}

/// The experiment of that name, created (with `req`'s tags and location) if new.
async fn ensure_experiment(
    inner: &Inner,
    req: &ExperimentCreate,
) -> Result<(wire::Experiment, bool)> {
    if let Some(e) = experiment_by_name(inner, &req.name).await? {
        return Ok((e, false));
    }
    #[derive(Serialize)]
    struct Create {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        artifact_location: Option<String>,
        tags: Vec<Kv>,
    }
    #[derive(serde::Deserialize)]
    struct Created {
        experiment_id: String,
    }
    let body = Create {
        name: inner.in_mlflow(&req.name),
        artifact_location: req.artifact_location.clone(),
        tags: wire::kvs(&req.tags),
    };
    let created: std::result::Result<Created, _> =
        inner.rest.post("experiments/create", &body).await;
    match created {
        Ok(c) => {
            let e = experiment_by_id(inner, &c.experiment_id)
                .await?
                .ok_or_else(|| internal("the experiment MLflow created is not there"))?;
            Ok((e, true))
        }
        // Created meanwhile by someone else: get, not create.
        Err(f) if f.is("RESOURCE_ALREADY_EXISTS") => experiment_by_name(inner, &req.name)
            .await?
            .map(|e| (e, false))
            .ok_or_else(|| f.status_at("name")),
        Err(f) => Err(f.status_at("name")),
    }
}

async fn experiment_of(inner: &Inner, w: wire::Experiment) -> Result<Experiment> {
    Ok(Experiment {
        id: ids::experiment_uid(inner, &w.experiment_id).await?,
        name: inner.in_mesh(&w.name).unwrap_or(&w.name).to_owned(),
        artifact_location: w.artifact_location,
        tags: w.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        created_ms: w.creation_time.unwrap_or(0),
    })
}

async fn experiment_create(
    inner: Arc<Inner>,
    req: ExperimentCreate,
    _meta: Meta,
) -> Result<Outcome> {
    limits::check_experiment_create(&req)?;
    let (w, created) = ensure_experiment(&inner, &req).await?;
    let exp = experiment_of(&inner, w).await?;
    let out = Outcome::reply(&exp)?;
    if created {
        return out.event(tracking::EXPERIMENT_CREATED, &exp);
    }
    Ok(out)
}

async fn experiment_get(inner: Arc<Inner>, req: ExperimentGet) -> Result<Experiment> {
    let found = match (&req.id, &req.name) {
        (Some(id), _) => match ids::experiment_mlflow(&inner, id).await? {
            Some(m) => experiment_by_id(&inner, &m)
                .await?
                .filter(|e| inner.in_mesh(&e.name).is_some()),
            None => None,
        },
        (None, Some(name)) => experiment_by_name(&inner, name).await?,
        (None, None) => return Err(invalid("id", "name an experiment by `id` or `name`")),
    };
    match found {
        Some(w) => experiment_of(&inner, w).await,
        None => {
            let field = if req.id.is_some() { "id" } else { "name" };
            Err(not_found(field, "no such experiment in MLflow"))
        }
    }
}

/// The ids of every experiment in the namespace.
async fn all_experiments(inner: &Inner) -> Result<Vec<String>> {
    #[derive(Serialize)]
    struct Search {
        max_results: u32,
        view_type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        page_token: Option<String>,
    }
    let filter = (!inner.namespace.is_empty()).then(|| format!("name LIKE '{}%'", inner.namespace));
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page: wire::ExperimentPage = inner
            .rest
            .post(
                "experiments/search",
                &Search {
                    max_results: 1000,
                    view_type: "ACTIVE_ONLY",
                    filter: filter.clone(),
                    page_token: token.take(),
                },
            )
            .await?;
        out.extend(
            page.experiments
                .into_iter()
                .filter(|e| inner.in_mesh(&e.name).is_some())
                .map(|e| e.experiment_id),
        );
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

// ---- Runs -----------------------------------------------------------------------------

/// The run from MLflow; NOT_FOUND (`run`) if it has none of that id.
async fn fetch_run(inner: &Inner, run: &RunId) -> Result<wire::Run> {
    let got: std::result::Result<wire::RunReply, _> = inner
        .rest
        .get("runs/get", &[("run_id", run.as_str().to_owned())])
        .await;
    match got {
        Ok(r) => Ok(r.run),
        Err(f) if f.is_not_found() => Err(not_found("run", format!("MLflow has no run {run}"))),
        Err(f) => Err(f.status_at("run")),
    }
}

fn tag<'a>(w: &'a wire::Run, key: &str) -> Option<&'a str> {
    w.data
        .tags
        .iter()
        .find(|t| t.key == key)
        .map(|t| t.value.as_str())
}

/// The RunInfo of an MLflow run.
fn info_of(
    w: &wire::Run,
    experiment: ExperimentId,
    rec: Option<&RunRecord>,
    tracker: NodeId,
) -> Result<RunInfo> {
    let id = RunId::parse(&w.info.run_id).map_err(|e| {
        internal(format!(
            "MLflow run id {:?} is not 32 lowercase hex digits: {e}",
            w.info.run_id
        ))
    })?;
    let crashed = rec.is_some_and(|r| r.state == ids::CRASHED);
    let status = match w.info.status.as_str() {
        "FINISHED" => RunStatus::Finished,
        "FAILED" if crashed => RunStatus::Crashed,
        "FAILED" => RunStatus::Failed,
        "KILLED" => RunStatus::Killed,
        _ => RunStatus::Running,
    };
    Ok(RunInfo {
        id,
        experiment_id: experiment,
        name: w.info.run_name.clone(),
        status,
        start_ms: w.info.start_time.unwrap_or(0),
        end_ms: w.info.end_time.filter(|_| status.is_terminal()),
        owner: rec.and_then(|r| r.owner).unwrap_or(NodeId::nil()),
        tracker,
        parent: tag(w, PARENT_TAG).and_then(|p| RunId::parse(p).ok()),
        artifact_uri: w.info.artifact_uri.clone(),
    })
}

fn inputs_of(w: &wire::Run) -> Vec<DatasetInput> {
    w.inputs
        .dataset_inputs
        .iter()
        .map(|d| {
            // The adapter logs the source as `{"uri": ...}`, as MLflow's datasets do.
            let source = serde_json::from_str::<serde_json::Value>(&d.dataset.source)
                .ok()
                .and_then(|v| v.get("uri").and_then(|u| u.as_str()).map(str::to_owned))
                .unwrap_or_else(|| d.dataset.source.clone());
            DatasetInput {
                name: d.dataset.name.clone(),
                digest: d.dataset.digest.clone(),
                source,
                context: d
                    .tags
                    .iter()
                    .find(|t| t.key == CONTEXT_TAG)
                    .map(|t| t.value.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// `tags` with the MLflow tag of every mirrored system tag added.
fn with_mirrors<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<Kv> {
    let mut out = Vec::new();
    for (k, v) in tags {
        out.push(Kv {
            key: k.clone(),
            value: v.clone(),
        });
        if let Some((_, theirs)) = MIRRORED.iter().find(|(ours, _)| ours == k) {
            out.push(Kv {
                key: (*theirs).to_owned(),
                value: v.clone(),
            });
        }
    }
    out
}

async fn run_start(inner: Arc<Inner>, req: RunStart, meta: Meta) -> Result<Outcome> {
    limits::check_run_start(&req)?;
    let (exp_w, created) = ensure_experiment(
        &inner,
        &ExperimentCreate {
            name: req.experiment.clone(),
            ..ExperimentCreate::default()
        },
    )
    .await
    .map_err(|s| match s.field.as_deref() {
        Some("name") => s.with_field("experiment"),
        _ => s,
    })?;
    let mut tags = with_mirrors(&req.tags);
    if let Some(p) = &req.parent {
        tags.push(Kv {
            key: PARENT_TAG.into(),
            value: p.as_str().into(),
        });
    }
    #[derive(Serialize)]
    struct Create {
        experiment_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        run_name: Option<String>,
        start_time: u64,
        user_id: String,
        tags: Vec<Kv>,
    }
    let body = Create {
        experiment_id: exp_w.experiment_id.clone(),
        run_name: req.name.clone(),
        start_time: req.start_ms.unwrap_or(meta.now_ms),
        user_id: req.tags.get("mlmesh.user").cloned().unwrap_or_default(),
        tags,
    };
    let made: wire::RunReply = inner
        .rest
        .post("runs/create", &body)
        .await
        .map_err(|f| f.status_at("experiment"))?;
    let exp = experiment_of(&inner, exp_w).await?;
    let rec = RunRecord {
        experiment: made.run.info.experiment_id.clone(),
        owner: Some(meta.source),
        state: ids::OPEN,
    };
    let info = info_of(&made.run, exp.id, Some(&rec), meta.node)?;
    let mut out = Outcome::reply(&info)?.change(Change::Run {
        run: made.run.info.run_id.clone(),
        experiment: rec.experiment,
        owner: Some(meta.source),
    });
    if created {
        out = out.event(tracking::EXPERIMENT_CREATED, &exp)?;
    }
    out.event(tracking::RUN_STARTED, &info)
}

async fn run_end(inner: Arc<Inner>, req: RunEnd, meta: Meta) -> Result<Outcome> {
    if !matches!(
        req.status,
        RunStatus::Finished | RunStatus::Failed | RunStatus::Killed
    ) {
        return Err(invalid(
            "status",
            format!(
                "a run ends FINISHED, FAILED or KILLED, not {}",
                req.status.as_str()
            ),
        ));
    }
    let rec = ids::run(&inner, &req.run).await?;
    let body = json!({
        "run_id": req.run.as_str(),
        "status": req.status.as_str(),
        "end_time": req.end_ms.unwrap_or(meta.now_ms),
    });
    let updated: std::result::Result<wire::Empty, _> = inner.rest.post("runs/update", &body).await;
    match updated {
        Ok(_) => {}
        Err(f) if f.is_not_found() => {
            return Err(not_found("run", format!("MLflow has no run {}", req.run)))
        }
        Err(f) => return Err(f.status_at("run")),
    }
    let w = fetch_run(&inner, &req.run).await?;
    let experiment = ids::experiment_uid(&inner, &w.info.experiment_id).await?;
    let ended = RunRecord {
        experiment: w.info.experiment_id.clone(),
        owner: rec.as_ref().and_then(|r| r.owner),
        state: ids::ENDED,
    };
    let info = info_of(&w, experiment, Some(&ended), meta.node)?;
    let change = match rec {
        Some(_) => Change::RunState {
            run: w.info.run_id.clone(),
            state: ids::ENDED,
        },
        None => Change::Run {
            run: w.info.run_id.clone(),
            experiment: w.info.experiment_id.clone(),
            owner: None,
        },
    };
    Outcome::reply(&info)?
        .change(change)
        .event(tracking::RUN_ENDED, &info)
}

/// Every value of one key, in MLflow's order.
async fn history(inner: &Inner, run: &RunId, key: &str) -> Result<Vec<Metric>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![
            ("run_id", run.as_str().to_owned()),
            ("metric_key", key.to_owned()),
            ("max_results", MAX_HISTORY_PAGE.to_string()),
        ];
        if let Some(t) = token.take() {
            query.push(("page_token", t));
        }
        let page: wire::HistoryPage = inner
            .rest
            .get("metrics/get-history", &query)
            .await
            .map_err(|f| f.status_at("run"))?;
        out.extend(page.metrics.into_iter().map(|m| Metric {
            key: m.key,
            value: m.value.0,
            timestamp: m.timestamp,
            step: m.step,
        }));
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// The summary of a key's values (SPEC 15.4).
fn summary(values: &[Metric]) -> Option<MetricSummary> {
    let order = |m: &Metric| {
        let v = if m.value.is_nan() {
            (1, 0.0)
        } else {
            (0, m.value)
        };
        (m.step, m.timestamp, v)
    };
    let latest = values.iter().max_by(|a, b| {
        order(a)
            .partial_cmp(&order(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    })?;
    let numbers = values.iter().map(|m| m.value).filter(|v| !v.is_nan());
    Some(MetricSummary {
        last: latest.value,
        step: latest.step,
        timestamp: latest.timestamp,
        min: numbers.clone().reduce(f64::min),
        max: numbers.reduce(f64::max),
        count: values.len() as u64,
    })
}

async fn run_get(inner: Arc<Inner>, req: RunGet, node: NodeId) -> Result<Run> {
    let w = fetch_run(&inner, &req.run).await?;
    let rec = ids::run(&inner, &req.run).await?;
    let experiment = ids::experiment_uid(&inner, &w.info.experiment_id).await?;
    let info = info_of(&w, experiment, rec.as_ref(), node)?;
    // MLflow keeps only the latest value per key with the run: the summary (min, max,
    // count) comes from each key's history.
    let keys: Vec<String> = w.data.metrics.iter().map(|m| m.key.clone()).collect();
    let metrics: BTreeMap<String, MetricSummary> = futures::stream::iter(keys)
        .map(|key| {
            let inner = &inner;
            let run = req.run;
            async move {
                let values = history(inner, &run, &key).await?;
                Ok::<_, Status>(summary(&values).map(|s| (key, s)))
            }
        })
        .buffer_unordered(HISTORIES_AT_ONCE)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;
    Ok(Run {
        params: w
            .data
            .params
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect(),
        tags: w
            .data
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect(),
        inputs: inputs_of(&w),
        info,
        metrics,
    })
}

// ---- Logging --------------------------------------------------------------------------

/// One `runs/log-batch` request.
#[derive(Debug, Default, Serialize)]
struct LogBody {
    run_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    params: Vec<Kv>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metrics: Vec<wire::Metric>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<Kv>,
}

impl LogBody {
    fn items(&self) -> usize {
        self.params.len() + self.metrics.len() + self.tags.len()
    }
}

/// Splits params, then metrics, then tags into requests within MLflow's limits.
fn split(run: &str, params: Vec<Kv>, metrics: Vec<wire::Metric>, tags: Vec<Kv>) -> Vec<LogBody> {
    enum Item {
        Param(Kv),
        Metric(wire::Metric),
        Tag(Kv),
    }
    let items = params
        .into_iter()
        .map(Item::Param)
        .chain(metrics.into_iter().map(Item::Metric))
        .chain(tags.into_iter().map(Item::Tag));
    let fresh = || LogBody {
        run_id: run.to_owned(),
        ..LogBody::default()
    };
    let mut out = Vec::new();
    let mut body = fresh();
    let mut bytes = 64;
    for item in items {
        let size = match &item {
            Item::Param(kv) | Item::Tag(kv) => kv.key.len() + 2 * kv.value.len() + 32,
            Item::Metric(m) => m.key.len() + 80,
        };
        let full = match &item {
            Item::Param(_) => body.params.len() >= MAX_PARAMS,
            Item::Metric(_) => body.metrics.len() >= MAX_METRICS,
            Item::Tag(_) => body.tags.len() >= MAX_TAGS,
        } || body.items() >= MAX_ITEMS
            || bytes + size > MAX_BYTES;
        if full && body.items() > 0 {
            out.push(std::mem::replace(&mut body, fresh()));
            bytes = 64;
        }
        bytes += size;
        match item {
            Item::Param(kv) => body.params.push(kv),
            Item::Metric(m) => body.metrics.push(m),
            Item::Tag(kv) => body.tags.push(kv),
        }
    }
    if body.items() > 0 {
        out.push(body);
    }
    out
}

fn source_type(source: &str) -> &'static str {
    if source.starts_with("http://") || source.starts_with("https://") {
        "http"
    } else if source.starts_with("s3://") {
        "s3"
    } else if source.starts_with("file://") || source.starts_with('/') {
        "local"
    } else {
        "external"
    }
}

async fn log_inputs(inner: &Inner, run: &str, inputs: &[DatasetInput]) -> Result<()> {
    let mut chunks: Vec<Vec<wire::DatasetInput>> = vec![Vec::new()];
    let mut bytes = 0;
    for d in inputs {
        let item = wire::DatasetInput {
            tags: vec![Kv {
                key: CONTEXT_TAG.into(),
                value: d.context.clone(),
            }],
            dataset: wire::Dataset {
                name: d.name.clone(),
                digest: d.digest.clone(),
                source_type: source_type(&d.source).into(),
                source: json!({ "uri": d.source }).to_string(),
            },
        };
        let size = 2 * (d.name.len() + d.digest.len() + d.source.len() + d.context.len()) + 200;
        if bytes + size > MAX_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push(item);
        }
    }
    for datasets in chunks.into_iter().filter(|c| !c.is_empty()) {
        let _: wire::Empty = inner
            .rest
            .post(
                "runs/log-inputs",
                &json!({ "run_id": run, "datasets": datasets }),
            )
            .await
            .map_err(|f| f.status_at("inputs"))?;
    }
    Ok(())
}

async fn run_log(inner: Arc<Inner>, batch: LogBatch, _meta: Meta) -> Result<Outcome> {
    limits::check_log(&batch)?;
    let run = batch.run.as_str().to_owned();
    let rec = ids::run(&inner, &batch.run).await?;
    let mut changes = Vec::new();
    let experiment = match &rec {
        Some(r) if batch.params.is_empty() => r.experiment.clone(),
        _ => {
            // Params are written once: refuse a change before anything is sent, so that
            // the common refusal leaves the batch unwritten as the standard wants.
            let w = fetch_run(&inner, &batch.run).await?;
            let have: HashMap<&str, &str> = w
                .data
                .params
                .iter()
                .map(|p| (p.key.as_str(), p.value.as_str()))
                .collect();
            for (i, p) in batch.params.iter().enumerate() {
                if let Some(v) = have.get(p.key.as_str()).filter(|v| **v != p.value) {
                    return Err(invalid(
                        format!("params[{i}].value"),
                        format!(
                            "param `{}` is already {v:?}; params are written once (got {:?})",
                            p.key, p.value
                        ),
                    ));
                }
            }
            if rec.is_none() {
                changes.push(Change::Run {
                    run: run.clone(),
                    experiment: w.info.experiment_id.clone(),
                    owner: None,
                });
            }
            w.info.experiment_id
        }
    };

    // Exact duplicates within the batch are dropped and counted here; MLflow drops those
    // of earlier batches without saying so (SPEC 17).
    let mut seen = HashSet::with_capacity(batch.metrics.len());
    let mut written = Vec::with_capacity(batch.metrics.len());
    let mut duplicates = 0u32;
    for m in &batch.metrics {
        if seen.insert((m.key.as_str(), m.step, m.timestamp, m.value.to_bits())) {
            written.push(m.clone());
        } else {
            duplicates += 1;
        }
    }
    let params = batch
        .params
        .iter()
        .map(|p| Kv {
            key: p.key.clone(),
            value: p.value.clone(),
        })
        .collect();
    let metrics = written
        .iter()
        .map(|m| wire::Metric {
            key: m.key.clone(),
            value: wire::Value(m.value),
            timestamp: m.timestamp,
            step: m.step,
        })
        .collect();
    let tags = with_mirrors(batch.tags.iter().map(|t| (&t.key, &t.value)));
    for body in split(&run, params, metrics, tags) {
        let field = if body.params.is_empty() {
            "run"
        } else {
            "params"
        };
        let sent: std::result::Result<wire::Empty, _> =
            inner.rest.post("runs/log-batch", &body).await;
        match sent {
            Ok(_) => {}
            Err(f) if f.is_not_found() => {
                return Err(not_found("run", format!("MLflow has no run {run}")))
            }
            Err(f) => return Err(f.status_at(field)),
        }
    }
    if !batch.inputs.is_empty() {
        log_inputs(&inner, &run, &batch.inputs).await?;
    }

    let experiment_id = ids::experiment_uid(&inner, &experiment).await?;
    let logged = Logged {
        metrics: u32::try_from(written.len()).unwrap_or(u32::MAX),
        duplicates,
    };
    let id = batch.run;
    let mut out = Outcome::reply(&logged)?;
    out.changes = changes;
    if !written.is_empty() {
        out = out.event(
            tracking::METRICS_LOGGED,
            &MetricsLogged {
                run: id,
                experiment_id,
                metrics: written,
            },
        )?;
    }
    if !batch.params.is_empty() {
        out = out.event(
            tracking::PARAMS_LOGGED,
            &ParamsLogged {
                run: id,
                params: batch.params,
            },
        )?;
    }
    if !batch.tags.is_empty() {
        out = out.event(
            tracking::TAGS_SET,
            &TagsSet {
                run: id,
                tags: batch.tags,
            },
        )?;
    }
    if !batch.inputs.is_empty() {
        out = out.event(
            tracking::INPUTS_LOGGED,
            &InputsLogged {
                run: id,
                inputs: batch.inputs,
            },
        )?;
    }
    Ok(out)
}

// ---- History and search ---------------------------------------------------------------

fn check_page(max: u32, limit: u32) -> Result<()> {
    if max == 0 || max > limit {
        return Err(invalid(
            "max_results",
            format!("max_results must be 1 to {limit}, not {max}"),
        ));
    }
    Ok(())
}

async fn metric_history(inner: Arc<Inner>, req: MetricHistory) -> Result<MetricPage> {
    check_page(req.max_results, MAX_HISTORY_PAGE)?;
    let offset: usize = match &req.page_token {
        None => 0,
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                invalid(
                    "page_token",
                    format!("`{t}` is not a page token of this tracker"),
                )
            })?,
    };
    let mut values = history(&inner, &req.run, &req.key).await?;
    if values.is_empty() {
        // MLflow answers an empty history for a run it does not have.
        fetch_run(&inner, &req.run).await?;
    }
    // The standard's order, whatever MLflow's: step, timestamp, value bits.
    values.sort_by_key(|m| (m.step, m.timestamp, m.value.to_bits() as i64));
    let max = req.max_results as usize;
    let mut metrics: Vec<_> = values.iter().skip(offset).take(max).cloned().collect();
    // As the built-in tracker does: a page also ends where the reply would outgrow a
    // message, and the token carries on from there.
    metrics.truncate(crate::serve::fitting(&metrics));
    let next =
        (values.len() > offset + metrics.len()).then(|| format!("o{}", offset + metrics.len()));
    Ok(MetricPage {
        metrics,
        next_page_token: next,
    })
}

fn search_error(e: crate::tracker::search::SearchError) -> Status {
    let field = match e.index {
        Some(i) => format!("{}[{i}]", e.field),
        None => e.field.to_string(),
    };
    invalid(field, e.to_string())
}

async fn run_search(inner: Arc<Inner>, req: RunSearch, node: NodeId) -> Result<RunPage> {
    check_page(req.max_results, MAX_SEARCH_PAGE)?;
    // The tracker's own checks: the same errors at the same positions.
    crate::tracker::search::run_query(&req.filter, &req.order_by, &[], 1, 0)
        .map_err(search_error)?;
    let parsed = crate::filter::parse(&req.filter).map_err(|e| invalid("filter", e.message))?;
    let mut experiments = Vec::with_capacity(req.experiments.len());
    for (i, name) in req.experiments.iter().enumerate() {
        match experiment_by_name(&inner, name).await? {
            Some(e) => experiments.push(e.experiment_id),
            None => {
                return Err(not_found(
                    format!("experiments[{i}]"),
                    format!("no experiment named {name:?} in MLflow"),
                ))
            }
        }
    }
    if req.experiments.is_empty() {
        experiments = all_experiments(&inner).await?;
    }
    if experiments.is_empty() {
        return Ok(RunPage {
            runs: Vec::new(),
            next_page_token: None,
        });
    }
    let mut named = HashMap::new();
    for uid in super::filter::experiment_ids(&parsed) {
        if let Ok(id) = ExperimentId::parse(&uid) {
            if let Some(m) = ids::experiment_mlflow(&inner, &id).await? {
                named.insert(uid, m);
            }
        }
    }
    let (skip, mlflow_token) = split_token(req.page_token.as_deref());
    let body = json!({
        "experiment_ids": experiments,
        "filter": super::filter::run_filter_text(&parsed, &named),
        "max_results": req.max_results,
        "order_by": req.order_by,
        "page_token": mlflow_token,
        "run_view_type": "ACTIVE_ONLY",
    });
    let page: wire::RunPage = inner.rest.post("runs/search", &body).await.map_err(|f| {
        let message = f.status().message.to_lowercase();
        let field = if message.contains("token") {
            "page_token"
        } else if message.contains("order") {
            "order_by"
        } else {
            "filter"
        };
        f.status_at(field)
    })?;
    let records = ids::runs(
        &inner,
        page.runs.iter().map(|r| r.info.run_id.clone()).collect(),
    )
    .await?;
    let mut experiment_ids: HashMap<String, ExperimentId> = HashMap::new();
    let mut runs = Vec::with_capacity(page.runs.len());
    for w in page.runs.iter().skip(skip) {
        let exp = match experiment_ids.get(&w.info.experiment_id) {
            Some(e) => *e,
            None => {
                let e = ids::experiment_uid(&inner, &w.info.experiment_id).await?;
                experiment_ids.insert(w.info.experiment_id.clone(), e);
                e
            }
        };
        let info = info_of(w, exp, records.get(&w.info.run_id), node)?;
        // Searches carry MLflow's latest values only: min, max and count would take
        // every history of every run (SPEC 17: count 0 means "not counted").
        let metrics = w
            .data
            .metrics
            .iter()
            .map(|m| {
                (
                    m.key.clone(),
                    MetricSummary {
                        last: m.value.0,
                        step: m.step,
                        timestamp: m.timestamp,
                        min: None,
                        max: None,
                        count: 0,
                    },
                )
            })
            .collect();
        runs.push(Run {
            info,
            params: w
                .data
                .params
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            tags: w
                .data
                .tags
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect(),
            metrics,
            inputs: inputs_of(w),
        });
    }
    // MLflow pages by count only: a page that would outgrow a message ends early, and
    // the token says where in this MLflow page to carry on.
    let fit = crate::serve::fitting(&runs);
    let next_page_token = if fit < runs.len() {
        runs.truncate(fit);
        Some(format!(
            "~{}~{}",
            skip + fit,
            mlflow_token.unwrap_or_default()
        ))
    } else {
        page.next_page_token.filter(|t| !t.is_empty())
    };
    Ok(RunPage {
        runs,
        next_page_token,
    })
}

/// A run search token: MLflow's own, or `~<skip>~<MLflow's token>` for a page that ended
/// early (`~` is not in MLflow's base64 tokens): the runs of that MLflow page to skip.
fn split_token(token: Option<&str>) -> (usize, Option<&str>) {
    let Some(rest) = token.and_then(|t| t.strip_prefix('~')) else {
        return (0, token);
    };
    match rest.split_once('~') {
        Some((skip, mlflow)) => match skip.parse() {
            Ok(skip) => (skip, Some(mlflow).filter(|t| !t.is_empty())),
            // Not ours after all: MLflow judges it (INVALID_ARGUMENT, page_token).
            Err(_) => (0, token),
        },
        None => (0, token),
    }
}

// ---- Crashed runs ---------------------------------------------------------------------

/// Ends FAILED in MLflow, and CRASHED in the mesh, the open runs of `owner`, or (with
/// `None`) of every owner not in the peer table.
pub(crate) async fn crash(inner: &Arc<Inner>, node: &NodeHandle, owner: Option<NodeId>) {
    let open = match ids::open_runs(inner, owner).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "listing open runs failed");
            return;
        }
    };
    let alive: Vec<NodeId> = node.peers().iter().map(|p| p.id).collect();
    for (run, o) in open {
        if owner.is_none() && (o == node.id() || alive.contains(&o)) {
            continue;
        }
        if let Err(e) = crash_one(inner, node, &run).await {
            tracing::warn!(%run, error = %e, "marking a run CRASHED failed");
        }
    }
}

async fn crash_one(inner: &Arc<Inner>, node: &NodeHandle, run: &str) -> Result<()> {
    let id = RunId::parse(run).map_err(internal)?;
    let w = fetch_run(inner, &id).await?;
    if w.info.status != "RUNNING" {
        // Ended meanwhile, through MLflow itself.
        record(
            inner,
            None,
            bytes::Bytes::new(),
            vec![Change::RunState {
                run: run.to_owned(),
                state: ids::ENDED,
            }],
        )
        .await?;
        return Ok(());
    }
    let end = now_ms();
    let _: wire::Empty = inner
        .rest
        .post(
            "runs/update",
            &json!({ "run_id": run, "status": "FAILED", "end_time": end }),
        )
        .await?;
    record(
        inner,
        None,
        bytes::Bytes::new(),
        vec![Change::RunState {
            run: run.to_owned(),
            state: ids::CRASHED,
        }],
    )
    .await?;
    let w = fetch_run(inner, &id).await?;
    let rec = ids::run(inner, &id).await?;
    let experiment = ids::experiment_uid(inner, &w.info.experiment_id).await?;
    let info = info_of(&w, experiment, rec.as_ref(), node.id())?;
    let _ = node.publish(tracking::RUN_ENDED, &info).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: i64, ts: u64, v: f64) -> Metric {
        Metric {
            key: "k".into(),
            value: v,
            timestamp: ts,
            step,
        }
    }

    #[test]
    fn summaries_follow_spec_15_4() {
        let s = summary(&[
            m(0, 10, 0.9),
            m(1, 20, 0.5),
            m(2, 30, f64::NAN),
            m(2, 5, f64::INFINITY),
        ])
        .expect("values");
        assert!(s.last.is_nan());
        assert_eq!((s.step, s.timestamp, s.count), (2, 30, 4));
        assert_eq!((s.min, s.max), (Some(0.5), Some(f64::INFINITY)));
        assert!(summary(&[]).is_none());
        let nan = summary(&[m(0, 0, f64::NAN)]).expect("one");
        assert_eq!((nan.min, nan.max), (None, None));
    }

    #[test]
    fn batches_split_at_mlflow_limits() {
        let kv = |i: usize, len: usize| Kv {
            key: format!("k{i}"),
            value: "v".repeat(len),
        };
        let metric = |i: usize| wire::Metric {
            key: "m".into(),
            value: wire::Value(i as f64),
            timestamp: 0,
            step: i as i64,
        };
        let one = split("r", vec![kv(0, 1)], (0..1000).map(metric).collect(), vec![]);
        assert_eq!(one.len(), 2, "1001 items");
        assert_eq!((one[0].params.len(), one[0].metrics.len()), (1, 999));
        // 100 tags of 8000 bytes are more than 1 MB of JSON.
        let big = split("r", vec![], vec![], (0..100).map(|i| kv(i, 8000)).collect());
        assert!(big.len() > 1);
        assert_eq!(big.iter().map(|b| b.tags.len()).sum::<usize>(), 100);
        for b in &big {
            assert!(serde_json::to_vec(b).expect("json").len() < 1_000_000);
        }
    }
}
