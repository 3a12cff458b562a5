//! `registry.model.search` and `registry.version.search`: a filter in the language of
//! [`crate::filter`] becomes one `SELECT` over the registry's schema.
//!
//! Every user value, tag keys included, is a bound parameter; the SQL text holds only
//! fixed fragments. What each search filters on:
//!
//! | identifier | models | versions | operators |
//! |---|---|---|---|
//! | `name` | yes | yes | `= != LIKE ILIKE IN NOT IN` |
//! | `source` (`source_path`) | | yes | `= != LIKE ILIKE IN NOT IN` |
//! | `run_id` | | yes | `= != IN NOT IN` |
//! | `version_number` (`version`) | | yes | `= != < <= > >=`, with a number |
//! | `status` | | yes | `= != IN NOT IN`, with a version status |
//! | `tags.<key>` | yes | yes | `= != LIKE ILIKE IS NULL IS NOT NULL` |
//!
//! As in MLflow, a tag clause needs the tag (`!=` included) and `IS NULL` means the tag
//! is absent. `LIKE` is case-sensitive (SQLite `GLOB`), `ILIKE` ignores ASCII case
//! (SQLite `LIKE ... ESCAPE '\'`); in both `%` is any run, `_` any character, and `\`
//! makes the next one literal. Orderings always end with the model name ascending and
//! then the version number descending, so that pages are deterministic.

use rusqlite::types::Value as Sql;
use rusqlite::Connection;

use mlmesh::protocol::registry::{
    limits, ModelPage, ModelSearch, Version, VersionPage, VersionSearch, VersionStatus,
};
use mlmesh::protocol::{Code, Status};

use super::read::{self, Result};
use crate::filter::{self, Clause, Ident, Op, Value};
use crate::store::internal;

/// What an attribute's values are.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Number,
    /// Text among the version statuses.
    Status,
}

/// A filterable attribute: its names, its column, the operators it takes.
struct Attribute {
    names: &'static [&'static str],
    column: &'static str,
    kind: Kind,
    ops: &'static [Op],
}

const TEXT_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike, Op::In, Op::NotIn];

const MODEL_ATTRIBUTES: &[Attribute] = &[Attribute {
    names: &["name"],
    column: "m.name",
    kind: Kind::Text,
    ops: TEXT_OPS,
}];

const VERSION_ATTRIBUTES: &[Attribute] = &[
    Attribute {
        names: &["name"],
        column: "v.model",
        kind: Kind::Text,
        ops: TEXT_OPS,
    },
    Attribute {
        names: &["source", "source_path"],
        column: "v.source",
        kind: Kind::Text,
        ops: TEXT_OPS,
    },
    Attribute {
        names: &["run_id"],
        column: "v.run_id",
        kind: Kind::Text,
        ops: &[Op::Eq, Op::Ne, Op::In, Op::NotIn],
    },
    Attribute {
        names: &["version_number", "version"],
        column: "v.version",
        kind: Kind::Number,
        ops: &[Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge],
    },
    Attribute {
        names: &["status"],
        column: "v.status",
        kind: Kind::Status,
        ops: &[Op::Eq, Op::Ne, Op::In, Op::NotIn],
    },
];

/// One search's table, as the SQL sees it.
struct Target {
    /// What the filter is on, for messages: `registry.model.search`.
    topic: &'static str,
    attributes: &'static [Attribute],
    /// `EXISTS` over the tags of the row at hand, with one `?` for the key.
    tag_exists: &'static str,
    /// `(key, column)` of each ordering.
    order_columns: &'static [(&'static str, &'static str)],
    /// What every ordering ends with.
    tiebreak: &'static str,
}

const MODELS: Target = Target {
    topic: "registry.model.search",
    attributes: MODEL_ATTRIBUTES,
    tag_exists: "EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = ?",
    order_columns: &[
        ("name", "m.name"),
        ("created", "m.created_ms"),
        ("updated", "m.updated_ms"),
    ],
    tiebreak: "m.name ASC",
};

const VERSIONS: Target = Target {
    topic: "registry.version.search",
    attributes: VERSION_ATTRIBUTES,
    tag_exists: "EXISTS (SELECT 1 FROM version_tags t \
                 WHERE t.model = v.model AND t.version = v.version AND t.key = ?",
    order_columns: &[
        ("name", "v.model"),
        ("version_number", "v.version"),
        ("created", "v.created_ms"),
        ("updated", "v.updated_ms"),
    ],
    tiebreak: "v.model ASC, v.version DESC",
};

fn invalid(field: &str, message: String) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
}

fn bad_filter(pos: usize, message: impl std::fmt::Display) -> Status {
    invalid("filter", format!("filter at position {pos}: {message}"))
}

