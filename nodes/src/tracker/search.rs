//! SQL for `tracking.run.search`: a filter and orderings in the language of
//! [`crate::filter`] become one `SELECT r.id FROM runs r ...` over the tracker's schema.
//!
//! Every user value, keys included, is a bound parameter; the SQL text holds only fixed
//! fragments. Semantics are MLflow's:
//!
//! - a metric clause tests `metric_keys.last`; a run without the metric, or whose latest
//!   value is NaN (stored as NULL), never matches;
//! - a param or tag clause needs the key (`!=` included); `IS NULL` means the run lacks
//!   it;
//! - `LIKE` is translated to `GLOB` (`%`→`*`, `_`→`?`, literal `* ? [` bracketed), since
//!   SQLite's `LIKE` ignores ASCII case and `PRAGMA case_sensitive_like` is per
//!   connection; `ILIKE` is `LIKE ... ESCAPE '\'`, so it ignores ASCII case only. In both,
//!   `\` makes the next pattern character literal;
//! - orderings put runs without the value (no such metric, param or tag, NaN, no end
//!   time) last in both directions, then always `start_time DESC` and the row id, so
//!   pages are deterministic.

use std::fmt;

use mlmesh_protocol::tracking::RunStatus;
use rusqlite::types::Value as Sql;

use crate::filter::{self, Clause, Ident, Op, Value};

/// The most `order_by` entries in one search.
const MAX_ORDER_BY: usize = 10;

/// A search as SQL and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunQuery {
    /// `SELECT r.id FROM runs r WHERE ... ORDER BY ... LIMIT ? OFFSET ?`.
    pub(crate) sql: String,
    /// One value per `?`.
    pub(crate) params: Vec<Sql>,
}

/// A filter or ordering the tracker refuses: INVALID_ARGUMENT naming `field`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SearchError {
    /// `filter` or `order_by`.
    pub(crate) field: &'static str,
    /// Which `order_by` entry, for `order_by`.
    pub(crate) index: Option<usize>,
    /// Byte offset of the offending token in the filter or entry.
    pub(crate) pos: usize,
    /// What is wrong, for a person.
    pub(crate) message: String,
}

impl SearchError {
    fn filter(pos: usize, message: impl Into<String>) -> Self {
        Self {
            field: "filter",
            index: None,
            pos,
            message: message.into(),
        }
    }

    fn order_by(index: usize, pos: usize, message: impl Into<String>) -> Self {
        Self {
            field: "order_by",
            index: Some(index),
            pos,
            message: message.into(),
        }
    }
}

impl fmt::Display for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.field)?,
            None => f.write_str(self.field)?,
        }
        write!(f, " at position {}: {}", self.pos, self.message)
    }
}

impl std::error::Error for SearchError {}

/// What an attribute's values are.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    /// Text checked against the run statuses.
    Status,
    /// Unix milliseconds.
    Time,
    /// The experiment's uid, reached through `experiments`.
    Experiment,
}

/// An attribute of the run: its names, its column, what it takes.
struct Attribute {
    name: &'static str,
    alias: Option<&'static str>,
    column: &'static str,
    kind: Kind,
    ops: &'static [Op],
    orderable: bool,
}

const ATTRIBUTES: &[Attribute] = {
    use Op::*;
    &[
        Attribute {
            name: "run_id",
            alias: None,
            column: "r.uid",
            kind: Kind::Text,
            ops: &[Eq, Ne, In, NotIn],
            orderable: true,
        },
        Attribute {
            name: "run_name",
            alias: None,
            column: "r.name",
            kind: Kind::Text,
            ops: &[Eq, Ne, Like, ILike],
            orderable: true,
        },
        Attribute {
            name: "status",
            alias: None,
            column: "r.status",
            kind: Kind::Status,
            ops: &[Eq, Ne, In, NotIn],
            orderable: true,
        },
        Attribute {
            name: "start_time",
            alias: None,
            column: "r.start_ms",
            kind: Kind::Time,
            ops: &[Eq, Ne, Lt, Le, Gt, Ge],
            orderable: true,
        },
        Attribute {
            name: "end_time",
            alias: None,
            column: "r.end_ms",
            kind: Kind::Time,
            ops: &[Eq, Ne, Lt, Le, Gt, Ge, IsNull, IsNotNull],
            orderable: true,
        },
        Attribute {
            name: "artifact_uri",
            alias: None,
            column: "r.artifact_uri",
            kind: Kind::Text,
            ops: &[Eq, Ne, Like, ILike],
            orderable: false,
        },
        Attribute {
            name: "experiment_id",
            alias: None,
            column: "r.experiment",
            kind: Kind::Experiment,
            ops: &[Eq, Ne, In, NotIn],
            orderable: false,
        },
        Attribute {
            name: "parent_run_id",
            alias: Some("parent"),
            column: "r.parent",
            kind: Kind::Text,
            ops: &[Eq, Ne, In, NotIn, IsNull, IsNotNull],
            orderable: false,
        },
    ]
};

