//! The tracker's writes. Each runs inside the store's group commit, in its own
//! savepoint: an error undoes the whole instruction (a `tracking.run.log` batch is all or
//! nothing) and nothing else.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use mlmesh::protocol::tracking::{
    self, limits, Experiment, ExperimentCreate, ExperimentId, LogBatch, Logged, Metric,
    MetricsLogged, RunEnd, RunId, RunInfo, RunStart, RunStatus,
};
use mlmesh::protocol::{Code, NodeId, Status};

use super::read::{experiment_by_name, run_info, RunRow};
use super::Settings;
use crate::serve::Meta;
use crate::store::{internal, Done};

type Result<T> = std::result::Result<T, Status>;

fn not_found(field: &str, what: String) -> Status {
    Status::error(Code::NotFound, what).with_field(field)
}

/// `tracking.experiment.create`.
pub(super) fn experiment_create(
    c: &Connection,
    req: ExperimentCreate,
    settings: &Settings,
    meta: Meta,
) -> Result<Done> {
    limits::check_experiment_create(&req)?;
    let (exp, created) = get_or_create_experiment(c, &req, settings, meta)?;
    let done = Done::reply(&exp)?;
    if created {
        return done.event(tracking::EXPERIMENT_CREATED, &exp);
    }
    Ok(done)
}

fn get_or_create_experiment(
    c: &Connection,
    req: &ExperimentCreate,
    settings: &Settings,
    meta: Meta,
) -> Result<(Experiment, bool)> {
    if let Some((_, exp)) = experiment_by_name(c, &req.name)? {
        return Ok((exp, false));
    }
    let id = ExperimentId::new();
    let artifact_location = req
        .artifact_location
        .clone()
        .unwrap_or_else(|| format!("{}/{id}", settings.artifact_root));
    c.prepare_cached(
        "INSERT INTO experiments(uid, name, artifact_location, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            id.as_str(),
            req.name,
            artifact_location,
            meta.now_ms
        ])
    })
    .map_err(internal)?;
    let rowid = c.last_insert_rowid();
    let mut st = c
        .prepare_cached("INSERT INTO experiment_tags(experiment, key, value) VALUES (?1, ?2, ?3)")
        .map_err(internal)?;
    for (k, v) in &req.tags {
        st.execute(params![rowid, k, v]).map_err(internal)?;
    }
    let exp = Experiment {
        id,
        name: req.name.clone(),
        artifact_location,
        tags: req.tags.clone(),
        created_ms: meta.now_ms,
    };
    Ok((exp, true))
}

/// `tracking.run.start`.
pub(super) fn run_start(
    c: &Connection,
    req: RunStart,
    settings: &Settings,
    meta: Meta,
) -> Result<Done> {
    limits::check_run_start(&req)?;
    let wanted = ExperimentCreate {
        name: req.experiment.clone(),
        ..ExperimentCreate::default()
    };
    let (exp, created) = get_or_create_experiment(c, &wanted, settings, meta)?;
    let exp_row: i64 = c
        .prepare_cached("SELECT id FROM experiments WHERE uid = ?1")
        .and_then(|mut st| st.query_row([exp.id.as_str()], |r| r.get(0)))
        .map_err(internal)?;
    let id = RunId::new();
    let info = RunInfo {
        id,
        experiment_id: exp.id,
        name: req.name.clone().unwrap_or_else(|| run_name(&id)),
        status: RunStatus::Running,
        start_ms: req.start_ms.unwrap_or(meta.now_ms),
        end_ms: None,
        owner: meta.source,
        tracker: meta.node,
        parent: req.parent,
        artifact_uri: format!("{}/{id}/artifacts", exp.artifact_location),
    };
    c.prepare_cached(
        "INSERT INTO runs(uid, experiment, name, status, start_ms, owner, parent, artifact_uri)
         VALUES (?1, ?2, ?3, 'RUNNING', ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            id.as_str(),
            exp_row,
            info.name,
            info.start_ms,
            &meta.source.as_bytes()[..],
            info.parent.as_ref().map(RunId::as_str),
            info.artifact_uri,
        ])
    })
    .map_err(internal)?;
    let run_row = c.last_insert_rowid();
    let mut st = c
        .prepare_cached("INSERT INTO tags(run, key, value) VALUES (?1, ?2, ?3)")
        .map_err(internal)?;
    for (k, v) in &req.tags {
        st.execute(params![run_row, k, v]).map_err(internal)?;
    }
    let mut done = Done::reply(&info)?;
    if created {
        done = done.event(tracking::EXPERIMENT_CREATED, &exp)?;
    }
    done.event(tracking::RUN_STARTED, &info)
}

