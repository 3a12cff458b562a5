//! The tracker's reads: on a read connection (a snapshot of what is committed), except
//! the lookups that loading a run into memory shares.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rusqlite::{params, Connection, OptionalExtension, Row};

use mlmesh::protocol::tracking::{
    DatasetInput, Experiment, ExperimentGet, ExperimentId, Metric, MetricHistory, MetricPage,
    MetricSummary, Run, RunGet, RunId, RunInfo, RunPage, RunSearch, RunStatus,
};
use mlmesh::protocol::{Code, NodeId, Status};

use super::search;
use crate::store::internal;

type Result<T> = std::result::Result<T, Status>;

/// Page sizes.
const MAX_SEARCH_PAGE: u32 = 50_000;
const MAX_HISTORY_PAGE: u32 = 25_000;
/// The encoded values of one history page, at most.
const HISTORY_PAGE_BYTES: usize = 768 * 1024;

fn invalid(field: &str, message: String) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
}

pub(super) fn experiment_tags(c: &Connection, row: i64) -> Result<BTreeMap<String, String>> {
    c.prepare_cached("SELECT key, value FROM experiment_tags WHERE experiment = ?1")
        .and_then(|mut st| {
            st.query_map([row], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(internal)
}

fn experiment_of(r: &Row<'_>) -> rusqlite::Result<(i64, Experiment)> {
    let uid: String = r.get(1)?;
    Ok((
        r.get(0)?,
        Experiment {
            id: ExperimentId::parse(&uid).unwrap_or_default(),
            name: r.get(2)?,
            artifact_location: r.get(3)?,
            tags: BTreeMap::new(),
            created_ms: r.get::<_, i64>(4)? as u64,
        },
    ))
}

/// An experiment and its row, by name.
pub(super) fn experiment_by_name(c: &Connection, name: &str) -> Result<Option<(i64, Experiment)>> {
    let found = c
        .prepare_cached(
            "SELECT id, uid, name, artifact_location, created_ms FROM experiments WHERE name = ?1",
        )
        .and_then(|mut st| st.query_row([name], experiment_of).optional())
        .map_err(internal)?;
    let Some((row, mut exp)) = found else {
        return Ok(None);
    };
    exp.tags = experiment_tags(c, row)?;
    Ok(Some((row, exp)))
}

/// `tracking.experiment.get`.
pub(super) fn experiment_get(c: &Connection, req: ExperimentGet) -> Result<Experiment> {
    let found = match (&req.id, &req.name) {
        (Some(id), _) => {
            let found = c
                .prepare_cached(
                    "SELECT id, uid, name, artifact_location, created_ms FROM experiments WHERE uid = ?1",
                )
                .and_then(|mut st| st.query_row([id.as_str()], experiment_of).optional())
                .map_err(internal)?;
            match found {
                Some((row, mut exp)) => {
                    exp.tags = experiment_tags(c, row)?;
                    Some(exp)
                }
                None => None,
            }
        }
        (None, Some(name)) => experiment_by_name(c, name)?.map(|(_, e)| e),
        (None, None) => return Err(invalid("id", "name an experiment by `id` or `name`".into())),
    };
    found.ok_or_else(|| {
        let field = if req.id.is_some() { "id" } else { "name" };
        Status::error(Code::NotFound, "no such experiment on this tracker").with_field(field)
    })
}

/// The columns [`info_of`] reads, over `runs r JOIN experiments e`.
const INFO_COLUMNS: &str =
    "r.id, r.uid, e.uid, r.name, r.status, r.start_ms, r.end_ms, r.owner, r.parent, r.artifact_uri";

fn info_of(r: &Row<'_>, tracker: NodeId) -> rusqlite::Result<(i64, RunInfo)> {
    let uid: String = r.get(1)?;
    let exp: String = r.get(2)?;
    let status: String = r.get(4)?;
    let owner: Option<Vec<u8>> = r.get(7)?;
    let parent: Option<String> = r.get(8)?;
    Ok((
        r.get(0)?,
        RunInfo {
            id: RunId::parse(&uid).unwrap_or_default(),
            experiment_id: ExperimentId::parse(&exp).unwrap_or_default(),
            name: r.get(3)?,
            status: RunStatus::parse(&status).unwrap_or(RunStatus::Running),
            start_ms: r.get::<_, i64>(5)? as u64,
            end_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            owner: owner
                .and_then(|b| NodeId::from_slice(&b))
                .unwrap_or(NodeId::nil()),
            tracker,
            parent: parent.and_then(|p| RunId::parse(&p).ok()),
            artifact_uri: r.get(9)?,
        },
    ))
}

/// A run's info and row; `tracker` is this node (not stored: it changes with every start).
pub(super) fn run_info(
    c: &Connection,
    run: &RunId,
    tracker: NodeId,
) -> Result<Option<(i64, RunInfo)>> {
    c.prepare_cached(&format!(
        "SELECT {INFO_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment WHERE r.uid = ?1"
    ))
    .and_then(|mut st| st.query_row([run.as_str()], |r| info_of(r, tracker)).optional())
    .map_err(internal)
}

fn summary_of(r: &Row<'_>, at: usize) -> rusqlite::Result<MetricSummary> {
    Ok(MetricSummary {
        last: f64::from_bits(r.get::<_, i64>(at)? as u64),
        step: r.get(at + 1)?,
        timestamp: r.get::<_, i64>(at + 2)? as u64,
        min: r.get(at + 3)?,
        max: r.get(at + 4)?,
        count: r.get::<_, i64>(at + 5)? as u64,
    })
}

/// The data of runs `rows` (params, tags, metric summaries, inputs), each query once
/// for all of them.
fn load_runs(c: &Connection, infos: Vec<(i64, RunInfo)>) -> Result<Vec<Run>> {
    if infos.is_empty() {
        return Ok(Vec::new());
    }
    // Our own integer row ids, never user input: safe to put in the text.
    let mut list = String::with_capacity(infos.len() * 8);
    for (i, (row, _)) in infos.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        let _ = write!(list, "{row}");
    }
    let mut runs: Vec<Run> = Vec::with_capacity(infos.len());
    let mut at: HashMap<i64, usize> = HashMap::with_capacity(infos.len());
    for (row, info) in infos {
        at.insert(row, runs.len());
        runs.push(Run {
            info,
            params: BTreeMap::new(),
            tags: BTreeMap::new(),
            metrics: BTreeMap::new(),
            inputs: Vec::new(),
        });
    }
    let q = |sql: String| c.prepare(&sql).map_err(internal);
    let mut st = q(format!(
        "SELECT run, key, value FROM params WHERE run IN ({list})"
    ))?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
        .map_err(internal)?;
    for row in rows {
        let (run, k, v) = row.map_err(internal)?;
        runs[at[&run]].params.insert(k, v);
    }
    let mut st = q(format!(
        "SELECT run, key, value FROM tags WHERE run IN ({list})"
    ))?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
        .map_err(internal)?;
    for row in rows {
        let (run, k, v) = row.map_err(internal)?;
        runs[at[&run]].tags.insert(k, v);
    }
    let mut st = q(format!(
        "SELECT run, key, last_bits, last_step, last_ts, min, max, count
         FROM metric_keys WHERE run IN ({list}) AND count > 0"
    ))?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get(1)?, summary_of(r, 2)?))
        })
        .map_err(internal)?;
    for row in rows {
        let (run, k, s) = row.map_err(internal)?;
        runs[at[&run]].metrics.insert(k, s);
    }
    let mut st = q(format!(
        "SELECT run, name, digest, source, context FROM inputs WHERE run IN ({list})"
    ))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                DatasetInput {
                    name: r.get(1)?,
                    digest: r.get(2)?,
                    source: r.get(3)?,
                    context: r.get(4)?,
                },
            ))
        })
        .map_err(internal)?;
    for row in rows {
        let (run, d) = row.map_err(internal)?;
        runs[at[&run]].inputs.push(d);
    }
    Ok(runs)
}

