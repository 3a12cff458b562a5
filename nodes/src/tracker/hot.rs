//! The tracker's writes, decided from memory.
//!
//! [`Hot`] holds what every write must check: all experiments by name, and for the runs
//! in use their info, params (written once) and the summary of each metric key. A write
//! is decided against it without touching SQLite; what it changes is a [`Changes`] that
//! the tracker appends to its journal, then applies to `Hot` ([`Hot::commit`]), and the
//! journal's applier brings SQLite up to date after the reply.
//!
//! A run not in memory is loaded from SQLite on first use. Runs are dropped from memory
//! (least recently used first, past [`MAX_RUNS`]) only once every change to them is
//! applied, so SQLite is complete for any run that is not in memory.
//!
//! **Duplicate metric values.** A value whose `(step, timestamp)` comes after every value
//! of its key cannot be a duplicate: that is the common case, decided from the key's
//! summary. Any other value is looked for among the batch's earlier values, the key's
//! values not yet applied (kept with their key until applied), and SQLite.

use std::collections::{HashMap, VecDeque};

use rusqlite::{params, Connection, OptionalExtension};

use mlmesh::protocol::tracking::{
    self, limits, Experiment, ExperimentCreate, ExperimentId, LogBatch, Logged, MetricsLogged,
    RunEnd, RunId, RunInfo, RunStart, RunStatus,
};
use mlmesh::protocol::{Code, NodeId, Status};

use super::change::{Change, Changes, KeyPoints, Point, Summary};
use super::read::{experiment_tags, run_info};
use super::Settings;
use crate::serve::Meta;
use crate::store::{internal, Done};
use crate::FastMap;

type Result<T> = std::result::Result<T, Status>;

/// Runs kept in memory, at most (more while changes to them are not yet applied).
pub(super) const MAX_RUNS: usize = 4096;
/// Past [`MAX_RUNS`], runs are dropped from memory this often (in commits).
const EVICT_EVERY: u64 = 64;
/// Values not yet applied are swept from every key this often (in commits).
const SWEEP_EVERY: u64 = 4096;

/// A metric key of a run in memory.
#[derive(Debug)]
struct Key {
    summary: Summary,
    /// Values journaled and perhaps not applied yet, with their sequence numbers.
    pending: VecDeque<(u64, Point)>,
}

impl Key {
    fn forget_applied(&mut self, applied: u64) {
        while self.pending.front().is_some_and(|(seq, _)| *seq <= applied) {
            self.pending.pop_front();
        }
    }
}

/// A run in memory.
#[derive(Debug)]
struct Run {
    info: RunInfo,
    params: FastMap<String, String>,
    keys: FastMap<String, Key>,
    /// The last journal entry that changed it.
    last_seq: u64,
    /// When it was last used, in [`Hot::clock`] ticks.
    used: u64,
}

/// What a write decided: its reply and events, and the changes to journal.
#[derive(Debug, Default)]
pub(super) struct Decided {
    pub(super) done: Done,
    pub(super) changes: Changes,
}

impl Decided {
    /// Nothing changed yet; the reply is `value`.
    fn reply<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self {
            done: Done::reply(value)?,
            changes: Changes::default(),
        })
    }

    /// A new experiment: its event, and its change to journal.
    fn experiment_created(&mut self, exp: Experiment) {
        self.done = std::mem::take(&mut self.done).event(tracking::EXPERIMENT_CREATED, exp.clone());
        self.changes.0.push(Change::Experiment(exp));
    }
}

/// The tracker's state in memory; see the module docs.
#[derive(Debug)]
pub(super) struct Hot {
    experiments: FastMap<String, Experiment>,
    runs: FastMap<RunId, Run>,
    /// A read connection: runs loaded on first use, values looked up as duplicates.
    lookup: Connection,
    clock: u64,
    commits: u64,
}

fn not_found(field: &str, what: String) -> Status {
    Status::error(Code::NotFound, what).with_field(field)
}

impl Hot {
    /// Loads every experiment; runs are loaded when used.
    pub(super) fn load(lookup: Connection) -> Result<Self> {
        let mut experiments = FastMap::default();
        {
            let mut st = lookup
                .prepare("SELECT id, uid, name, artifact_location, created_ms FROM experiments")
                .map_err(internal)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(internal)?;
            for row in rows {
                let (row, uid, name, artifact_location, created_ms) = row.map_err(internal)?;
                let exp = Experiment {
                    id: ExperimentId::parse(&uid).map_err(internal)?,
                    name: name.clone(),
                    artifact_location,
                    tags: experiment_tags(&lookup, row)?,
                    created_ms: created_ms as u64,
                };
                experiments.insert(name, exp);
            }
        }
        Ok(Self {
            experiments,
            runs: FastMap::default(),
            lookup,
            clock: 0,
            commits: 0,
        })
    }