/// A readable name for a run started without one: `<adjective>-<noun>-<n>`, from the
/// id's random bits.
fn run_name(id: &RunId) -> String {
    const ADJ: [&str; 16] = [
        "amber", "bold", "brisk", "calm", "clever", "eager", "gentle", "keen", "lucid", "merry",
        "nimble", "quiet", "rapid", "sunny", "swift", "vivid",
    ];
    const NOUN: [&str; 16] = [
        "badger", "crane", "falcon", "fox", "heron", "ibis", "lynx", "marten", "otter", "owl",
        "panda", "puffin", "raven", "seal", "stoat", "wren",
    ];
    let tail = u32::from_str_radix(&id.as_str()[24..], 16).unwrap_or(0);
    format!(
        "{}-{}-{}",
        ADJ[(tail & 15) as usize],
        NOUN[((tail >> 4) & 15) as usize],
        (tail >> 8) % 1000
    )
}

/// `tracking.run.end`.
pub(super) fn run_end(c: &Connection, req: RunEnd, meta: Meta) -> Result<Done> {
    if !matches!(
        req.status,
        RunStatus::Finished | RunStatus::Failed | RunStatus::Killed
    ) {
        return Err(Status::error(
            Code::InvalidArgument,
            format!(
                "a run ends FINISHED, FAILED or KILLED, not {}",
                req.status.as_str()
            ),
        )
        .with_field("status"));
    }
    let end_ms = req.end_ms.unwrap_or(meta.now_ms);
    let changed = c
        .prepare_cached("UPDATE runs SET status = ?2, end_ms = ?3 WHERE uid = ?1")
        .and_then(|mut st| st.execute(params![req.run.as_str(), req.status.as_str(), end_ms]))
        .map_err(internal)?;
    if changed == 0 {
        return Err(not_found(
            "run",
            format!("no run {} on this tracker", req.run),
        ));
    }
    let info = run_info(c, &req.run, meta.node)?
        .ok_or_else(|| not_found("run", format!("no run {}", req.run)))?
        .1;
    Done::reply(&info)?.event(tracking::RUN_ENDED, &info)
}

/// Marks the RUNNING runs of `owner` CRASHED: it left the mesh without ending them.
pub(super) fn crash_runs_of(c: &Connection, owner: NodeId, meta: Meta) -> Result<Done> {
    let uids: Vec<String> = c
        .prepare_cached(
            "UPDATE runs SET status = 'CRASHED', end_ms = ?2
             WHERE owner = ?1 AND status = 'RUNNING' RETURNING uid",
        )
        .and_then(|mut st| {
            st.query_map(params![&owner.as_bytes()[..], meta.now_ms], |r| r.get(0))?
                .collect()
        })
        .map_err(internal)?;
    let mut done = Done::default();
    for uid in uids {
        let Ok(id) = RunId::parse(&uid) else { continue };
        if let Some((_, info)) = run_info(c, &id, meta.node)? {
            done = done.event(tracking::RUN_ENDED, &info)?;
        }
    }
    Ok(done)
}

/// The running summary of one metric key while a batch is applied.
struct Summary {
    id: i64,
    last_bits: u64,
    step: i64,
    ts: u64,
    min: Option<f64>,
    max: Option<f64>,
    count: i64,
}

