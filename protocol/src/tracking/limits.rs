//! The limits of `tracking/1`, MLflow 3's: names, value lengths and batch sizes.
//!
//! A tracker MUST refuse a request that breaks one with INVALID_ARGUMENT naming the
//! offending item (`metrics[3].key`); a client SHOULD check before sending. Checking is
//! the same code on both sides: [`check_log`], [`check_run_start`],
//! [`check_experiment_create`].

use std::collections::HashMap;

use crate::status::{Code, Status};

use super::{DatasetInput, ExperimentCreate, LogBatch, RunEnd, RunStart, Tags};

/// Metrics in one batch.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// Params in one batch.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// Tags in one batch.
pub const MAX_TAGS_PER_BATCH: usize = 100;
/// Dataset inputs in one batch.
pub const MAX_INPUTS_PER_BATCH: usize = 100;
/// Params, metrics, tags and inputs together in one batch.
pub const MAX_ENTITIES_PER_BATCH: usize = 1000;
/// Bytes in a param, metric or tag key.
pub const MAX_KEY_LENGTH: usize = 250;
/// Bytes in a param value.
pub const MAX_PARAM_VALUE_LENGTH: usize = 6000;
/// Bytes in a tag value.
pub const MAX_TAG_VALUE_LENGTH: usize = 8000;
/// Bytes in an experiment name.
pub const MAX_EXPERIMENT_NAME_LENGTH: usize = 500;
/// Bytes in a run name.
pub const MAX_RUN_NAME_LENGTH: usize = 250;
/// Bytes in a dataset name.
pub const MAX_DATASET_NAME_LENGTH: usize = 500;
/// Bytes in a dataset digest.
pub const MAX_DATASET_DIGEST_LENGTH: usize = 36;
/// Bytes in a dataset source.
pub const MAX_DATASET_SOURCE_LENGTH: usize = 65535;
/// Bytes in a dataset context.
pub const MAX_DATASET_CONTEXT_LENGTH: usize = 500;

/// Tag keys under this prefix are the system's; only [`SYSTEM_TAGS`] may be set.
pub const SYSTEM_TAG_PREFIX: &str = "mlmesh.";
/// The reserved tags a client sets at run start.
pub const SYSTEM_TAGS: &[&str] = &[
    "mlmesh.source.name",
    "mlmesh.source.git.commit",
    "mlmesh.user",
    "mlmesh.note",
];

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
}

