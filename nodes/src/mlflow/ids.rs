//! The adapter's records: mlmesh ids of MLflow experiments, and the runs it started.
//!
//! An MLflow experiment id that is a plain decimal integer (MLflow's own) maps to its
//! value in 32 hex digits, both ways, with no state; any other is given a fresh id,
//! kept in the `ids` table so that it stays the same across restarts. The table is read
//! first, so the two kinds never collide.

use rusqlite::{params, Connection, OptionalExtension};

use mlmesh::protocol::tracking::{ExperimentId, RunId};
use mlmesh::protocol::{NodeId, Status};

use super::{Change, Inner};
use crate::store::{internal, Done};

/// Run states in the `runs` table.
pub(crate) const OPEN: i64 = 0;
pub(crate) const ENDED: i64 = 1;
pub(crate) const CRASHED: i64 = 2;

/// The id of a canonical decimal integer, if `mlflow` is one.
fn integer_id(mlflow: &str) -> Option<ExperimentId> {
    let canonical = !mlflow.is_empty()
        && mlflow.bytes().all(|b| b.is_ascii_digit())
        && (mlflow == "0" || !mlflow.starts_with('0'));
    let n: u128 = canonical.then(|| mlflow.parse().ok()).flatten()?;
    ExperimentId::parse(&format!("{n:032x}")).ok()
}

/// The mlmesh id of an MLflow experiment id.
pub(crate) async fn experiment_uid(inner: &Inner, mlflow: &str) -> Result<ExperimentId, Status> {
    if let Some(id) = integer_id(mlflow) {
        return Ok(id);
    }
    let key = mlflow.to_owned();
    let found: Option<String> = inner
        .store
        .read(move |c| {
            c.prepare_cached("SELECT uid FROM ids WHERE kind = 'e' AND mlflow = ?1")
                .and_then(|mut st| st.query_row([&key], |r| r.get(0)).optional())
                .map_err(internal)
        })
        .await?;
    if let Some(uid) = found {
        return ExperimentId::parse(&uid).map_err(internal);
    }
    let key = mlflow.to_owned();
    let done = inner
        .store
        .write(
            None,
            Box::new(move |c| {
                let fresh = ExperimentId::new();
                c.prepare_cached(
                    "INSERT INTO ids(kind, mlflow, uid) VALUES ('e', ?1, ?2)
                     ON CONFLICT(kind, mlflow) DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![key, fresh.as_str()]))
                .map_err(internal)?;
                let uid: String = c
                    .prepare_cached("SELECT uid FROM ids WHERE kind = 'e' AND mlflow = ?1")
                    .and_then(|mut st| st.query_row([&key], |r| r.get(0)))
                    .map_err(internal)?;
                Ok(Done {
                    reply: uid.into_bytes().into(),
                    events: Vec::new(),
                })
            }),
        )
        .await?;
    ExperimentId::parse(&String::from_utf8_lossy(&done.reply)).map_err(internal)
}

/// The MLflow id of an mlmesh experiment id, if it names one.
pub(crate) async fn experiment_mlflow(
    inner: &Inner,
    uid: &ExperimentId,
) -> Result<Option<String>, Status> {
    let key = uid.as_str().to_owned();
    let found: Option<String> = inner
        .store
        .read(move |c| {
            c.prepare_cached("SELECT mlflow FROM ids WHERE kind = 'e' AND uid = ?1")
                .and_then(|mut st| st.query_row([&key], |r| r.get(0)).optional())
                .map_err(internal)
        })
        .await?;
    if found.is_some() {
        return Ok(found);
    }
    Ok(u128::from_str_radix(uid.as_str(), 16)
        .ok()
        .map(|n| n.to_string()))
}

/// What the adapter knows of a run: its MLflow experiment id, its owner, its state.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub(crate) experiment: String,
    pub(crate) owner: Option<NodeId>,
    pub(crate) state: i64,
}

/// The records of `runs`, by run id (absent for runs the adapter never saw).
pub(crate) async fn runs(
    inner: &Inner,
    runs: Vec<String>,
) -> Result<std::collections::HashMap<String, RunRecord>, Status> {
    inner
        .store
        .read(move |c| {
            let mut st = c
                .prepare_cached("SELECT experiment, owner, state FROM runs WHERE run = ?1")
                .map_err(internal)?;
            let mut out = std::collections::HashMap::with_capacity(runs.len());
            for run in runs {
                let rec = st
                    .query_row([&run], |r| {
                        let owner: Option<Vec<u8>> = r.get(1)?;
                        Ok(RunRecord {
                            experiment: r.get(0)?,
                            owner: owner.and_then(|b| NodeId::from_slice(&b)),
                            state: r.get(2)?,
                        })
                    })
                    .optional()
                    .map_err(internal)?;
                if let Some(rec) = rec {
                    out.insert(run, rec);
                }
            }
            Ok(out)
        })
        .await
}

/// The record of one run.
pub(crate) async fn run(inner: &Inner, run: &RunId) -> Result<Option<RunRecord>, Status> {
    let key = run.as_str().to_owned();
    Ok(runs(inner, vec![key.clone()]).await?.remove(&key))
}

/// The open runs of `owner`, or of every owner (with the owner).
pub(crate) async fn open_runs(
    inner: &Inner,
    owner: Option<NodeId>,
) -> Result<Vec<(String, NodeId)>, Status> {
    inner
        .store
        .read(move |c| {
            let rows = |sql: &str, args: &[&dyn rusqlite::ToSql]| {
                c.prepare_cached(sql).and_then(|mut st| {
                    st.query_map(args, |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
            };
            let found = match owner {
                Some(o) => rows(
                    "SELECT run, owner FROM runs WHERE state = 0 AND owner = ?1",
                    &[&&o.as_bytes()[..]],
                ),
                None => rows(
                    "SELECT run, owner FROM runs WHERE state = 0 AND owner IS NOT NULL",
                    &[],
                ),
            }
            .map_err(internal)?;
            Ok(found
                .into_iter()
                .filter_map(|(run, o)| Some((run, NodeId::from_slice(&o)?)))
                .collect())
        })
        .await
}

/// Applies `changes` inside the store's transaction.
pub(crate) fn apply(c: &Connection, changes: &[Change]) -> Result<(), Status> {
    for change in changes {
        match change {
            Change::Run {
                run,
                experiment,
                owner,
            } => {
                let owner = owner.map(|o| o.as_bytes().to_vec());
                c.prepare_cached(
                    "INSERT INTO runs(run, experiment, owner, state) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(run) DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![run, experiment, owner, OPEN]))
                .map_err(internal)?;
            }
            Change::RunState { run, state } => {
                c.prepare_cached("UPDATE runs SET state = ?2 WHERE run = ?1")
                    .and_then(|mut st| st.execute(params![run, state]))
                    .map_err(internal)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_experiment_ids_map_both_ways_without_state() {
        let id = integer_id("7").expect("an integer");
        assert_eq!(id.as_str(), "00000000000000000000000000000007");
        assert_eq!(integer_id("0").expect("zero").as_str(), &"0".repeat(32));
        assert!(
            integer_id("007").is_none(),
            "not canonical: kept in the table"
        );
        assert!(integer_id("abc").is_none());
        assert!(integer_id("").is_none());
        let big = "340282366920938463463374607431768211455"; // u128::MAX
        assert_eq!(integer_id(big).expect("fits").as_str(), "f".repeat(32));
        assert!(integer_id("340282366920938463463374607431768211456").is_none());
    }
}
