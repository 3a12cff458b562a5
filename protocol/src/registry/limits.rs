//! The rules and limits of `registry/1`: model names, aliases, lengths, tags, paging.
//!
//! A registry MUST refuse a request that breaks one with INVALID_ARGUMENT naming the
//! offending field (`tags.team`, `alias`); a client SHOULD check before sending. Checking
//! is the same code on both sides: one `check_*` function per instruction.
//!
//! - **Model names** are ours, stricter than MLflow's: 1 to 256 bytes, no `/`, `:` or `@`
//!   (they break `models:/<name>/<version>` and `models:/<name>@<alias>` URIs), no
//!   control characters, and not only spaces.
//! - **Aliases** are MLflow's: `^[A-Za-z0-9_-]+$` (ASCII where MLflow's `\w` also takes
//!   other letters), at most 255 bytes; `latest` and `v<digits>` are reserved in any
//!   case, since `models:/<name>/latest` and `v3` already mean a version.
//! - **Tags**: keys follow [`crate::tracking::limits::check_key`]; values at most 5000
//!   bytes (MLflow's); at most 100 set or deleted in one request.

use crate::status::{Code, Status};
use crate::tracking::limits::check_key;

use super::{
    AliasAssign, AliasDelete, Locate, ModelCreate, ModelGet, ModelSearch, ModelUpdate, Tags,
    Version, VersionCreate, VersionGet, VersionSearch, VersionUpdate,
};

/// Bytes in a model name.
pub const MAX_MODEL_NAME_LENGTH: usize = 256;
/// Bytes in an alias.
pub const MAX_ALIAS_LENGTH: usize = 255;
/// Bytes in a model's or a version's description.
pub const MAX_DESCRIPTION_LENGTH: usize = 5000;
/// Bytes in a version's status message.
pub const MAX_STATUS_MESSAGE_LENGTH: usize = 5000;
/// Bytes in a tag value.
pub const MAX_TAG_VALUE_LENGTH: usize = 5000;
/// Tags set, or tag keys deleted, in one request.
pub const MAX_TAGS_PER_REQUEST: usize = 100;
/// Bytes in a version's source URI.
pub const MAX_SOURCE_LENGTH: usize = 4096;
/// Bytes in a search filter.
pub const MAX_FILTER_LENGTH: usize = 10_000;
/// Orderings in one search.
pub const MAX_ORDER_BY: usize = 8;
/// Page size of a search that names none.
pub const DEFAULT_MAX_RESULTS: u32 = 100;
/// Largest page of a search.
pub const MAX_RESULTS: u32 = 1000;

/// The orderings `registry.model.search` takes.
pub const MODEL_ORDER_KEYS: &[&str] = &["name", "created", "updated"];
/// The orderings `registry.version.search` takes.
pub const VERSION_ORDER_KEYS: &[&str] = &["name", "version_number", "created", "updated"];

/// MLflow's names for the orderings, understood as ours.
const ORDER_SYNONYMS: &[(&str, &str)] = &[
    ("creation_timestamp", "created"),
    ("last_updated_timestamp", "updated"),
    ("timestamp", "updated"),
];

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
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

