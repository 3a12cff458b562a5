//! Filters on their way to MLflow.
//!
//! - **Runs**: the tracker's own checks run first (same errors, same positions), then
//!   the parsed filter is written back out for MLflow, whose language it is, with
//!   `experiment_id` values turned into MLflow's ids.
//! - **Registry**: MLflow's model and version searches understand less than
//!   `registry/1` (no `IS NULL`, no `!=` on `run_id`, no `status` kept by the adapter),
//!   so the adapter checks the filter as the registry does and evaluates it itself on
//!   what MLflow lists; MLflow is only asked for the namespace and an exact name.

use std::collections::HashMap;

use mlmesh::protocol::registry::VersionStatus;
use mlmesh::protocol::{Code, Status};

use crate::filter::{self, Clause, Filter, Ident, Op, Value};

fn quote(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        Value::String(s) => quote(s),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("({})", items.join(", "))
        }
        Value::None => String::new(),
    }
}

/// The experiment ids (mlmesh's) a run filter names.
pub(crate) fn experiment_ids(f: &Filter) -> Vec<String> {
    let mut out = Vec::new();
    for c in &f.clauses {
        if matches!(&c.ident, Ident::Attribute(a) if a == "experiment_id") {
            match &c.value {
                Value::String(s) => out.push(s.clone()),
                Value::List(items) => out.extend(items.iter().cloned()),
                _ => {}
            }
        }
    }
    out
}

/// A checked run filter as MLflow reads it; `experiments` maps mlmesh experiment ids
/// to MLflow's (an id it lacks is left as it is, and matches nothing).
pub(crate) fn run_filter_text(f: &Filter, experiments: &HashMap<String, String>) -> String {
    let mut parts = Vec::with_capacity(f.clauses.len());
    for c in &f.clauses {
        let mut value = c.value.clone();
        if matches!(&c.ident, Ident::Attribute(a) if a == "experiment_id") {
            let map = |s: &String| experiments.get(s).cloned().unwrap_or_else(|| s.clone());
            value = match value {
                Value::String(s) => Value::String(map(&s)),
                Value::List(items) => Value::List(items.iter().map(map).collect()),
                other => other,
            };
        }
        match c.op {
            Op::IsNull | Op::IsNotNull => parts.push(format!("{} {}", c.ident, c.op)),
            op => parts.push(format!("{} {op} {}", c.ident, value_text(&value))),
        }
    }
    parts.join(" AND ")
}

/// Which registry search a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Models,
    Versions,
}

impl Target {
    fn topic(self) -> &'static str {
        match self {
            Target::Models => "registry.model.search",
            Target::Versions => "registry.version.search",
        }
    }

    fn attribute_names(self) -> &'static str {
        match self {
            Target::Models => "name",
            Target::Versions => "name, source, run_id, version_number, status",
        }
    }
}

/// An attribute of a registry search, by any of its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Name,
    Source,
    RunId,
    Version,
    Status,
}

const TEXT_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike, Op::In, Op::NotIn];
const ID_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::In, Op::NotIn];
const NUMBER_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge];

fn attr(target: Target, name: &str) -> Option<(Attr, &'static [Op])> {
    let found = match name {
        "name" => (Attr::Name, TEXT_OPS),
        "source" | "source_path" => (Attr::Source, TEXT_OPS),
        "run_id" => (Attr::RunId, ID_OPS),
        "version_number" | "version" => (Attr::Version, NUMBER_OPS),
        "status" => (Attr::Status, ID_OPS),
        _ => return None,
    };
    (target == Target::Versions || found.0 == Attr::Name).then_some(found)
}

fn bad_filter(pos: usize, message: impl std::fmt::Display) -> Status {
    Status::error(
        Code::InvalidArgument,
        format!("filter at position {pos}: {message}"),
    )
    .with_field("filter")
}

/// A registry filter, checked as `registry/1` says (section 16.6).
pub(crate) fn check_registry(target: Target, text: &str) -> Result<Vec<Clause>, Status> {
    let parsed = filter::parse(text).map_err(|e| bad_filter(e.pos, e.message))?;
    for clause in &parsed.clauses {
        let refuse = |m: String| Err(bad_filter(clause.pos, m));
        match &clause.ident {
            Ident::Tag(_) => {
                if !matches!(
                    clause.op,
                    Op::Eq | Op::Ne | Op::Like | Op::ILike | Op::IsNull | Op::IsNotNull
                ) {
                    return refuse(format!("{} does not take {}", clause.ident, clause.op));
                }
                if !matches!(clause.value, Value::String(_) | Value::None) {
                    return refuse(format!(
                        "{} compares with a quoted string, not a number",
                        clause.ident
                    ));
                }
            }
            Ident::Attribute(name) => {
                let Some((a, ops)) = attr(target, name) else {
                    return refuse(format!(
                        "unknown attribute `{name}`: {} filters on {} and tags.<key>",
                        target.topic(),
                        target.attribute_names()
                    ));
                };
                if !ops.contains(&clause.op) {
                    let ops: Vec<&str> = ops.iter().map(|op| op.as_str()).collect();
                    return refuse(format!(
                        "`{name}` takes {}, not {}",
                        ops.join(" "),
                        clause.op
                    ));
                }
                match (a, &clause.value) {
                    (Attr::Version, Value::Number(_)) => {}
                    (Attr::Version, _) => {
                        return refuse(format!("`{name}` compares with a number, not a string"))
                    }
                    (_, Value::Number(_)) => {
                        return refuse(format!(
                            "{} compares with a quoted string, not a number",
                            clause.ident
                        ))
                    }
                    (Attr::Status, v) => {
                        let values: &[String] = match v {
                            Value::String(s) => std::slice::from_ref(s),
                            Value::List(items) => items,
                            _ => &[],
                        };
                        if let Some(bad) = values.iter().find(|s| VersionStatus::parse(s).is_none())
                        {
                            return refuse(format!(
                                "unknown status `{bad}`: PENDING_REGISTRATION, FAILED_REGISTRATION or READY"
                            ));
                        }
                    }
                    _ => {}
                }
            }
            other => {
                return refuse(format!(
                    "{} filters on {} and tags.<key>, not on {}",
                    target.topic(),
                    target.attribute_names(),
                    other.prefix()
                ))
            }
        }
    }
    Ok(parsed.clauses)
}