/// Checks a param, metric or tag key: 1 to 250 bytes of letters, digits, `_ - . /` and
/// spaces, and not a path that would resolve to another name (`a//b`, `./a`, `/a`, `a/..`).
pub fn check_key(field: &str, key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(invalid(field, "a key must not be empty"));
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(invalid(
            field,
            format!("key of {} bytes, the limit is {MAX_KEY_LENGTH}", key.len()),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ')))
    {
        return Err(invalid(
            field,
            format!("key `{key}` has {c:?}: keys may only contain letters, digits, `_ - . /` and spaces"),
        ));
    }
    let path_like = key.starts_with('/')
        || key.ends_with('/')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if path_like {
        return Err(invalid(
            field,
            format!("key `{key}` would resolve to another name as a path"),
        ));
    }
    Ok(())
}

/// Runs `check` and names its field only if it fails: formatting an item's field name
/// cost more than checking the item.
fn named(
    field: impl FnOnce() -> String,
    check: impl FnOnce(&str) -> Result<(), Status>,
) -> Result<(), Status> {
    check("").map_err(|e| e.with_field(field()))
}

fn check_len(field: &str, what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{what} of {} bytes, the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

fn check_tag(field: &str, key: &str, value: &str) -> Result<(), Status> {
    check_key(field, key)?;
    if key.starts_with(SYSTEM_TAG_PREFIX) && !SYSTEM_TAGS.contains(&key) {
        return Err(invalid(
            field,
            format!("tag `{key}`: the `{SYSTEM_TAG_PREFIX}` prefix is reserved"),
        ));
    }
    check_len(field, "tag value", value, MAX_TAG_VALUE_LENGTH)
}

fn check_tags(field: &str, tags: &Tags) -> Result<(), Status> {
    if tags.len() > MAX_TAGS_PER_BATCH {
        return Err(invalid(
            field,
            format!("{} tags, the limit is {MAX_TAGS_PER_BATCH}", tags.len()),
        ));
    }
    for (k, v) in tags {
        check_tag(&format!("{field}.{k}"), k, v)?;
    }
    Ok(())
}

fn check_input(field: &str, d: &DatasetInput) -> Result<(), Status> {
    if d.name.is_empty() {
        return Err(invalid(format!("{field}.name"), "a dataset needs a name"));
    }
    check_len(
        &format!("{field}.name"),
        "dataset name",
        &d.name,
        MAX_DATASET_NAME_LENGTH,
    )?;
    check_len(
        &format!("{field}.digest"),
        "dataset digest",
        &d.digest,
        MAX_DATASET_DIGEST_LENGTH,
    )?;
    check_len(
        &format!("{field}.source"),
        "dataset source",
        &d.source,
        MAX_DATASET_SOURCE_LENGTH,
    )?;
    check_len(
        &format!("{field}.context"),
        "dataset context",
        &d.context,
        MAX_DATASET_CONTEXT_LENGTH,
    )
}

/// Checks a `tracking.run.log` batch against every limit, without looking at the store.
/// Two params of the same key in one batch must have the same value.
pub fn check_log(batch: &LogBatch) -> Result<(), Status> {
    let LogBatch {
        run: _,
        params,
        metrics,
        tags,
        inputs,
    } = batch;
    let counts = [
        ("metrics", metrics.len(), MAX_METRICS_PER_BATCH),
        ("params", params.len(), MAX_PARAMS_PER_BATCH),
        ("tags", tags.len(), MAX_TAGS_PER_BATCH),
        ("inputs", inputs.len(), MAX_INPUTS_PER_BATCH),
    ];
    for (field, n, max) in counts {
        if n > max {
            return Err(invalid(
                field,
                format!("{n} {field} in one batch, the limit is {max}"),
            ));
        }
    }
    let total = metrics.len() + params.len() + tags.len() + inputs.len();
    if total > MAX_ENTITIES_PER_BATCH {
        return Err(invalid(
            "metrics",
            format!("{total} items in one batch, the limit is {MAX_ENTITIES_PER_BATCH}"),
        ));
    }
    for (i, m) in metrics.iter().enumerate() {
        named(|| format!("metrics[{i}].key"), |f| check_key(f, &m.key))?;
    }
    let mut seen: HashMap<&str, &str> = HashMap::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        named(|| format!("params[{i}].key"), |f| check_key(f, &p.key))?;
        named(
            || format!("params[{i}].value"),
            |f| check_len(f, "param value", &p.value, MAX_PARAM_VALUE_LENGTH),
        )?;
        if let Some(other) = seen.insert(&p.key, &p.value) {
            if other != p.value {
                return Err(invalid(
                    format!("params[{i}].value"),
                    format!(
                        "param `{}` appears twice in the batch with different values",
                        p.key
                    ),
                ));
            }
        }
    }
    for (i, t) in tags.iter().enumerate() {
        named(|| format!("tags[{i}]"), |f| check_tag(f, &t.key, &t.value))?;
    }
    for (i, d) in inputs.iter().enumerate() {
        check_input(&format!("inputs[{i}]"), d)?;
    }
    Ok(())
}

/// Checks an experiment name: 1 to 500 bytes.
pub fn check_experiment_name(field: &str, name: &str) -> Result<(), Status> {
    if name.trim().is_empty() {
        return Err(invalid(field, "an experiment needs a name"));
    }
    check_len(field, "experiment name", name, MAX_EXPERIMENT_NAME_LENGTH)
}

/// Checks a `tracking.experiment.create` payload.
pub fn check_experiment_create(req: &ExperimentCreate) -> Result<(), Status> {
    check_experiment_name("name", &req.name)?;
    check_tags("tags", &req.tags)
}

/// Checks a `tracking.run.start` payload.
pub fn check_run_start(req: &RunStart) -> Result<(), Status> {
    check_experiment_name("experiment", &req.experiment)?;
    if let Some(name) = &req.name {
        check_len("name", "run name", name, MAX_RUN_NAME_LENGTH)?;
    }
    check_time("start_ms", req.start_ms)?;
    check_tags("tags", &req.tags)
}

/// Checks a `tracking.run.end` against the limits (its status is the tracker's to judge).
pub fn check_run_end(req: &RunEnd) -> Result<(), Status> {
    check_time("end_ms", req.end_ms)
}

/// The largest time a tracker takes, Unix milliseconds: a signed 64-bit integer's range,
/// as stores keep it.
pub const MAX_TIME_MS: u64 = i64::MAX as u64;

fn check_time(field: &str, ms: Option<u64>) -> Result<(), Status> {
    match ms {
        Some(ms) if ms > MAX_TIME_MS => Err(Status::error(
            Code::InvalidArgument,
            format!("{field} is {ms}, over the largest time taken ({MAX_TIME_MS})"),
        )
        .with_field(field)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::{Metric, Param, RunId, Tag};

    fn batch() -> LogBatch {
        LogBatch {
            run: RunId::new(),
            params: vec![],
            metrics: vec![],
            tags: vec![],
            inputs: vec![],
        }
    }

    fn field_of(r: Result<(), Status>) -> String {
        let s = r.expect_err("should be refused");
        assert_eq!(s.code, Code::InvalidArgument);
        s.field.unwrap_or_default()
    }

    #[test]
    fn keys_follow_mlflow_rules() {
        for ok in ["loss", "val/loss", "a.b-c d_e", "é"] {
            check_key("k", ok).unwrap();
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/..",
            "a:b",
            "a\nb",
            &"k".repeat(251),
        ] {
            assert!(check_key("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn batch_limits_name_the_item() {
        let mut b = batch();
        b.metrics = vec![
            Metric {
                key: "ok".into(),
                value: f64::NAN,
                timestamp: 0,
                step: 0
            };
            1001
        ];
        assert_eq!(field_of(check_log(&b)), "metrics");
        b.metrics.truncate(3);
        b.metrics[2].key = "bad:key".into();
        assert_eq!(field_of(check_log(&b)), "metrics[2].key");

        let mut b = batch();
        b.params = vec![
            Param {
                key: "lr".into(),
                value: "0.1".into(),
            },
            Param {
                key: "lr".into(),
                value: "0.2".into(),
            },
        ];
        assert_eq!(field_of(check_log(&b)), "params[1].value");
        b.params[1].value = "0.1".into();
        check_log(&b).unwrap();
        b.params[0].value = "x".repeat(6001);
        assert_eq!(field_of(check_log(&b)), "params[0].value");

        let mut b = batch();
        b.tags = vec![Tag {
            key: "mlmesh.secret".into(),
            value: String::new(),
        }];
        assert_eq!(field_of(check_log(&b)), "tags[0]");
        b.tags[0].key = "mlmesh.user".into();
        check_log(&b).unwrap();
    }

    #[test]
    fn times_past_a_signed_64_bit_integer_are_refused_by_name() {
        let start = |ms| RunStart {
            experiment: "e".into(),
            start_ms: Some(ms),
            ..RunStart::default()
        };
        assert!(check_run_start(&start(MAX_TIME_MS)).is_ok());
        let err = check_run_start(&start(MAX_TIME_MS + 1)).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(err.field.as_deref(), Some("start_ms"));
        let end = RunEnd {
            run: RunId::new(),
            status: crate::tracking::RunStatus::Finished,
            end_ms: Some(u64::MAX),
        };
        assert_eq!(
            check_run_end(&end).unwrap_err().field.as_deref(),
            Some("end_ms")
        );
    }
}