/// `tracking.run.get`.
pub(super) fn run_get(c: &Connection, req: RunGet, tracker: NodeId) -> Result<Run> {
    let (row, info) = run_info(c, &req.run, tracker)?.ok_or_else(|| {
        Status::error(
            Code::NotFound,
            format!("no run {} on this tracker", req.run),
        )
        .with_field("run")
    })?;
    let mut runs = load_runs(c, vec![(row, info)])?;
    runs.pop()
        .ok_or_else(|| Status::error(Code::Internal, "the run vanished"))
}

fn offset_of(token: &Option<String>) -> Result<u64> {
    match token {
        None => Ok(0),
        Some(t) => t
            .strip_prefix("o")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                invalid(
                    "page_token",
                    format!("`{t}` is not a page token of this tracker"),
                )
            }),
    }
}

fn check_page(max: u32, limit: u32) -> Result<()> {
    if max == 0 || max > limit {
        return Err(invalid(
            "max_results",
            format!("max_results must be 1 to {limit}, not {max}"),
        ));
    }
    Ok(())
}

/// `tracking.metric.history`: every value of one key, by step, then timestamp.
pub(super) fn metric_history(c: &Connection, mut req: MetricHistory) -> Result<MetricPage> {
    check_page(req.max_results, MAX_HISTORY_PAGE)?;
    let offset = offset_of(&req.page_token)?;
    // A page must fit in a reply under the default 1 MiB frame limit: a value encodes in
    // at most 56 bytes plus its key, so pages are cut to 768 KiB of values (12,000 or so
    // for a short key) whatever max_results says; the token carries on from there.
    let fits = (HISTORY_PAGE_BYTES / (56 + req.key.len())).max(1);
    req.max_results = req.max_results.min(u32::try_from(fits).unwrap_or(u32::MAX));
    let found = c
        .prepare_cached("SELECT 1 FROM runs WHERE uid = ?1")
        .and_then(|mut st| st.query_row([req.run.as_str()], |_| Ok(())).optional())
        .map_err(internal)?;
    if found.is_none() {
        return Err(Status::error(
            Code::NotFound,
            format!("no run {} on this tracker", req.run),
        )
        .with_field("run"));
    }
    let mut metrics: Vec<Metric> = c
        .prepare_cached(
            "SELECT m.step, m.ts, m.bits FROM metrics m
             JOIN metric_keys k ON k.id = m.key_id
             JOIN runs r ON r.id = k.run
             WHERE r.uid = ?1 AND k.key = ?2
             ORDER BY m.step, m.ts, m.bits LIMIT ?3 OFFSET ?4",
        )
        .and_then(|mut st| {
            st.query_map(
                params![
                    req.run.as_str(),
                    req.key,
                    i64::from(req.max_results) + 1,
                    offset as i64
                ],
                |r| {
                    Ok(Metric {
                        key: req.key.clone(),
                        step: r.get(0)?,
                        timestamp: r.get::<_, i64>(1)? as u64,
                        value: f64::from_bits(r.get::<_, i64>(2)? as u64),
                    })
                },
            )?
            .collect()
        })
        .map_err(internal)?;
    let next = (metrics.len() > req.max_results as usize).then(|| {
        metrics.truncate(req.max_results as usize);
        format!("o{}", offset + u64::from(req.max_results))
    });
    Ok(MetricPage {
        metrics,
        next_page_token: next,
    })
}