const STATUSES: [RunStatus; 5] = [
    RunStatus::Running,
    RunStatus::Finished,
    RunStatus::Failed,
    RunStatus::Killed,
    RunStatus::Crashed,
];

fn attribute(name: &str) -> Option<&'static Attribute> {
    ATTRIBUTES
        .iter()
        .find(|a| a.name == name || a.alias == Some(name))
}

fn names(pick: impl Fn(&Attribute) -> bool) -> String {
    let names: Vec<&str> = ATTRIBUTES
        .iter()
        .filter(|a| pick(a))
        .map(|a| a.name)
        .collect();
    names.join(", ")
}

/// Builds `SELECT r.id FROM runs r WHERE <experiment filter> AND <clauses> ORDER BY <order> LIMIT ? OFFSET ?`.
/// `experiments`: ids (runs.experiment) to restrict to; empty = all.
pub(crate) fn run_query(
    filter: &str,
    order_by: &[String],
    experiments: &[i64],
    limit: u32,
    offset: u64,
) -> Result<RunQuery, SearchError> {
    let parsed = filter::parse(filter).map_err(|e| SearchError::filter(e.pos, e.message))?;
    if order_by.len() > MAX_ORDER_BY {
        return Err(SearchError::order_by(
            MAX_ORDER_BY,
            0,
            format!("at most {MAX_ORDER_BY} order_by entries"),
        ));
    }
    let mut q = Builder::default();
    let mut conditions = Vec::with_capacity(parsed.clauses.len() + 1);
    if !experiments.is_empty() {
        q.params
            .extend(experiments.iter().map(|&id| Sql::Integer(id)));
        conditions.push(format!(
            "r.experiment IN ({})",
            placeholders(experiments.len())
        ));
    }
    for clause in &parsed.clauses {
        conditions.push(q.condition(clause)?);
    }
    let mut order = Vec::with_capacity(order_by.len() + 2);
    for (i, entry) in order_by.iter().enumerate() {
        order.push(q.ordering(i, entry)?);
    }
    order.push("r.start_ms DESC".to_owned());
    order.push("r.id DESC".to_owned());
    q.params.push(Sql::Integer(limit.into()));
    q.params
        .push(Sql::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
    let conditions = if conditions.is_empty() {
        "1".to_owned()
    } else {
        conditions.join(" AND ")
    };
    Ok(RunQuery {
        sql: format!(
            "SELECT r.id FROM runs r WHERE {conditions} ORDER BY {} LIMIT ? OFFSET ?",
            order.join(", ")
        ),
        params: q.params,
    })
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Accumulates parameters; each method returns SQL whose `?`s are the parameters it
/// pushed, in order, so fragments must be assembled in the order they are built.
#[derive(Default)]
struct Builder {
    params: Vec<Sql>,
}

impl Builder {
    fn condition(&mut self, clause: &Clause) -> Result<String, SearchError> {
        let err = |message: String| SearchError::filter(clause.pos, message);
        match &clause.ident {
            Ident::Metric(key) => {
                let n = number(clause)?;
                self.params.push(Sql::Text(key.clone()));
                self.params.push(Sql::Real(n));
                Ok(format!(
                    "EXISTS (SELECT 1 FROM metric_keys m WHERE m.run = r.id AND m.key = ? AND m.last {} ?)",
                    compare(clause)?
                ))
            }
            Ident::Param(key) | Ident::Tag(key) => {
                let table = if matches!(clause.ident, Ident::Param(_)) {
                    "params"
                } else {
                    "tags"
                };
                self.params.push(Sql::Text(key.clone()));
                let exists =
                    format!("EXISTS (SELECT 1 FROM {table} p WHERE p.run = r.id AND p.key = ?");
                match clause.op {
                    Op::IsNull => Ok(format!("NOT {exists})")),
                    Op::IsNotNull => Ok(format!("{exists})")),
                    _ => Ok(format!("{exists} AND {})", self.text("p.value", clause)?)),
                }
            }
            Ident::Dataset(field) => {
                let column = match field.as_str() {
                    "name" => "i.name",
                    "digest" => "i.digest",
                    "context" => "i.context",
                    _ => {
                        return Err(err(format!(
                        "unknown dataset field `{field}`: valid fields are name, digest, context"
                    )))
                    }
                };
                Ok(format!(
                    "EXISTS (SELECT 1 FROM inputs i WHERE i.run = r.id AND {})",
                    self.text(column, clause)?
                ))
            }
            Ident::Attribute(name) => {
                let Some(attr) = attribute(name) else {
                    return Err(err(format!(
                        "unknown attribute `{name}`: valid attributes are {}",
                        names(|_| true)
                    )));
                };
                if !attr.ops.contains(&clause.op) {
                    let ops: Vec<&str> = attr.ops.iter().map(|op| op.as_str()).collect();
                    return Err(err(format!(
                        "attribute `{}` takes {}, not {}",
                        attr.name,
                        ops.join(" "),
                        clause.op
                    )));
                }
                let column = attr.column;
                match (clause.op, attr.kind) {
                    (Op::IsNull, _) => Ok(format!("{column} IS NULL")),
                    (Op::IsNotNull, _) => Ok(format!("{column} IS NOT NULL")),
                    (_, Kind::Time) => {
                        self.params.push(Sql::Real(number(clause)?));
                        Ok(format!("{column} {} ?", compare(clause)?))
                    }
                    (_, Kind::Text) => self.text(column, clause),
                    (_, Kind::Status) => {
                        check_statuses(clause)?;
                        self.text(column, clause)
                    }
                    (Op::Eq | Op::In, Kind::Experiment) => Ok(format!(
                        "{column} IN (SELECT e.id FROM experiments e WHERE {})",
                        self.text("e.uid", clause)?
                    )),
                    (_, Kind::Experiment) => {
                        let positive = Clause {
                            op: if clause.op == Op::Ne { Op::Eq } else { Op::In },
                            ..clause.clone()
                        };
                        Ok(format!(
                            "{column} NOT IN (SELECT e.id FROM experiments e WHERE {})",
                            self.text("e.uid", &positive)?
                        ))
                    }
                }
            }
        }
    }

    /// `column <op> ?` for a string clause (= != LIKE ILIKE IN NOT IN).
    fn text(&mut self, column: &str, clause: &Clause) -> Result<String, SearchError> {
        let wrong = || {
            SearchError::filter(
                clause.pos,
                format!(
                    "{} compares with a quoted string, not a number",
                    clause.ident
                ),
            )
        };
        match (&clause.op, &clause.value) {
            (Op::In | Op::NotIn, Value::List(items)) => {
                self.params
                    .extend(items.iter().map(|s| Sql::Text(s.clone())));
                let not = if clause.op == Op::NotIn { "NOT " } else { "" };
                Ok(format!("{column} {not}IN ({})", placeholders(items.len())))
            }
            (op, Value::String(s)) => {
                let (sql, param) = match op {
                    Op::Eq => (format!("{column} = ?"), s.clone()),
                    Op::Ne => (format!("{column} != ?"), s.clone()),
                    Op::Like => (format!("{column} GLOB ?"), crate::filter::like_to_glob(s)),
                    Op::ILike => (
                        format!("{column} LIKE ? ESCAPE '\\'"),
                        crate::filter::like_to_like(s),
                    ),
                    _ => return Err(unsupported(clause)),
                };
                self.params.push(Sql::Text(param));
                Ok(sql)
            }
            (_, Value::Number(_)) => Err(wrong()),
            _ => Err(unsupported(clause)),
        }
    }

    /// One `ORDER BY` term.
    fn ordering(&mut self, index: usize, entry: &str) -> Result<String, SearchError> {
        let ob = filter::parse_order_by(entry)
            .map_err(|e| SearchError::order_by(index, e.pos, e.message))?;
        let expr = match &ob.ident {
            Ident::Metric(key) => {
                self.params.push(Sql::Text(key.clone()));
                "(SELECT m.last FROM metric_keys m WHERE m.run = r.id AND m.key = ?)".to_owned()
            }
            Ident::Param(key) => {
                self.params.push(Sql::Text(key.clone()));
                "(SELECT p.value FROM params p WHERE p.run = r.id AND p.key = ?)".to_owned()
            }
            Ident::Tag(key) => {
                self.params.push(Sql::Text(key.clone()));
                "(SELECT t.value FROM tags t WHERE t.run = r.id AND t.key = ?)".to_owned()
            }
            Ident::Attribute(name) => match attribute(name).filter(|a| a.orderable) {
                Some(attr) => attr.column.to_owned(),
                None => {
                    return Err(SearchError::order_by(
                        index,
                        ob.pos,
                        format!(
                            "cannot order by attribute `{name}`: valid attributes are {}",
                            names(|a| a.orderable)
                        ),
                    ))
                }
            },
            Ident::Dataset(_) => {
                return Err(SearchError::order_by(
                    index,
                    ob.pos,
                    "cannot order by datasets: order by metrics, params, tags or attributes",
                ))
            }
        };
        let direction = if ob.ascending { "ASC" } else { "DESC" };
        Ok(format!("{expr} {direction} NULLS LAST"))
    }
}

/// The SQL comparison of a numeric clause.
fn compare(clause: &Clause) -> Result<&'static str, SearchError> {
    Ok(match clause.op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        _ => return Err(unsupported(clause)),
    })
}