impl Summary {
    /// Whether `m` is later than the current latest value: higher step, then later
    /// timestamp, then (to be well defined) the larger value, NaN above every number.
    fn is_later(&self, m: &Metric) -> bool {
        let key = |v: f64| if v.is_nan() { (1, 0.0) } else { (0, v) };
        (m.step, m.timestamp)
            .cmp(&(self.step, self.ts))
            .then_with(|| {
                key(m.value)
                    .partial_cmp(&key(f64::from_bits(self.last_bits)))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .is_gt()
    }

    fn add(&mut self, m: &Metric) {
        if self.count == 0 || self.is_later(m) {
            self.last_bits = m.value.to_bits();
            self.step = m.step;
            self.ts = m.timestamp;
        }
        if !m.value.is_nan() {
            self.min = Some(self.min.map_or(m.value, |v| v.min(m.value)));
            self.max = Some(self.max.map_or(m.value, |v| v.max(m.value)));
        }
        self.count += 1;
    }
}

fn nan_null(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

fn summary(c: &Connection, run: i64, key: &str) -> Result<Summary> {
    let found = c
        .prepare_cached(
            "SELECT id, last_bits, last_step, last_ts, min, max, count
             FROM metric_keys WHERE run = ?1 AND key = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![run, key], |r| {
                Ok(Summary {
                    id: r.get(0)?,
                    last_bits: r.get::<_, i64>(1)? as u64,
                    step: r.get(2)?,
                    ts: r.get::<_, i64>(3)? as u64,
                    min: r.get(4)?,
                    max: r.get(5)?,
                    count: r.get(6)?,
                })
            })
            .optional()
        })
        .map_err(internal)?;
    if let Some(s) = found {
        return Ok(s);
    }
    c.prepare_cached(
        "INSERT INTO metric_keys(run, key, last, last_bits, last_step, last_ts, count)
         VALUES (?1, ?2, NULL, 0, 0, 0, 0)",
    )
    .and_then(|mut st| st.execute(params![run, key]))
    .map_err(internal)?;
    Ok(Summary {
        id: c.last_insert_rowid(),
        last_bits: 0,
        step: 0,
        ts: 0,
        min: None,
        max: None,
        count: 0,
    })
}

/// `tracking.run.log`: params (write-once), metrics (append-only, exact duplicates
/// dropped), tags (last write wins), inputs; all or nothing.
pub(super) fn run_log(c: &Connection, batch: LogBatch) -> Result<Done> {
    limits::check_log(&batch)?;
    let RunRow {
        row, experiment, ..
    } = RunRow::of(c, &batch.run)?
        .ok_or_else(|| not_found("run", format!("no run {} on this tracker", batch.run)))?;

    for (i, p) in batch.params.iter().enumerate() {
        let existing: Option<String> = c
            .prepare_cached("SELECT value FROM params WHERE run = ?1 AND key = ?2")
            .and_then(|mut st| st.query_row(params![row, p.key], |r| r.get(0)).optional())
            .map_err(internal)?;
        match existing {
            Some(v) if v == p.value => {}
            Some(v) => {
                return Err(Status::error(
                    Code::InvalidArgument,
                    format!(
                        "param `{}` is already {v:?}; params are written once (got {:?})",
                        p.key, p.value
                    ),
                )
                .with_field(format!("params[{i}].value")))
            }
            None => {
                c.prepare_cached("INSERT INTO params(run, key, value) VALUES (?1, ?2, ?3)")
                    .and_then(|mut st| st.execute(params![row, p.key, p.value]))
                    .map_err(internal)?;
            }
        }
    }
    {
        let mut st = c
            .prepare_cached(
                "INSERT INTO tags(run, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(run, key) DO UPDATE SET value = excluded.value",
            )
            .map_err(internal)?;
        for t in &batch.tags {
            st.execute(params![row, t.key, t.value]).map_err(internal)?;
        }
        let mut st = c
            .prepare_cached(
                "INSERT OR IGNORE INTO inputs(run, name, digest, source, context)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(internal)?;
        for d in &batch.inputs {
            st.execute(params![row, d.name, d.digest, d.source, d.context])
                .map_err(internal)?;
        }
    }

    let mut logged = Logged::default();
    let mut written = Vec::with_capacity(batch.metrics.len());
    if !batch.metrics.is_empty() {
        let mut keys: BTreeMap<&str, Summary> = BTreeMap::new();
        let mut insert = c
            .prepare_cached(
                "INSERT OR IGNORE INTO metrics(key_id, step, ts, bits) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(internal)?;
        for m in &batch.metrics {
            let s = match keys.get_mut(m.key.as_str()) {
                Some(s) => s,
                None => keys
                    .entry(m.key.as_str())
                    .or_insert(summary(c, row, &m.key)?),
            };
            // Timestamps and value bits are stored as SQLite's signed 64-bit integers,
            // bit for bit.
            let n = insert
                .execute(params![
                    s.id,
                    m.step,
                    m.timestamp as i64,
                    m.value.to_bits() as i64
                ])
                .map_err(internal)?;
            if n == 0 {
                logged.duplicates += 1;
                continue;
            }
            logged.metrics += 1;
            s.add(m);
            written.push(m.clone());
        }
        let mut update = c
            .prepare_cached(
                "UPDATE metric_keys SET last = ?2, last_bits = ?3, last_step = ?4, last_ts = ?5,
                 min = ?6, max = ?7, count = ?8 WHERE id = ?1",
            )
            .map_err(internal)?;
        for s in keys.values().filter(|s| s.count > 0) {
            let last = f64::from_bits(s.last_bits);
            update
                .execute(params![
                    s.id,
                    nan_null(last),
                    s.last_bits as i64,
                    s.step,
                    s.ts as i64,
                    s.min,
                    s.max,
                    s.count
                ])
                .map_err(internal)?;
        }
    }

    let run = batch.run;
    let mut done = Done::reply(&logged)?;
    if !written.is_empty() {
        done = done.event(
            tracking::METRICS_LOGGED,
            &MetricsLogged {
                run,
                experiment_id: experiment,
                metrics: written,
            },
        )?;
    }
    if !batch.params.is_empty() {
        done = done.event(
            tracking::PARAMS_LOGGED,
            &tracking::ParamsLogged {
                run,
                params: batch.params,
            },
        )?;
    }
    if !batch.tags.is_empty() {
        done = done.event(
            tracking::TAGS_SET,
            &tracking::TagsSet {
                run,
                tags: batch.tags,
            },
        )?;
    }
    if !batch.inputs.is_empty() {
        done = done.event(
            tracking::INPUTS_LOGGED,
            &tracking::InputsLogged {
                run,
                inputs: batch.inputs,
            },
        )?;
    }
    Ok(done)
}

/// The owners of RUNNING runs.
pub(super) fn running_owners(c: &Connection) -> Result<Vec<NodeId>> {
    let owners: Vec<Vec<u8>> = c
        .prepare_cached(
            "SELECT DISTINCT owner FROM runs WHERE status = 'RUNNING' AND owner IS NOT NULL",
        )
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(internal)?;
    Ok(owners
        .iter()
        .filter_map(|b| NodeId::from_slice(b))
        .collect())
}