/// Checks a model name: 1 to 256 bytes, not only spaces, without `/`, `:`, `@` or
/// control characters.
pub fn check_model_name(field: &str, name: &str) -> Result<(), Status> {
    if name.trim().is_empty() {
        return Err(invalid(field, "a registered model needs a name"));
    }
    check_len(field, "model name", name, MAX_MODEL_NAME_LENGTH)?;
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '@') || c.is_control())
    {
        return Err(invalid(
            field,
            format!(
                "model name `{}` has {c:?}: `/`, `:`, `@` and control characters would break `models:/` URIs",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Whether `alias` is `latest` in any case: not an alias that can be set, but understood
/// by `registry.model.locate` as the latest READY version.
pub fn is_latest(alias: &str) -> bool {
    alias.eq_ignore_ascii_case("latest")
}

/// Whether `alias` is reserved: `latest`, or `v` followed by digits, in any case.
pub fn is_reserved_alias(alias: &str) -> bool {
    if is_latest(alias) {
        return true;
    }
    match alias.strip_prefix(['v', 'V']) {
        Some(digits) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Checks an alias that can be set: 1 to 255 bytes of `A-Z a-z 0-9 _ -`, not reserved.
pub fn check_alias(field: &str, alias: &str) -> Result<(), Status> {
    if alias.is_empty() {
        return Err(invalid(field, "an alias must not be empty"));
    }
    check_len(field, "alias", alias, MAX_ALIAS_LENGTH)?;
    if let Some(c) = alias
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(invalid(
            field,
            format!(
                "alias `{}` has {c:?}: aliases may only contain A-Z, a-z, 0-9, `_` and `-`",
                alias.escape_debug()
            ),
        ));
    }
    if is_reserved_alias(alias) {
        return Err(invalid(
            field,
            format!("alias `{alias}` is reserved: `latest` and `v<number>` already name versions"),
        ));
    }
    Ok(())
}

/// Checks a version number: 1 or more.
pub fn check_version(field: &str, version: Version) -> Result<(), Status> {
    if version == 0 {
        return Err(invalid(field, "versions are numbered from 1"));
    }
    Ok(())
}

fn check_description(field: &str, description: &str) -> Result<(), Status> {
    check_len(field, "description", description, MAX_DESCRIPTION_LENGTH)
}

fn check_tags(field: &str, tags: &Tags) -> Result<(), Status> {
    if tags.len() > MAX_TAGS_PER_REQUEST {
        return Err(invalid(
            field,
            format!("{} tags, the limit is {MAX_TAGS_PER_REQUEST}", tags.len()),
        ));
    }
    for (k, v) in tags {
        let path = format!("{field}.{k}");
        check_key(&path, k)?;
        check_len(&path, "tag value", v, MAX_TAG_VALUE_LENGTH)?;
    }
    Ok(())
}

fn check_tag_changes(set: &Tags, delete: &[String]) -> Result<(), Status> {
    check_tags("set_tags", set)?;
    if delete.len() > MAX_TAGS_PER_REQUEST {
        return Err(invalid(
            "delete_tags",
            format!(
                "{} tags to delete, the limit is {MAX_TAGS_PER_REQUEST}",
                delete.len()
            ),
        ));
    }
    for (i, k) in delete.iter().enumerate() {
        let path = format!("delete_tags[{i}]");
        check_key(&path, k)?;
        if set.contains_key(k) {
            return Err(invalid(path, format!("tag `{k}` is both set and deleted")));
        }
    }
    Ok(())
}

/// Parses one ordering, `<key> [ASC|DESC]` (case-insensitive), against `keys` (MLflow's
/// `creation_timestamp` and `last_updated_timestamp` are understood too). Returns the
/// key as it is in `keys` and whether the order is descending.
pub fn parse_order(
    field: &str,
    clause: &str,
    keys: &[&'static str],
) -> Result<(&'static str, bool), Status> {
    let mut words = clause.split_whitespace();
    let key = words.next().unwrap_or_default();
    let desc = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("asc") => false,
        Some(w) if w.eq_ignore_ascii_case("desc") => true,
        Some(w) => {
            return Err(invalid(
                field,
                format!("ordering `{clause}`: `{w}` is neither ASC nor DESC"),
            ))
        }
    };
    if words.next().is_some() {
        return Err(invalid(
            field,
            format!("ordering `{clause}`: expected `<key> [ASC|DESC]`"),
        ));
    }
    let key = key.strip_prefix("attributes.").unwrap_or(key);
    let canonical = ORDER_SYNONYMS
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, to)| to);
    match keys.iter().find(|k| **k == canonical) {
        Some(k) => Ok((k, desc)),
        None => Err(invalid(
            field,
            format!(
                "ordering `{clause}`: cannot order by `{key}`; one of {}",
                keys.join(", ")
            ),
        )),
    }
}

fn check_search(
    filter: &str,
    order_by: &[String],
    max_results: u32,
    keys: &[&'static str],
) -> Result<(), Status> {
    check_len("filter", "filter", filter, MAX_FILTER_LENGTH)?;
    if order_by.len() > MAX_ORDER_BY {
        return Err(invalid(
            "order_by",
            format!("{} orderings, the limit is {MAX_ORDER_BY}", order_by.len()),
        ));
    }
    for (i, clause) in order_by.iter().enumerate() {
        parse_order(&format!("order_by[{i}]"), clause, keys)?;
    }
    if !(1..=MAX_RESULTS).contains(&max_results) {
        return Err(invalid(
            "max_results",
            format!("max_results is {max_results}; it must be 1 to {MAX_RESULTS}"),
        ));
    }
    Ok(())
}

/// Checks a `registry.model.create` payload.
pub fn check_model_create(req: &ModelCreate) -> Result<(), Status> {
    let ModelCreate {
        name,
        description,
        tags,
    } = req;
    check_model_name("name", name)?;
    check_description("description", description)?;
    check_tags("tags", tags)
}

/// Checks a `registry.model.get` payload.
pub fn check_model_get(req: &ModelGet) -> Result<(), Status> {
    check_model_name("name", &req.name)
}

/// Checks a `registry.model.update` payload.
pub fn check_model_update(req: &ModelUpdate) -> Result<(), Status> {
    let ModelUpdate {
        name,
        description,
        set_tags,
        delete_tags,
    } = req;
    check_model_name("name", name)?;
    if let Some(d) = description {
        check_description("description", d)?;
    }
    check_tag_changes(set_tags, delete_tags)
}

/// Checks a `registry.model.search` payload (the filter's grammar is the registry's to check).
pub fn check_model_search(req: &ModelSearch) -> Result<(), Status> {
    check_search(
        &req.filter,
        &req.order_by,
        req.max_results,
        MODEL_ORDER_KEYS,
    )
}

/// Checks a `registry.version.create` payload.
pub fn check_version_create(req: &VersionCreate) -> Result<(), Status> {
    let VersionCreate {
        name,
        source,
        run_id: _,
        description,
        tags,
        status: _,
    } = req;
    check_model_name("name", name)?;
    if source.trim().is_empty() {
        return Err(invalid(
            "source",
            "a model version needs a source: the URI of its files",
        ));
    }
    check_len("source", "source", source, MAX_SOURCE_LENGTH)?;
    check_description("description", description)?;
    check_tags("tags", tags)
}

/// Checks a `registry.version.get` payload.
pub fn check_version_get(req: &VersionGet) -> Result<(), Status> {
    check_model_name("name", &req.name)?;
    check_version("version", req.version)
}

/// Checks a `registry.version.update` payload.
pub fn check_version_update(req: &VersionUpdate) -> Result<(), Status> {
    let VersionUpdate {
        name,
        version,
        description,
        status: _,
        status_message,
        set_tags,
        delete_tags,
    } = req;
    check_model_name("name", name)?;
    check_version("version", *version)?;
    if let Some(d) = description {
        check_description("description", d)?;
    }
    if let Some(m) = status_message {
        check_len(
            "status_message",
            "status message",
            m,
            MAX_STATUS_MESSAGE_LENGTH,
        )?;
    }
    check_tag_changes(set_tags, delete_tags)
}

/// Checks a `registry.version.search` payload (the filter's grammar is the registry's to check).
pub fn check_version_search(req: &VersionSearch) -> Result<(), Status> {
    check_search(
        &req.filter,
        &req.order_by,
        req.max_results,
        VERSION_ORDER_KEYS,
    )
}

/// Checks a `registry.alias.assign` payload.
pub fn check_alias_set(req: &AliasAssign) -> Result<(), Status> {
    check_model_name("name", &req.name)?;
    check_alias("alias", &req.alias)?;
    check_version("version", req.version)
}

/// Checks a `registry.alias.delete` payload.
pub fn check_alias_delete(req: &AliasDelete) -> Result<(), Status> {
    check_model_name("name", &req.name)?;
    check_alias("alias", &req.alias)
}

/// Checks a `registry.model.locate` payload: at most one of `version` and `alias`, which
/// may be `latest`.
pub fn check_locate(req: &Locate) -> Result<(), Status> {
    check_model_name("name", &req.name)?;
    if let Some(v) = req.version {
        check_version("version", v)?;
    }
    if let Some(alias) = &req.alias {
        if req.version.is_some() {
            return Err(invalid("alias", "give a version or an alias, not both"));
        }
        if !is_latest(alias) {
            check_alias("alias", alias)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<(), Status>) -> String {
        let s = r.expect_err("should be refused");
        assert_eq!(s.code, Code::InvalidArgument);
        s.field.unwrap_or_default()
    }

    #[test]
    fn model_names_keep_uris_whole() {
        for ok in ["fraud", "Fraud Model v2", "a.b-c_d", "é", &"n".repeat(256)] {
            check_model_name("name", ok).unwrap();
        }
        for bad in ["", "  ", "a/b", "a:b", "a@b", "a\nb", &"n".repeat(257)] {
            assert_eq!(field_of(check_model_name("name", bad)), "name", "{bad:?}");
        }
    }

    #[test]
    fn aliases_follow_mlflow_rules() {
        for ok in [
            "champion",
            "Champ-1_b",
            "v",
            "vx1",
            "v1a",
            "latest2",
            "x",
            &"a".repeat(255),
        ] {
            check_alias("alias", ok).unwrap();
        }
        for bad in [
            "",
            "latest",
            "LATEST",
            "Latest",
            "v1",
            "V12",
            "v007",
            "a b",
            "a.b",
            "a/b",
            "é",
            &"a".repeat(256),
        ] {
            assert_eq!(field_of(check_alias("alias", bad)), "alias", "{bad:?}");
        }
        assert!(is_reserved_alias("V3") && !is_reserved_alias("v") && !is_reserved_alias("va"));
    }

    #[test]
    fn locate_takes_latest_and_one_selector() {
        let mut l = Locate {
            name: "m".into(),
            ..Locate::default()
        };
        check_locate(&l).unwrap();
        l.alias = Some("LATEST".into());
        check_locate(&l).unwrap();
        l.alias = Some("v2".into());
        assert_eq!(field_of(check_locate(&l)), "alias");
        l.alias = Some("champion".into());
        check_locate(&l).unwrap();
        l.version = Some(2);
        assert_eq!(field_of(check_locate(&l)), "alias");
        l.alias = None;
        check_locate(&l).unwrap();
        l.version = Some(0);
        assert_eq!(field_of(check_locate(&l)), "version");
    }

    #[test]
    fn versions_need_a_source_and_good_tags() {
        let mut v = VersionCreate {
            name: "m".into(),
            source: "s3://b/m".into(),
            ..VersionCreate::default()
        };
        check_version_create(&v).unwrap();
        v.source = " ".into();
        assert_eq!(field_of(check_version_create(&v)), "source");
        v.source = "x".repeat(MAX_SOURCE_LENGTH + 1);
        assert_eq!(field_of(check_version_create(&v)), "source");
        v.source = "runs:/abc/model".into();
        v.tags.insert("bad:key".into(), "x".into());
        assert_eq!(field_of(check_version_create(&v)), "tags.bad:key");
        v.tags.clear();
        v.tags.insert("ok".into(), "x".repeat(5001));
        assert_eq!(field_of(check_version_create(&v)), "tags.ok");
        v.tags.clear();
        v.description = "d".repeat(5001);
        assert_eq!(field_of(check_version_create(&v)), "description");
    }

    #[test]
    fn updates_name_the_tag_at_fault() {
        let mut u = ModelUpdate {
            name: "m".into(),
            ..ModelUpdate::default()
        };
        u.set_tags.insert("a".into(), "1".into());
        u.delete_tags = vec!["b".into(), "a".into()];
        assert_eq!(field_of(check_model_update(&u)), "delete_tags[1]");
        u.delete_tags = vec!["b".into(), "".into()];
        assert_eq!(field_of(check_model_update(&u)), "delete_tags[1]");
        u.delete_tags.pop();
        check_model_update(&u).unwrap();
        u.set_tags = (0..101).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(field_of(check_model_update(&u)), "set_tags");

        let mut v = VersionUpdate {
            name: "m".into(),
            version: 0,
            ..VersionUpdate::default()
        };
        assert_eq!(field_of(check_version_update(&v)), "version");
        v.version = 1;
        v.status_message = Some("m".repeat(5001));
        assert_eq!(field_of(check_version_update(&v)), "status_message");
    }

    #[test]
    fn searches_bound_pages_and_orderings() {
        let mut s = ModelSearch::default();
        assert_eq!(s.max_results, 100);
        check_model_search(&s).unwrap();
        s.max_results = 0;
        assert_eq!(field_of(check_model_search(&s)), "max_results");
        s.max_results = 1001;
        assert_eq!(field_of(check_model_search(&s)), "max_results");
        s.max_results = 1000;
        s.order_by = vec!["name DESC".into(), "version_number".into()];
        assert_eq!(field_of(check_model_search(&s)), "order_by[1]");
        let v = VersionSearch {
            order_by: s.order_by.clone(),
            ..VersionSearch::default()
        };
        check_version_search(&v).unwrap();

        assert_eq!(
            parse_order("o", "  updated   desc ", MODEL_ORDER_KEYS),
            Ok(("updated", true))
        );
        assert_eq!(
            parse_order("o", "last_updated_timestamp ASC", MODEL_ORDER_KEYS),
            Ok(("updated", false))
        );
        for bad in ["", "name sideways", "name asc desc", "tags.x"] {
            assert!(parse_order("o", bad, MODEL_ORDER_KEYS).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_ignore_unknown_fields_and_omit_absent_ones() {
        #[derive(serde::Serialize)]
        struct Wider<'a> {
            name: &'a str,
            version: u64,
            future: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&Wider {
            name: "m",
            version: 3,
            future: "x",
        })
        .unwrap();
        let get: VersionGet = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(get.version, 3);
        let l = Locate {
            name: "m".into(),
            ..Locate::default()
        };
        let v: rmpv::Value = rmp_serde::from_slice(&rmp_serde::to_vec_named(&l).unwrap()).unwrap();
        assert_eq!(v.as_map().map(Vec::len), Some(1));
        let st: crate::registry::VersionStatus =
            rmp_serde::from_slice(&rmp_serde::to_vec("PENDING_REGISTRATION").unwrap()).unwrap();
        assert_eq!(st.as_str(), "PENDING_REGISTRATION");
    }
}