fn number(clause: &Clause) -> Result<f64, SearchError> {
    match clause.value {
        Value::Number(n) => Ok(n),
        _ => Err(SearchError::filter(
            clause.pos,
            format!("{} compares with a number, not a string", clause.ident),
        )),
    }
}

/// Unreachable for clauses from the parser and the attribute table; an error all the
/// same, never a panic.
fn unsupported(clause: &Clause) -> SearchError {
    SearchError::filter(
        clause.pos,
        format!("{} does not take {}", clause.ident, clause.op),
    )
}

fn check_statuses(clause: &Clause) -> Result<(), SearchError> {
    let values: &[String] = match &clause.value {
        Value::String(s) => std::slice::from_ref(s),
        Value::List(items) => items,
        _ => &[],
    };
    match values.iter().find(|s| RunStatus::parse(s).is_none()) {
        None => Ok(()),
        Some(bad) => {
            let valid: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
            Err(SearchError::filter(
                clause.pos,
                format!(
                    "unknown status `{bad}`: valid statuses are {}",
                    valid.join(", ")
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    const SCHEMA: &str = "
CREATE TABLE experiments(id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, name TEXT NOT NULL UNIQUE, artifact_location TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE runs(id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, experiment INTEGER NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER, owner BLOB, parent TEXT, artifact_uri TEXT NOT NULL);
CREATE TABLE params(run INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY(run, key)) WITHOUT ROWID;
CREATE TABLE tags(run INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY(run, key)) WITHOUT ROWID;
CREATE TABLE metric_keys(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, key TEXT NOT NULL, last REAL, last_step INTEGER NOT NULL, last_ts INTEGER NOT NULL, min REAL, max REAL, count INTEGER NOT NULL, UNIQUE(run, key));
CREATE TABLE inputs(run INTEGER NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, source TEXT NOT NULL, context TEXT NOT NULL, PRIMARY KEY(run, name, digest, context)) WITHOUT ROWID;
";

    /// Five runs; r3 and r5 start at the same time, so the row id breaks the tie.
    const DATA: &str = "
INSERT INTO experiments VALUES (1, 'e1', 'one', 'file:///a', 0), (2, 'e2', 'two', 'file:///b', 0);
INSERT INTO runs VALUES
 (1, 'r1', 1, 'alpha-Run', 'FINISHED', 1000, 2000, NULL, NULL, 'file:///a/r1'),
 (2, 'r2', 1, 'beta', 'RUNNING', 2000, NULL, NULL, 'r1', 'file:///a/r2'),
 (3, 'r3', 2, 'Alpha-two', 'FAILED', 3000, 3500, NULL, NULL, 's3://b/r3'),
 (4, 'r4', 2, 'gamma', 'KILLED', 4000, 4100, NULL, 'r1', 's3://b/r4'),
 (5, 'r5', 1, 'delta', 'FINISHED', 3000, 5000, NULL, NULL, 'file:///a/r5');
INSERT INTO metric_keys(run, key, last, last_step, last_ts, min, max, count) VALUES
 (1, 'rmse', 0.5, 1, 0, 0.5, 0.5, 1), (2, 'rmse', NULL, 1, 0, NULL, NULL, 1),
 (3, 'rmse', 0.3, 1, 0, 0.3, 0.3, 1), (4, 'rmse', 0.9, 1, 0, 0.9, 0.9, 1),
 (1, 'val loss', -1.0, 1, 0, -1.0, -1.0, 1), (5, 'val loss', 2.0, 1, 0, 2.0, 2.0, 1);
INSERT INTO params VALUES (1, 'lr', '0.01'), (2, 'lr', '0.1'), (3, 'lr', '0.01'),
 (1, 'model', 'ResNet'), (3, 'model', 'resnet50'), (4, 'model', 'VGG');
INSERT INTO tags VALUES (1, 'team', 'Vision'), (2, 'team', 'nlp'), (4, 'a b', 'x'),
 (5, 'note', '100%_done'), (2, 'note', 'a*b[c]?'), (3, 'note', 'ÉTÉ');
INSERT INTO inputs VALUES (1, 'mnist', 'd1', 's', 'training'), (3, 'cifar', 'd2', 's', 'eval'),
 (4, 'mnist', 'd3', 's', 'eval');
";

    fn db() -> Connection {
        let db = Connection::open_in_memory().expect("in-memory db");
        db.execute_batch(SCHEMA).expect("schema");
        db.execute_batch(DATA).expect("data");
        db
    }

    fn run(db: &Connection, q: &RunQuery) -> Vec<String> {
        let mut stmt = db.prepare(&q.sql).expect("valid SQL");
        let ids: Vec<i64> = stmt
            .query_map(rusqlite::params_from_iter(&q.params), |row| row.get(0))
            .expect("runs")
            .collect::<Result<_, _>>()
            .expect("rows");
        ids.iter().map(|id| format!("r{id}")).collect()
    }

    fn search_in(db: &Connection, filter: &str, order: &[&str], exps: &[i64]) -> Vec<String> {
        let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        let q =
            run_query(filter, &order, exps, 1000, 0).unwrap_or_else(|e| panic!("{filter}: {e}"));
        run(db, &q)
    }

    /// Matching runs in the default order (newest first), as a space-separated string.
    fn find(db: &Connection, filter: &str) -> String {
        search_in(db, filter, &[], &[]).join(" ")
    }

    fn ordered(db: &Connection, order: &[&str]) -> String {
        search_in(db, "", order, &[]).join(" ")
    }

    fn fails(filter: &str, order: &[&str]) -> SearchError {
        let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        run_query(filter, &order, &[], 10, 0).expect_err("must be refused")
    }

    #[test]
    fn default_order_is_newest_first_then_id() {
        let db = db();
        assert_eq!(find(&db, ""), "r4 r5 r3 r2 r1");
        assert_eq!(find(&db, "  "), "r4 r5 r3 r2 r1");
    }

    #[test]
    fn metrics_compare_the_latest_value() {
        let db = db();
        assert_eq!(find(&db, "metrics.rmse = 0.5"), "r1");
        assert_eq!(find(&db, "metrics.rmse != 0.5"), "r4 r3");
        assert_eq!(find(&db, "metrics.rmse <> 0.5"), "r4 r3");
        assert_eq!(find(&db, "metrics.rmse < 0.5"), "r3");
        assert_eq!(find(&db, "metrics.rmse <= 0.5"), "r3 r1");
        assert_eq!(find(&db, "metrics.rmse > 0.5"), "r4");
        assert_eq!(find(&db, "metrics.rmse >= 0.3"), "r4 r3 r1");
        // r2's latest rmse is NaN: it matches neither side; r5 has no rmse at all.
        assert_eq!(find(&db, "metrics.rmse > 0"), "r4 r3 r1");
        assert_eq!(find(&db, "metrics.rmse < 0"), "");
        assert_eq!(find(&db, "metrics.`val loss` < 0"), "r1");
        assert_eq!(
            find(&db, "metrics.rmse > 0.1 AND metrics.rmse < 0.6"),
            "r3 r1"
        );
    }

    #[test]
    fn params_and_tags() {
        let db = db();
        assert_eq!(find(&db, "params.lr = '0.01'"), "r3 r1");
        assert_eq!(find(&db, "params.lr != '0.01'"), "r2");
        assert_eq!(find(&db, "params.model IS NULL"), "r5 r2");
        assert_eq!(find(&db, "params.model IS NOT NULL"), "r4 r3 r1");
        assert_eq!(find(&db, "tags.team = 'nlp' AND params.lr = '0.1'"), "r2");
        assert_eq!(find(&db, "tags.\"a b\" = 'x'"), "r4");
        assert_eq!(
            find(&db, "params.lr = \"0.01\" AND tags.team IS NULL"),
            "r3"
        );
    }

    #[test]
    fn like_is_case_sensitive_and_ilike_is_not() {
        let db = db();
        assert_eq!(find(&db, "params.model LIKE 'res%'"), "r3");
        assert_eq!(find(&db, "params.model LIKE 'Res%'"), "r1");
        assert_eq!(find(&db, "params.model ILIKE 'res%'"), "r3 r1");
        assert_eq!(find(&db, "params.model ILIKE 'RESNET'"), "r1");
        assert_eq!(find(&db, "params.model LIKE '_G_'"), "r4");
        assert_eq!(find(&db, "tags.team ILIKE '%I%'"), "r1");
        // ILIKE folds ASCII only: SQLite's LIKE without ICU.
        assert_eq!(find(&db, "tags.note ILIKE 'été'"), "");
        assert_eq!(find(&db, "tags.note LIKE 'ÉT_'"), "r3");
        // GLOB metacharacters are literal; `\` quotes LIKE wildcards.
        assert_eq!(find(&db, "tags.note LIKE 'a*b[c]?'"), "r2");
        assert_eq!(find(&db, "tags.note LIKE 'a_b%'"), "r2");
        assert_eq!(find(&db, "tags.note LIKE 'a?%'"), "");
        assert_eq!(find(&db, "tags.note LIKE '100\\%\\_%'"), "r5");
        assert_eq!(find(&db, "tags.note ILIKE '100\\%\\_%'"), "r5");
        assert_eq!(find(&db, "tags.note LIKE '1\\_%'"), "");
        assert_eq!(find(&db, "tags.note ILIKE '1\\_%'"), "");
        assert_eq!(crate::filter::like_to_glob("a\\"), "a\\");
        assert_eq!(crate::filter::like_to_like("a\\"), "a\\\\");
    }

    #[test]
    fn attributes() {
        let db = db();
        assert_eq!(find(&db, "status = 'FINISHED'"), "r5 r1");
        assert_eq!(find(&db, "attributes.status != 'FINISHED'"), "r4 r3 r2");
        assert_eq!(find(&db, "status IN ('FAILED', 'KILLED')"), "r4 r3");
        assert_eq!(find(&db, "status NOT IN ('FAILED', 'KILLED')"), "r5 r2 r1");
        assert_eq!(find(&db, "run_id IN ('r1', 'r2', 'nope')"), "r2 r1");
        assert_eq!(find(&db, "attr.run_id != 'r1'"), "r4 r5 r3 r2");
        assert_eq!(find(&db, "run_name LIKE 'alpha%'"), "r1");
        assert_eq!(find(&db, "run_name ILIKE 'alpha%'"), "r3 r1");
        assert_eq!(find(&db, "run.run_name = 'beta'"), "r2");
        assert_eq!(find(&db, "start_time >= 3000"), "r4 r5 r3");
        assert_eq!(find(&db, "start_time < 2000.5"), "r2 r1");
        assert_eq!(find(&db, "end_time > 3000"), "r4 r5 r3");
        assert_eq!(find(&db, "end_time IS NULL"), "r2");
        assert_eq!(find(&db, "artifact_uri LIKE 's3://%'"), "r4 r3");
        assert_eq!(find(&db, "experiment_id = 'e2'"), "r4 r3");
        assert_eq!(find(&db, "experiment_id != 'e2'"), "r5 r2 r1");
        assert_eq!(find(&db, "experiment_id IN ('e1', 'zz')"), "r5 r2 r1");
        assert_eq!(find(&db, "experiment_id NOT IN ('e1')"), "r4 r3");
        assert_eq!(find(&db, "parent_run_id = 'r1'"), "r4 r2");
        assert_eq!(find(&db, "parent IS NULL"), "r5 r3 r1");
        assert_eq!(find(&db, "attributes.parent_run_id IS NOT NULL"), "r4 r2");
    }

    #[test]
    fn datasets() {
        let db = db();
        assert_eq!(find(&db, "datasets.name = 'mnist'"), "r4 r1");
        assert_eq!(find(&db, "datasets.name != 'mnist'"), "r3");
        assert_eq!(find(&db, "datasets.context IN ('eval')"), "r4 r3");
        assert_eq!(find(&db, "datasets.context NOT IN ('eval')"), "r1");
        assert_eq!(
            find(&db, "datasets.digest LIKE 'd%' AND datasets.name = 'cifar'"),
            "r3"
        );
        assert_eq!(find(&db, "dataset.name ILIKE 'MNIST'"), "r4 r1");
    }

    #[test]
    fn experiments_restrict() {
        let db = db();
        assert_eq!(search_in(&db, "", &[], &[2]).join(" "), "r4 r3");
        assert_eq!(search_in(&db, "", &[], &[1, 2]).join(" "), "r4 r5 r3 r2 r1");
        assert_eq!(
            search_in(&db, "status = 'FINISHED'", &[], &[2]).join(" "),
            ""
        );
        assert_eq!(
            search_in(&db, "metrics.rmse > 0", &[], &[1]).join(" "),
            "r1"
        );
    }

    #[test]
    fn order_by_puts_missing_values_last_both_ways() {
        let db = db();
        // r2's rmse is NaN and r5 has none: last, newest first, in both directions.
        assert_eq!(ordered(&db, &["metrics.rmse"]), "r3 r1 r4 r5 r2");
        assert_eq!(ordered(&db, &["metrics.rmse ASC"]), "r3 r1 r4 r5 r2");
        assert_eq!(ordered(&db, &["metrics.rmse DESC"]), "r4 r1 r3 r5 r2");
        assert_eq!(ordered(&db, &["params.model"]), "r1 r4 r3 r5 r2");
        assert_eq!(ordered(&db, &["params.model desc"]), "r3 r4 r1 r5 r2");
        assert_eq!(
            ordered(&db, &["params.lr DESC", "start_time ASC"]),
            "r2 r1 r3 r5 r4"
        );
        assert_eq!(ordered(&db, &["tags.team"]), "r1 r2 r4 r5 r3");
        assert_eq!(ordered(&db, &["end_time DESC"]), "r5 r4 r3 r1 r2");
        assert_eq!(ordered(&db, &["end_time"]), "r1 r3 r4 r5 r2");
        assert_eq!(ordered(&db, &["attributes.run_name"]), "r3 r1 r2 r5 r4");
        assert_eq!(ordered(&db, &["status", "run_id DESC"]), "r3 r5 r1 r4 r2");
        assert_eq!(ordered(&db, &["start_time"]), "r1 r2 r5 r3 r4");
    }

    #[test]
    fn pages_add_up_to_the_whole_order() {
        let db = db();
        for order in [
            &[][..],
            &["metrics.rmse DESC"],
            &["params.model"],
            &["start_time"],
        ] {
            let order: Vec<String> = order.iter().map(|s: &&str| s.to_string()).collect();
            let all = run(&db, &run_query("", &order, &[], 1000, 0).expect("query"));
            for size in 1..=3u32 {
                let mut paged = Vec::new();
                for page in 0.. {
                    let q =
                        run_query("", &order, &[], size, page * u64::from(size)).expect("query");
                    let rows = run(&db, &q);
                    if rows.is_empty() {
                        break;
                    }
                    paged.extend(rows);
                }
                assert_eq!(paged, all, "{order:?} by {size}");
            }
        }
        let q = run_query("", &[], &[], 10, u64::MAX).expect("query");
        assert!(run(&db, &q).is_empty());
    }

    #[test]
    fn values_and_keys_are_bound() {
        let q = run_query(
            "tags.`x'); DROP TABLE runs; --` = 'a''b'",
            &["params.`'`".into()],
            &[7],
            5,
            2,
        )
        .expect("query");
        assert!(
            !q.sql.contains("DROP") && !q.sql.contains("a'b"),
            "{}",
            q.sql
        );
        assert_eq!(q.params.len(), q.sql.matches('?').count());
        let db = db();
        assert!(run(&db, &q).is_empty());
    }

    #[test]
    fn errors_name_the_field_and_position() {
        // filter, order_by, then the expected field, index, position and message part.
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a str,
            Option<usize>,
            usize,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                "metrics.rmse < 'x'",
                &[],
                "filter",
                None,
                15,
                "compares with a number",
            ),
            (
                "attributes.nope = 1",
                &[],
                "filter",
                None,
                0,
                "valid attributes are run_id",
            ),
            (
                "metrics.a < 1 or metrics.b > 2",
                &[],
                "filter",
                None,
                14,
                "OR is not supported",
            ),
            ("params.lr = ", &[], "filter", None, 12, "found the end"),
            (
                "metrics.a > 1 AND start_time = 'abc'",
                &[],
                "filter",
                None,
                18,
                "compares with a number",
            ),
            ("status < 3", &[], "filter", None, 0, "takes = != IN NOT IN"),
            ("status = 3", &[], "filter", None, 0, "quoted string"),
            (
                "status = 'running'",
                &[],
                "filter",
                None,
                0,
                "valid statuses are RUNNING",
            ),
            (
                "status IN ('FAILED', 'DONE')",
                &[],
                "filter",
                None,
                0,
                "unknown status `DONE`",
            ),
            (
                "run_name IN ('a')",
                &[],
                "filter",
                None,
                0,
                "takes = != LIKE ILIKE",
            ),
            ("run_id IS NULL", &[], "filter", None, 0, "not IS NULL"),
            (
                "datasets.source = 'x'",
                &[],
                "filter",
                None,
                0,
                "unknown dataset field",
            ),
            (
                "",
                &["metrics.a UP"],
                "order_by",
                Some(0),
                10,
                "expected ASC",
            ),
            (
                "",
                &["start_time", "artifact_uri"],
                "order_by",
                Some(1),
                0,
                "cannot order by",
            ),
            (
                "",
                &["datasets.name"],
                "order_by",
                Some(0),
                0,
                "cannot order by datasets",
            ),
            (
                "",
                &["nope DESC"],
                "order_by",
                Some(0),
                0,
                "valid attributes are run_id",
            ),
            (
                "",
                &["start_time"; 11],
                "order_by",
                Some(10),
                0,
                "at most 10",
            ),
        ];
        for &(filter, order, field, index, pos, needle) in cases {
            let e = fails(filter, order);
            assert_eq!(
                (e.field, e.index, e.pos),
                (field, index, pos),
                "{filter} {order:?}: {e}"
            );
            assert!(e.message.contains(needle), "{filter} {order:?}: {e}");
        }
        assert_eq!(
            fails("", &["start_time", "x.y"]).to_string(),
            "order_by[1] at position 0: unknown prefix `x`: expected metrics, params, tags, attributes or datasets"
        );
        assert!(run_query("", &vec!["start_time".to_owned(); 10], &[], 1, 0).is_ok());
    }
}