/// `WHERE` and `ORDER BY` of a search, with their parameters in order.
fn build(
    target: &Target,
    filter_text: &str,
    order_by: &[String],
    keys: &[&'static str],
) -> Result<(String, Vec<Sql>)> {
    let parsed = filter::parse(filter_text).map_err(|e| bad_filter(e.pos, e.message))?;
    let mut params = Vec::new();
    let mut conditions = Vec::with_capacity(parsed.clauses.len());
    for clause in &parsed.clauses {
        conditions.push(condition(target, clause, &mut params)?);
    }
    let mut order = Vec::with_capacity(order_by.len() + 1);
    for (i, entry) in order_by.iter().enumerate() {
        let (key, desc) = limits::parse_order(&format!("order_by[{i}]"), entry, keys)?;
        let column = target
            .order_columns
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, col)| *col)
            .ok_or_else(|| internal(format!("no column for ordering `{key}`")))?;
        order.push(format!("{column} {}", if desc { "DESC" } else { "ASC" }));
    }
    order.push(target.tiebreak.to_owned());
    let conditions = if conditions.is_empty() {
        "1".to_owned()
    } else {
        conditions.join(" AND ")
    };
    Ok((
        format!("WHERE {conditions} ORDER BY {}", order.join(", ")),
        params,
    ))
}

/// One clause as SQL, its values pushed onto `params`.
fn condition(target: &Target, clause: &Clause, params: &mut Vec<Sql>) -> Result<String> {
    let refuse = |message: String| Err(bad_filter(clause.pos, message));
    match &clause.ident {
        Ident::Tag(key) => {
            params.push(Sql::Text(key.clone()));
            let exists = target.tag_exists;
            match clause.op {
                Op::IsNull => Ok(format!("NOT {exists})")),
                Op::IsNotNull => Ok(format!("{exists})")),
                _ => Ok(format!(
                    "{exists} AND {})",
                    text("t.value", clause, params)?
                )),
            }
        }
        Ident::Attribute(name) => {
            let Some(attr) = target
                .attributes
                .iter()
                .find(|a| a.names.contains(&name.as_str()))
            else {
                return refuse(format!(
                    "unknown attribute `{name}`: {} filters on {} and tags.<key>",
                    target.topic,
                    attribute_names(target)
                ));
            };
            if !attr.ops.contains(&clause.op) {
                let ops: Vec<&str> = attr.ops.iter().map(|op| op.as_str()).collect();
                return refuse(format!(
                    "`{name}` takes {}, not {}",
                    ops.join(" "),
                    clause.op
                ));
            }
            match attr.kind {
                Kind::Number => {
                    let Value::Number(n) = clause.value else {
                        return refuse(format!("`{name}` compares with a number, not a string"));
                    };
                    params.push(Sql::Real(n));
                    Ok(format!("{} {} ?", attr.column, compare(clause.op)))
                }
                Kind::Status => {
                    check_statuses(clause)?;
                    text(attr.column, clause, params)
                }
                Kind::Text => text(attr.column, clause, params),
            }
        }
        other => refuse(format!(
            "{} filters on {} and tags.<key>, not on {}",
            target.topic,
            attribute_names(target),
            other.prefix()
        )),
    }
}

fn attribute_names(target: &Target) -> String {
    let names: Vec<&str> = target.attributes.iter().map(|a| a.names[0]).collect();
    names.join(", ")
}

/// `column <op> ?` for a string clause (= != LIKE ILIKE IN NOT IN).
fn text(column: &str, clause: &Clause, params: &mut Vec<Sql>) -> Result<String> {
    match (clause.op, &clause.value) {
        (Op::In | Op::NotIn, Value::List(items)) => {
            params.extend(items.iter().map(|s| Sql::Text(s.clone())));
            let not = if clause.op == Op::NotIn { "NOT " } else { "" };
            let marks = vec!["?"; items.len()].join(", ");
            Ok(format!("{column} {not}IN ({marks})"))
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
                _ => {
                    return Err(bad_filter(
                        clause.pos,
                        format!("{} does not take {op}", clause.ident),
                    ))
                }
            };
            params.push(Sql::Text(param));
            Ok(sql)
        }
        _ => Err(bad_filter(
            clause.pos,
            format!(
                "{} compares with a quoted string, not a number",
                clause.ident
            ),
        )),
    }
}

/// The SQL of a numeric comparison (the attribute table admits only these).
fn compare(op: Op) -> &'static str {
    match op {
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        _ => "=",
    }
}

fn check_statuses(clause: &Clause) -> Result<()> {
    let values: &[String] = match &clause.value {
        Value::String(s) => std::slice::from_ref(s),
        Value::List(items) => items,
        _ => &[],
    };
    match values.iter().find(|s| VersionStatus::parse(s).is_none()) {
        None => Ok(()),
        Some(bad) => Err(bad_filter(
            clause.pos,
            format!("unknown status `{bad}`: PENDING_REGISTRATION, FAILED_REGISTRATION or READY"),
        )),
    }
}