    /// The run `id`, loaded from SQLite if it is not in memory; `None` if there is no
    /// such run.
    fn run(&mut self, id: &RunId, node: NodeId) -> Result<Option<&mut Run>> {
        self.clock += 1;
        let clock = self.clock;
        if !self.runs.contains_key(id) {
            let Some(run) = self.load_run(id, node)? else {
                return Ok(None);
            };
            self.runs.insert(*id, run);
        }
        let run = self.runs.get_mut(id);
        if let Some(run) = run {
            run.used = clock;
            return Ok(Some(run));
        }
        Ok(None)
    }

    fn load_run(&self, id: &RunId, node: NodeId) -> Result<Option<Run>> {
        let c = &self.lookup;
        let Some((row, info)) = run_info(c, id, node)? else {
            return Ok(None);
        };
        let params = c
            .prepare_cached("SELECT key, value FROM params WHERE run = ?1")
            .and_then(|mut st| {
                st.query_map([row], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<FastMap<String, String>>>()
            })
            .map_err(internal)?;
        let keys = c
            .prepare_cached(
                "SELECT key, last_bits, last_step, last_ts, min, max, count
                 FROM metric_keys WHERE run = ?1",
            )
            .and_then(|mut st| {
                st.query_map([row], |r| {
                    let summary = Summary {
                        last: Point {
                            bits: r.get::<_, i64>(1)? as u64,
                            step: r.get(2)?,
                            ts: r.get::<_, i64>(3)? as u64,
                        },
                        min: r.get(4)?,
                        max: r.get(5)?,
                        count: r.get::<_, i64>(6)? as u64,
                    };
                    let key = Key {
                        summary,
                        pending: VecDeque::new(),
                    };
                    Ok((r.get::<_, String>(0)?, key))
                })?
                .collect::<rusqlite::Result<FastMap<String, Key>>>()
            })
            .map_err(internal)?;
        Ok(Some(Run {
            info,
            params,
            keys,
            last_seq: 0,
            used: self.clock,
        }))
    }

    /// Whether value `p` of `key` in `run` is applied to SQLite.
    fn stored(&self, run: &RunId, key: &str, p: &Point) -> Result<bool> {
        self.lookup
            .prepare_cached(
                "SELECT 1 FROM metrics WHERE key_id = (SELECT k.id FROM metric_keys k
                 JOIN runs r ON r.id = k.run WHERE r.uid = ?1 AND k.key = ?2)
                 AND step = ?3 AND ts = ?4 AND bits = ?5",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![run.as_str(), key, p.step, p.ts as i64, p.bits as i64],
                    |_| Ok(()),
                )
                .optional()
            })
            .map(|found| found.is_some())
            .map_err(internal)
    }

    /// Applies journaled `changes` (entry `seq`) to memory; `applied` is how far SQLite
    /// is, for forgetting what it has.
    pub(super) fn commit(&mut self, changes: &Changes, seq: u64, applied: u64, node: NodeId) {
        for change in &changes.0 {
            match change {
                Change::Experiment(exp) => {
                    self.experiments.insert(exp.name.clone(), exp.clone());
                }
                Change::RunStarted { info, .. } => {
                    let mut info = info.clone();
                    info.tracker = node;
                    self.runs.insert(
                        info.id,
                        Run {
                            info,
                            params: FastMap::default(),
                            keys: FastMap::default(),
                            last_seq: seq,
                            used: self.clock,
                        },
                    );
                }
                Change::RunEnded {
                    run,
                    status,
                    end_ms,
                } => {
                    if let Some(r) = self.runs.get_mut(run) {
                        r.info.status = *status;
                        r.info.end_ms = Some(*end_ms);
                        r.last_seq = seq;
                    }
                }
                Change::Logged {
                    run, params, keys, ..
                } => {
                    let Some(r) = self.runs.get_mut(run) else {
                        continue;
                    };
                    r.last_seq = seq;
                    for p in params {
                        r.params.insert(p.key.clone(), p.value.clone());
                    }
                    for k in keys {
                        if !r.keys.contains_key(&k.key) {
                            let key = Key {
                                summary: Summary::EMPTY,
                                pending: VecDeque::new(),
                            };
                            r.keys.insert(k.key.clone(), key);
                        }
                        if let Some(key) = r.keys.get_mut(&k.key) {
                            key.summary = k.summary;
                            key.forget_applied(applied);
                            key.pending.extend(k.points.iter().map(|p| (seq, *p)));
                        }
                    }
                }
            }
        }
        self.commits += 1;
        if self.commits.is_multiple_of(SWEEP_EVERY) {
            for key in self.runs.values_mut().flat_map(|r| r.keys.values_mut()) {
                key.forget_applied(applied);
            }
        }
        // Not on every commit: while the applier is behind, few runs can go, and
        // looking costs a pass over all of them.
        if self.runs.len() > MAX_RUNS && self.commits.is_multiple_of(EVICT_EVERY) {
            self.evict(applied);
        }
    }

    /// Drops the least recently used runs whose changes are all applied, down to three
    /// quarters of [`MAX_RUNS`].
    fn evict(&mut self, applied: u64) {
        let mut done: Vec<(u64, RunId)> = self
            .runs
            .iter()
            .filter(|(_, r)| r.last_seq <= applied)
            .map(|(id, r)| (r.used, *id))
            .collect();
        done.sort_unstable();
        let excess = self.runs.len().saturating_sub(MAX_RUNS * 3 / 4);
        for (_, id) in done.into_iter().take(excess) {
            self.runs.remove(&id);
        }
    }

    /// `tracking.experiment.create`: get or create by name.
    pub(super) fn experiment_create(
        &mut self,
        req: ExperimentCreate,
        settings: &Settings,
        meta: Meta,
    ) -> Result<Decided> {
        limits::check_experiment_create(&req)?;
        let (exp, created) = self.experiment(&req, settings, meta);
        let mut d = Decided::reply(&exp)?;
        if created {
            d.experiment_created(exp);
        }
        Ok(d)
    }

    fn experiment(
        &self,
        req: &ExperimentCreate,
        settings: &Settings,
        meta: Meta,
    ) -> (Experiment, bool) {
        if let Some(exp) = self.experiments.get(&req.name) {
            return (exp.clone(), false);
        }
        let id = ExperimentId::new();
        let artifact_location = req
            .artifact_location
            .clone()
            .unwrap_or_else(|| format!("{}/{id}", settings.artifact_root));
        let exp = Experiment {
            id,
            name: req.name.clone(),
            artifact_location,
            tags: req.tags.clone(),
            created_ms: meta.now_ms,
        };
        (exp, true)
    }

    /// `tracking.run.start`, creating the experiment if it is new.
    pub(super) fn run_start(
        &mut self,
        req: RunStart,
        settings: &Settings,
        meta: Meta,
    ) -> Result<Decided> {
        limits::check_run_start(&req)?;
        let wanted = ExperimentCreate {
            name: req.experiment.clone(),
            ..ExperimentCreate::default()
        };
        let (exp, created) = self.experiment(&wanted, settings, meta);
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
        let mut d = Decided::reply(&info)?;
        if created {
            d.experiment_created(exp);
        }
        d.done = d.done.event(tracking::RUN_STARTED, info.clone());
        d.changes.0.push(Change::RunStarted {
            info,
            tags: req.tags,
        });
        Ok(d)
    }

    /// `tracking.run.end`.
    pub(super) fn run_end(&mut self, req: RunEnd, meta: Meta) -> Result<Decided> {
        limits::check_run_end(&req)?;
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
        let run = self
            .run(&req.run, meta.node)?
            .ok_or_else(|| not_found("run", format!("no run {} on this tracker", req.run)))?;
        let end_ms = req.end_ms.unwrap_or(meta.now_ms);
        let mut info = run.info.clone();
        info.status = req.status;
        info.end_ms = Some(end_ms);
        info.tracker = meta.node;
        Ok(Decided {
            done: Done::reply(&info)?.event(tracking::RUN_ENDED, info),
            changes: Changes(vec![Change::RunEnded {
                run: req.run,
                status: req.status,
                end_ms,
            }]),
        })
    }

    /// Marks CRASHED the RUNNING runs of `owner`: it left the mesh without ending them.
    pub(super) fn crash(&mut self, owner: NodeId, meta: Meta) -> Result<Decided> {
        let mut ids: Vec<RunId> = self
            .runs
            .values()
            .filter(|r| r.info.owner == owner && r.info.status == RunStatus::Running)
            .map(|r| r.info.id)
            .collect();
        // Runs not in memory are complete in SQLite; those in memory are judged there.
        let stored: Vec<String> = self
            .lookup
            .prepare_cached("SELECT uid FROM runs WHERE owner = ?1 AND status = 'RUNNING'")
            .and_then(|mut st| {
                st.query_map([&owner.as_bytes()[..]], |r| r.get(0))?
                    .collect()
            })
            .map_err(internal)?;
        for uid in stored {
            if let Ok(id) = RunId::parse(&uid) {
                if !self.runs.contains_key(&id) {
                    ids.push(id);
                }
            }
        }
        let mut d = Decided::default();
        for id in ids {
            let Some(run) = self.run(&id, meta.node)? else {
                continue;
            };
            if run.info.status != RunStatus::Running {
                continue;
            }
            let mut info = run.info.clone();
            info.status = RunStatus::Crashed;
            info.end_ms = Some(meta.now_ms);
            info.tracker = meta.node;
            d.done = d.done.event(tracking::RUN_ENDED, info);
            d.changes.0.push(Change::RunEnded {
                run: id,
                status: RunStatus::Crashed,
                end_ms: meta.now_ms,
            });
        }
        Ok(d)
    }

    /// `tracking.run.log`: params (write-once), metrics (append-only, exact duplicates
    /// dropped), tags (last write wins), inputs; all or nothing.
    pub(super) fn run_log(&mut self, batch: LogBatch, meta: Meta) -> Result<Decided> {
        limits::check_log(&batch)?;
        // Loaded (or found) first: the borrows below read it while deciding.
        self.run(&batch.run, meta.node)?
            .ok_or_else(|| not_found("run", format!("no run {} on this tracker", batch.run)))?;
        let run = &self.runs[&batch.run];

        let mut new_params = Vec::new();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (i, p) in batch.params.iter().enumerate() {
            let existing = run
                .params
                .get(&p.key)
                .map(String::as_str)
                .or_else(|| seen.get(p.key.as_str()).copied());
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
                    seen.insert(&p.key, &p.value);
                    new_params.push(p.clone());
                }
            }
        }

        let mut logged = Logged::default();
        // Sized for the usual batch, a few keys: grown from empty, these two were a
        // tenth of a logged metric's decision.
        let mut keys: Vec<KeyPoints> = Vec::with_capacity(batch.metrics.len().min(8));
        // The batch's first value of each of `keys`, and (from 8 keys on) an index of them.
        let mut first_of: Vec<usize> = Vec::with_capacity(keys.capacity());
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut duplicates: Vec<usize> = Vec::new();
        for (i, m) in batch.metrics.iter().enumerate() {
            let p = Point {
                step: m.step,
                ts: m.timestamp,
                bits: m.value.to_bits(),
            };
            let found = if keys.len() < 8 {
                keys.iter().position(|k| k.key == m.key)
            } else {
                if index.is_empty() {
                    for (at, &first) in first_of.iter().enumerate() {
                        index.insert(batch.metrics[first].key.as_str(), at);
                    }
                }
                index.get(m.key.as_str()).copied()
            };
            let at = found.unwrap_or_else(|| {
                let summary = run.keys.get(&m.key).map_or(Summary::EMPTY, |k| k.summary);
                keys.push(KeyPoints {
                    key: m.key.clone(),
                    points: Vec::new(),
                    summary,
                });
                first_of.push(i);
                if !index.is_empty() {
                    index.insert(m.key.as_str(), keys.len() - 1);
                }
                keys.len() - 1
            });
            let kp = &mut keys[at];
            let duplicate = !kp.summary.is_new(&p)
                && (kp.points.contains(&p)
                    || run
                        .keys
                        .get(&m.key)
                        .is_some_and(|k| k.pending.iter().any(|(_, q)| *q == p))
                    || self.stored(&batch.run, &m.key, &p)?);
            if duplicate {
                logged.duplicates += 1;
                duplicates.push(i);
                continue;
            }
            kp.summary.add(&p);
            kp.points.push(p);
            logged.metrics += 1;
        }
        keys.retain(|k| !k.points.is_empty());

        let experiment_id = run.info.experiment_id;
        let LogBatch {
            run,
            params,
            metrics,
            tags,
            inputs,
        } = batch;
        // The event carries the values written: moved, not copied.
        let written: Vec<_> = if duplicates.is_empty() {
            metrics
        } else {
            let mut dups = duplicates.into_iter().peekable();
            metrics
                .into_iter()
                .enumerate()
                .filter(|(i, _)| dups.next_if_eq(i).is_none())
                .map(|(_, m)| m)
                .collect()
        };
        let mut done = Done::reply(&logged)?;
        if !written.is_empty() {
            done = done.event(
                tracking::METRICS_LOGGED,
                MetricsLogged {
                    run,
                    experiment_id,
                    metrics: written,
                },
            );
        }
        if !params.is_empty() {
            done = done.event(
                tracking::PARAMS_LOGGED,
                tracking::ParamsLogged { run, params },
            );
        }
        if !tags.is_empty() {
            done = done.event(
                tracking::TAGS_SET,
                tracking::TagsSet {
                    run,
                    tags: tags.clone(),
                },
            );
        }
        if !inputs.is_empty() {
            done = done.event(
                tracking::INPUTS_LOGGED,
                tracking::InputsLogged {
                    run,
                    inputs: inputs.clone(),
                },
            );
        }
        let mut changes = Changes::default();
        if !(new_params.is_empty() && tags.is_empty() && inputs.is_empty() && keys.is_empty()) {
            changes.0.push(Change::Logged {
                run,
                params: new_params,
                tags,
                inputs,
                keys,
            });
        }
        Ok(Decided { done, changes })
    }
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