/// `tracking.run.search`.
pub(super) fn run_search(c: &Connection, req: RunSearch, tracker: NodeId) -> Result<RunPage> {
    check_page(req.max_results, MAX_SEARCH_PAGE)?;
    let offset = offset_of(&req.page_token)?;
    let mut experiments = Vec::with_capacity(req.experiments.len());
    for (i, name) in req.experiments.iter().enumerate() {
        match experiment_by_name(c, name)? {
            Some((row, _)) => experiments.push(row),
            None => {
                return Err(Status::error(
                    Code::NotFound,
                    format!("no experiment named {name:?} on this tracker"),
                )
                .with_field(format!("experiments[{i}]")))
            }
        }
    }
    let query = search::run_query(
        &req.filter,
        &req.order_by,
        &experiments,
        req.max_results.saturating_add(1),
        offset,
    )
    .map_err(|e| {
        let field = match e.index {
            Some(i) => format!("{}[{i}]", e.field),
            None => e.field.to_string(),
        };
        Status::error(Code::InvalidArgument, e.to_string()).with_field(field)
    })?;
    let ids: Vec<i64> = c
        .prepare(&query.sql)
        .and_then(|mut st| {
            st.query_map(rusqlite::params_from_iter(query.params.iter()), |r| {
                r.get(0)
            })?
            .collect()
        })
        .map_err(internal)?;
    let more = ids.len() > req.max_results as usize;
    let ids = &ids[..ids.len().min(req.max_results as usize)];
    let mut infos = Vec::with_capacity(ids.len());
    {
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {INFO_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment WHERE r.id = ?1"
            ))
            .map_err(internal)?;
        for id in ids {
            infos.push(
                st.query_row([id], |r| info_of(r, tracker))
                    .map_err(internal)?,
            );
        }
    }
    let mut runs = load_runs(c, infos)?;
    // Runs with many params and tags are large: a page ends where the bytes run out, and
    // the token carries on from there.
    let fit = crate::serve::fitting(&runs);
    let more = more || fit < runs.len();
    runs.truncate(fit);
    Ok(RunPage {
        next_page_token: more.then(|| format!("o{}", offset + runs.len() as u64)),
        runs,
    })
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