/// The offset a page token stands for.
fn offset(token: Option<&str>) -> Result<u64> {
    match token {
        None => Ok(0),
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(|| {
                invalid(
                    "page_token",
                    format!("`{t}` is not a page token of this search"),
                )
            }),
    }
}

/// Ends a page where [`crate::serve::fitting`] says, and says the token that carries on
/// from there. `start` is the page's offset.
fn cut<T: serde::Serialize>(items: &mut Vec<T>, start: u64, next: &mut Option<String>) {
    let fit = crate::serve::fitting(items);
    if fit < items.len() {
        items.truncate(fit);
        *next = Some((start + fit as u64).to_string());
    }
}

/// Runs `SELECT <columns> FROM <from> <tail> LIMIT ? OFFSET ?`, one more row than the
/// page, and says the next page's token.
fn page<T>(
    c: &Connection,
    select: &str,
    tail: String,
    mut params: Vec<Sql>,
    max_results: u32,
    token: Option<&str>,
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<(Vec<T>, Option<String>)> {
    let start = offset(token)?;
    params.push(Sql::Integer(i64::from(max_results) + 1));
    params.push(Sql::Integer(i64::try_from(start).unwrap_or(i64::MAX)));
    let sql = format!("{select} {tail} LIMIT ? OFFSET ?");
    // The SQL varies with the filter: a one-off statement, not one for the cache.
    let mut st = c.prepare(&sql).map_err(internal)?;
    let mut rows = st
        .query_map(rusqlite::params_from_iter(params), row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<T>>>())
        .map_err(internal)?;
    let max = usize::try_from(max_results).unwrap_or(usize::MAX);
    let next = (rows.len() > max).then(|| (start + u64::from(max_results)).to_string());
    rows.truncate(max);
    Ok((rows, next))
}

/// `registry.model.search`.
pub(super) fn models(c: &Connection, req: &ModelSearch) -> Result<ModelPage> {
    limits::check_model_search(req)?;
    let (tail, params) = build(
        &MODELS,
        &req.filter,
        &req.order_by,
        limits::MODEL_ORDER_KEYS,
    )?;
    let (names, next_page_token) = page(
        c,
        "SELECT m.name FROM models m",
        tail,
        params,
        req.max_results,
        req.page_token.as_deref(),
        |r| r.get::<_, String>(0),
    )?;
    let mut models = Vec::with_capacity(names.len());
    for name in names {
        // The same snapshot: a listed model is there.
        if let Some(m) = read::model(c, &name)? {
            models.push(m);
        }
    }
    let mut next_page_token = next_page_token;
    cut(
        &mut models,
        offset(req.page_token.as_deref())?,
        &mut next_page_token,
    );
    Ok(ModelPage {
        models,
        next_page_token,
    })
}

/// `registry.version.search`.
pub(super) fn versions(c: &Connection, req: &VersionSearch) -> Result<VersionPage> {
    limits::check_version_search(req)?;
    let (tail, params) = build(
        &VERSIONS,
        &req.filter,
        &req.order_by,
        limits::VERSION_ORDER_KEYS,
    )?;
    let (keys, next_page_token) = page(
        c,
        "SELECT v.model, v.version FROM versions v",
        tail,
        params,
        req.max_results,
        req.page_token.as_deref(),
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Version>(1)?)),
    )?;
    let mut versions = Vec::with_capacity(keys.len());
    for (name, number) in keys {
        if let Some(v) = read::version(c, &name, number)? {
            versions.push(v);
        }
    }
    let mut next_page_token = next_page_token;
    cut(
        &mut versions,
        offset(req.page_token.as_deref())?,
        &mut next_page_token,
    );
    Ok(VersionPage {
        versions,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().expect("sqlite");
        c.execute_batch(super::super::SCHEMA).expect("schema");
        c.execute_batch(
            "INSERT INTO models VALUES ('fraud', '', 3, 1, 30), ('Fraud-eu', '', 1, 2, 20),
                                       ('churn', '', 1, 3, 10);
             INSERT INTO model_tags VALUES ('fraud', 'team', 'risk'), ('churn', 'team', 'growth'),
                                           ('Fraud-eu', 'note', '100%_sure');
             INSERT INTO versions VALUES
               ('fraud', 1, 's3://m/f1', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'READY', '', '', 1, 1),
               ('fraud', 2, 's3://m/f2', NULL, 'FAILED_REGISTRATION', '', '', 2, 2),
               ('fraud', 3, 'gs://m/f3', NULL, 'READY', '', '', 3, 3),
               ('Fraud-eu', 1, 's3://m/e1', NULL, 'READY', '', '', 4, 4),
               ('churn', 1, 's3://m/c1', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'READY', '', '', 5, 5);
             INSERT INTO version_tags VALUES ('fraud', 3, 'stage', 'canary');",
        )
        .expect("data");
        c
    }

    fn names(c: &Connection, filter: &str, order: &[&str]) -> String {
        let req = ModelSearch {
            filter: filter.into(),
            order_by: order.iter().map(|s| s.to_string()).collect(),
            ..ModelSearch::default()
        };
        let page = models(c, &req).expect("searches");
        let names: Vec<String> = page.models.into_iter().map(|m| m.name).collect();
        names.join(" ")
    }

    fn versions_of(c: &Connection, filter: &str) -> String {
        let req = VersionSearch {
            filter: filter.into(),
            ..VersionSearch::default()
        };
        let page = versions(c, &req).expect("searches");
        let found: Vec<String> = page
            .versions
            .into_iter()
            .map(|v| format!("{}/{}", v.name, v.version))
            .collect();
        found.join(" ")
    }

    #[test]
    fn models_by_name_and_tags() {
        let c = db();
        assert_eq!(names(&c, "", &[]), "Fraud-eu churn fraud");
        assert_eq!(names(&c, "name = 'fraud'", &[]), "fraud");
        assert_eq!(names(&c, "name != 'fraud'", &[]), "Fraud-eu churn");
        assert_eq!(names(&c, "name LIKE 'fraud%'", &[]), "fraud");
        assert_eq!(names(&c, "name ILIKE 'fraud%'", &[]), "Fraud-eu fraud");
        assert_eq!(names(&c, "tags.team = 'risk'", &[]), "fraud");
        assert_eq!(names(&c, "tags.team != 'risk'", &[]), "churn");
        assert_eq!(names(&c, "tags.team IS NULL", &[]), "Fraud-eu");
        assert_eq!(names(&c, "tags.note LIKE '100\\%\\_%'", &[]), "Fraud-eu");
        assert_eq!(names(&c, "tags.note LIKE '1_0*'", &[]), "");
        assert_eq!(names(&c, "", &["updated DESC"]), "fraud Fraud-eu churn");
        assert_eq!(names(&c, "", &["created"]), "fraud Fraud-eu churn");
    }

    #[test]
    fn versions_by_every_attribute() {
        let c = db();
        assert_eq!(
            versions_of(&c, ""),
            "Fraud-eu/1 churn/1 fraud/3 fraud/2 fraud/1"
        );
        assert_eq!(
            versions_of(&c, "name = 'fraud' AND version_number >= 2"),
            "fraud/3 fraud/2"
        );
        assert_eq!(versions_of(&c, "source LIKE 'gs://%'"), "fraud/3");
        assert_eq!(
            versions_of(
                &c,
                "run_id IN ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')"
            ),
            "churn/1 fraud/1"
        );
        assert_eq!(versions_of(&c, "status = 'FAILED_REGISTRATION'"), "fraud/2");
        assert_eq!(versions_of(&c, "tags.stage = 'canary'"), "fraud/3");
    }

    #[test]
    fn pages_add_up() {
        let c = db();
        let mut req = VersionSearch {
            max_results: 2,
            ..VersionSearch::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = versions(&c, &req).expect("page");
            seen.extend(page.versions.into_iter().map(|v| (v.name, v.version)));
            match page.next_page_token {
                Some(t) => req.page_token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5);
        req.page_token = Some("x".into());
        let e = versions(&c, &req).expect_err("bad token");
        assert_eq!(e.field.as_deref(), Some("page_token"));
    }

    #[test]
    fn bad_filters_name_the_position() {
        let c = db();
        for (filter, pos, needle) in [
            ("name = 'a' AND", 14, "after AND"),
            ("metrics.x > 1", 0, "not on metrics"),
            ("owner = 'x'", 0, "unknown attribute `owner`"),
            ("name > 'a'", 0, "takes"),
            ("version_number = '1'", 0, "compares with a number"),
            ("status = 'DONE'", 0, "unknown status"),
        ] {
            let req = VersionSearch {
                filter: filter.into(),
                ..VersionSearch::default()
            };
            let e = versions(&c, &req).expect_err(filter);
            assert_eq!(
                (e.code, e.field.as_deref()),
                (Code::InvalidArgument, Some("filter"))
            );
            assert!(
                e.message.contains(&format!("position {pos}")) && e.message.contains(needle),
                "{filter}: {e}"
            );
        }
        let req = ModelSearch {
            filter: "source = 'x'".into(),
            ..ModelSearch::default()
        };
        assert!(models(&c, &req).is_err());
    }
}