/// What a registry filter reads of an item.
pub(crate) trait Fields {
    /// `name`, `source`, `run_id` (absent: no run) or `status`.
    fn text(&self, attr: &str) -> Option<&str>;
    /// The version number (0 for a model).
    fn number(&self) -> u64;
    /// A tag's value.
    fn tag(&self, key: &str) -> Option<&str>;
}

/// `LIKE`: `%` any run, `_` any one character, `\` makes the next literal.
pub(crate) fn like(pattern: &str, text: &str, fold: bool) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Char(char),
    }
    let mut pat = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pat.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => P::Char(chars.next().unwrap_or('\\')),
            c => P::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // Greedy matching with backtracking to the last `%`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(P::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(P::One) => {
                p += 1;
                t += 1;
            }
            Some(P::Char(c)) if eq(*c, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == P::Any)
}

fn text_holds(op: Op, value: &Value, have: Option<&str>) -> bool {
    let Some(have) = have else {
        return false;
    };
    match (op, value) {
        (Op::Eq, Value::String(s)) => have == s,
        (Op::Ne, Value::String(s)) => have != s,
        (Op::Like, Value::String(s)) => like(s, have, false),
        (Op::ILike, Value::String(s)) => like(s, have, true),
        (Op::In, Value::List(items)) => items.iter().any(|s| s == have),
        (Op::NotIn, Value::List(items)) => !items.iter().any(|s| s == have),
        _ => false,
    }
}

/// Whether every clause holds for `item`.
pub(crate) fn holds(clauses: &[Clause], item: &dyn Fields) -> bool {
    clauses.iter().all(|c| match &c.ident {
        Ident::Tag(key) => match c.op {
            Op::IsNull => item.tag(key).is_none(),
            Op::IsNotNull => item.tag(key).is_some(),
            op => text_holds(op, &c.value, item.tag(key)),
        },
        Ident::Attribute(name) => match attr(Target::Versions, name) {
            Some((Attr::Version, _)) => {
                let Value::Number(n) = c.value else {
                    return false;
                };
                let v = item.number() as f64;
                match c.op {
                    Op::Eq => v == n,
                    Op::Ne => v != n,
                    Op::Lt => v < n,
                    Op::Le => v <= n,
                    Op::Gt => v > n,
                    Op::Ge => v >= n,
                    _ => false,
                }
            }
            Some((a, _)) => {
                let key = match a {
                    Attr::Name => "name",
                    Attr::Source => "source",
                    Attr::RunId => "run_id",
                    _ => "status",
                };
                text_holds(c.op, &c.value, item.text(key))
            }
            None => false,
        },
        _ => false,
    })
}

/// An exact name the filter asks for (`name = '...'`), to narrow MLflow's listing.
pub(crate) fn exact_name(clauses: &[Clause]) -> Option<&str> {
    clauses
        .iter()
        .find_map(|c| match (&c.ident, c.op, &c.value) {
            (Ident::Attribute(a), Op::Eq, Value::String(s)) if a == "name" => Some(s.as_str()),
            _ => None,
        })
}

/// MLflow's quoting of a string in a filter.
pub(crate) fn quoted(s: &str) -> String {
    quote(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_follows_the_spec() {
        assert!(like("fraud%", "fraud-eu", false));
        assert!(!like("fraud%", "Fraud-eu", false));
        assert!(like("fraud%", "Fraud-eu", true));
        assert!(like("a_c", "abc", false));
        assert!(!like("a_c", "abbc", false));
        assert!(like("%b%", "abc", false));
        assert!(like("100\\%", "100%", false));
        assert!(!like("100\\%", "1000", false));
        assert!(like("%", "", false));
        assert!(like("gs://%", "gs://c/1", false));
    }

    #[test]
    fn run_filters_go_out_as_mlflow_reads_them() {
        let f = filter::parse(
            "metrics.rmse < 0.5 and params.lr = '0.01' and tags.`a b` LIKE \"it's%\" \
             and attributes.experiment_id IN ('x', 'y') and tags.t IS NULL",
        )
        .expect("parses");
        let map = HashMap::from([("x".to_owned(), "3".to_owned())]);
        assert_eq!(
            run_filter_text(&f, &map),
            "metrics.rmse < 0.5 AND params.lr = '0.01' AND tags.`a b` LIKE \"it's%\" \
             AND attributes.experiment_id IN ('3', 'y') AND tags.t IS NULL"
        );
    }

    #[test]
    fn registry_filters_are_checked_like_the_registry() {
        let pos = |t: Target, f: &str| {
            check_registry(t, f)
                .expect_err("refused")
                .message
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            pos(Target::Versions, "name = 'fraud' AND version_number >"),
            "filter at position 35"
        );
        assert_eq!(
            pos(Target::Models, "name = 'a' OR name = 'b'"),
            "filter at position 11"
        );
        assert_eq!(
            pos(Target::Models, "metrics.auc > 0.9"),
            "filter at position 0"
        );
        assert!(check_registry(Target::Models, "source = 'x'").is_err());
        assert!(check_registry(Target::Versions, "status = 'DONE'").is_err());
        assert!(check_registry(Target::Versions, "status IN ('READY')").is_ok());
    }
}
