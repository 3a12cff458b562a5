//! What the tracker's journal carries: changes decided in memory ([`super::hot`]), and
//! how each is applied to SQLite. A change holds its outcome (the new summary of a
//! metric key, not a rule to compute it), so that applying it is the same whenever it
//! runs: after the reply, or at the next open after a crash.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use mlmesh::protocol::tracking::{
    DatasetInput, Experiment, Param, RunId, RunInfo, RunStatus, Tag, Tags,
};

use crate::journal;

/// One metric value as stored: the value by its bits, so NaN payloads survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct Point {
    pub(super) step: i64,
    pub(super) ts: u64,
    pub(super) bits: u64,
}

/// Where a run's metric key stands: its latest value, min, max and count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Summary {
    pub(super) last: Point,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) count: u64,
}

impl Summary {
    pub(super) const EMPTY: Self = Self {
        last: Point {
            step: 0,
            ts: 0,
            bits: 0,
        },
        min: None,
        max: None,
        count: 0,
    };

    /// Whether `p` is later than the latest value: higher step, then later timestamp,
    /// then (to be well defined) the larger value, NaN above every number.
    fn is_later(&self, p: &Point) -> bool {
        let key = |bits: u64| {
            let v = f64::from_bits(bits);
            if v.is_nan() {
                (1, 0.0)
            } else {
                (0, v)
            }
        };
        (p.step, p.ts)
            .cmp(&(self.last.step, self.last.ts))
            .then_with(|| {
                key(p.bits)
                    .partial_cmp(&key(self.last.bits))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .is_gt()
    }

    /// Whether `p` comes after every value of the key by `(step, timestamp)`, so it
    /// cannot be a duplicate of one.
    pub(super) fn is_new(&self, p: &Point) -> bool {
        self.count == 0 || (p.step, p.ts) > (self.last.step, self.last.ts)
    }

    pub(super) fn add(&mut self, p: &Point) {
        if self.count == 0 || self.is_later(p) {
            self.last = *p;
        }
        let v = f64::from_bits(p.bits);
        if !v.is_nan() {
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
        self.count += 1;
    }
}

/// The new values of one metric key of a run, and its summary after them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KeyPoints {
    pub(super) key: String,
    pub(super) points: Vec<Point>,
    pub(super) summary: Summary,
}

/// One decided change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Change {
    /// An experiment was created.
    Experiment(Experiment),
    /// A run was started, with its tags; its experiment exists (created by an earlier
    /// change, perhaps in the same entry).
    RunStarted { info: RunInfo, tags: Tags },
    /// A run ended (or was found CRASHED).
    RunEnded {
        run: RunId,
        status: RunStatus,
        end_ms: u64,
    },
    /// A `tracking.run.log`: new params only, tags (last write wins), inputs, the new
    /// metric values by key.
    Logged {
        run: RunId,
        params: Vec<Param>,
        tags: Vec<Tag>,
        inputs: Vec<DatasetInput>,
        keys: Vec<KeyPoints>,
    },
}

/// What one journal entry carries: the changes of one instruction, all or nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Changes(pub(super) Vec<Change>);

fn nan_null(bits: u64) -> Option<f64> {
    let v = f64::from_bits(bits);
    (!v.is_nan()).then_some(v)
}

fn run_row(c: &Connection, run: &RunId) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT id FROM runs WHERE uid = ?1")?
        .query_row([run.as_str()], |r| r.get(0))
}

impl Change {
    fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
        match self {
            Change::Experiment(exp) => {
                c.prepare_cached(
                    "INSERT INTO experiments(uid, name, artifact_location, created_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    exp.id.as_str(),
                    exp.name,
                    exp.artifact_location,
                    exp.created_ms
                ])?;
                let row = c.last_insert_rowid();
                let mut st = c.prepare_cached(
                    "INSERT INTO experiment_tags(experiment, key, value) VALUES (?1, ?2, ?3)",
                )?;
                for (k, v) in &exp.tags {
                    st.execute(params![row, k, v])?;
                }
            }
            Change::RunStarted { info, tags } => {
                c.prepare_cached(
                    "INSERT INTO runs(uid, experiment, name, status, start_ms, owner, parent,
                     artifact_uri)
                     VALUES (?1, (SELECT id FROM experiments WHERE uid = ?2), ?3, ?4, ?5, ?6,
                     ?7, ?8)",
                )?
                .execute(params![
                    info.id.as_str(),
                    info.experiment_id.as_str(),
                    info.name,
                    info.status.as_str(),
                    info.start_ms,
                    &info.owner.as_bytes()[..],
                    info.parent.as_ref().map(RunId::as_str),
                    info.artifact_uri,
                ])?;
                let row = c.last_insert_rowid();
                let mut st =
                    c.prepare_cached("INSERT INTO tags(run, key, value) VALUES (?1, ?2, ?3)")?;
                for (k, v) in tags {
                    st.execute(params![row, k, v])?;
                }
            }
            Change::RunEnded {
                run,
                status,
                end_ms,
            } => {
                c.prepare_cached("UPDATE runs SET status = ?2, end_ms = ?3 WHERE uid = ?1")?
                    .execute(params![run.as_str(), status.as_str(), end_ms])?;
            }
            Change::Logged {
                run,
                params: ps,
                tags,
                inputs,
                keys,
            } => {
                let row = run_row(c, run)?;
                let mut st = c.prepare_cached(
                    "INSERT OR IGNORE INTO params(run, key, value) VALUES (?1, ?2, ?3)",
                )?;
                for p in ps {
                    st.execute(params![row, p.key, p.value])?;
                }
                let mut st = c.prepare_cached(
                    "INSERT INTO tags(run, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(run, key) DO UPDATE SET value = excluded.value",
                )?;
                for t in tags {
                    st.execute(params![row, t.key, t.value])?;
                }
                let mut st = c.prepare_cached(
                    "INSERT OR IGNORE INTO inputs(run, name, digest, source, context)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for d in inputs {
                    st.execute(params![row, d.name, d.digest, d.source, d.context])?;
                }
                let mut summary = c.prepare_cached(
                    "INSERT INTO metric_keys(run, key, last, last_bits, last_step, last_ts, min,
                     max, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT(run, key) DO UPDATE SET last = excluded.last,
                     last_bits = excluded.last_bits, last_step = excluded.last_step,
                     last_ts = excluded.last_ts, min = excluded.min, max = excluded.max,
                     count = excluded.count
                     RETURNING id",
                )?;
                // Timestamps and value bits are stored as SQLite's signed 64-bit
                // integers, bit for bit.
                let mut insert = c.prepare_cached(
                    "INSERT OR IGNORE INTO metrics(key_id, step, ts, bits) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for k in keys {
                    let s = &k.summary;
                    let id: i64 = summary.query_row(
                        params![
                            row,
                            k.key,
                            nan_null(s.last.bits),
                            s.last.bits as i64,
                            s.last.step,
                            s.last.ts as i64,
                            s.min,
                            s.max,
                            s.count as i64
                        ],
                        |r| r.get(0),
                    )?;
                    for p in &k.points {
                        insert.execute(params![id, p.step, p.ts as i64, p.bits as i64])?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl journal::Change for Changes {
    fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
        self.0.iter().try_for_each(|change| change.apply(c))
    }
}
