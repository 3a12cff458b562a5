//! The registry's reads, and the row loaders its writes share.

use rusqlite::{params, Connection, OptionalExtension};

use mlmesh::protocol::registry::{
    limits, Locate, Located, ModelGet, ModelVersion, RegisteredModel, RunId, Tags, Version,
    VersionGet, VersionStatus,
};
use mlmesh::protocol::{Code, Status};

use crate::store::internal;

pub(super) type Result<T> = std::result::Result<T, Status>;

pub(super) fn not_found(field: &str, what: String) -> Status {
    Status::error(Code::NotFound, what).with_field(field)
}

fn no_model(name: &str) -> Status {
    not_found("name", format!("no registered model `{name}`"))
}

/// Whether the model exists.
pub(super) fn model_exists(c: &Connection, name: &str) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM models WHERE name = ?1")
        .and_then(|mut st| st.exists([name]))
        .map_err(internal)
}

/// Fails NOT_FOUND (`name`) unless the model exists.
pub(super) fn require_model(c: &Connection, name: &str) -> Result<()> {
    if model_exists(c, name)? {
        Ok(())
    } else {
        Err(no_model(name))
    }
}

/// The model, with its tags and aliases.
pub(super) fn model(c: &Connection, name: &str) -> Result<Option<RegisteredModel>> {
    let row = c
        .prepare_cached(
            "SELECT description, last_version, created_ms, updated_ms FROM models WHERE name = ?1",
        )
        .and_then(|mut st| {
            st.query_row([name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u64>(3)?,
                ))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((description, last_version, created_ms, updated_ms)) = row else {
        return Ok(None);
    };
    let tags = tags(
        c,
        "SELECT key, value FROM model_tags WHERE model = ?1",
        params![name],
    )?;
    let aliases = c
        .prepare_cached("SELECT alias, version FROM aliases WHERE model = ?1")
        .and_then(|mut st| {
            st.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(internal)?;
    Ok(Some(RegisteredModel {
        name: name.to_owned(),
        description,
        tags,
        aliases,
        last_version,
        created_ms,
        updated_ms,
    }))
}

fn tags(c: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Tags> {
    c.prepare_cached(sql)
        .and_then(|mut st| {
            st.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(internal)
}

/// The version, with its tags and aliases. A number beyond SQLite's integers is no version.
pub(super) fn version(
    c: &Connection,
    name: &str,
    version: Version,
) -> Result<Option<ModelVersion>> {
    if i64::try_from(version).is_err() {
        return Ok(None);
    }
    let row = c
        .prepare_cached(
            "SELECT source, run_id, status, status_message, description, created_ms, updated_ms
             FROM versions WHERE model = ?1 AND version = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![name, version], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, u64>(5)?,
                    r.get::<_, u64>(6)?,
                ))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((source, run_id, status, status_message, description, created_ms, updated_ms)) = row
    else {
        return Ok(None);
    };
    let run_id = run_id
        .map(|s| RunId::parse(&s))
        .transpose()
        .map_err(internal)?;
    let status = VersionStatus::parse(&status)
        .ok_or_else(|| internal(format!("version status `{status}` in the store")))?;
    let tags = tags(
        c,
        "SELECT key, value FROM version_tags WHERE model = ?1 AND version = ?2",
        params![name, version],
    )?;
    let aliases = c
        .prepare_cached(
            "SELECT alias FROM aliases WHERE model = ?1 AND version = ?2 ORDER BY alias",
        )
        .and_then(|mut st| {
            st.query_map(params![name, version], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(internal)?;
    Ok(Some(ModelVersion {
        name: name.to_owned(),
        version,
        source,
        run_id,
        status,
        status_message,
        description,
        tags,
        aliases,
        created_ms,
        updated_ms,
    }))
}

/// The version, or NOT_FOUND naming `name` (no such model) or `version`.
pub(super) fn require_version(c: &Connection, name: &str, v: Version) -> Result<ModelVersion> {
    if let Some(found) = version(c, name, v)? {
        return Ok(found);
    }
    require_model(c, name)?;
    Err(not_found(
        "version",
        format!("model `{name}` has no version {v}"),
    ))
}

/// The version an alias names.
pub(super) fn alias_target(c: &Connection, name: &str, alias: &str) -> Result<Option<Version>> {
    c.prepare_cached("SELECT version FROM aliases WHERE model = ?1 AND alias = ?2")
        .and_then(|mut st| st.query_row([name, alias], |r| r.get(0)).optional())
        .map_err(internal)
}

/// `registry.model.get`.
pub(super) fn model_get(c: &Connection, req: &ModelGet) -> Result<RegisteredModel> {
    limits::check_model_get(req)?;
    model(c, &req.name)?.ok_or_else(|| no_model(&req.name))
}

/// `registry.version.get`.
pub(super) fn version_get(c: &Connection, req: &VersionGet) -> Result<ModelVersion> {
    limits::check_version_get(req)?;
    require_version(c, &req.name, req.version)
}

/// `registry.model.locate`: by version, by alias, or the latest READY version.
pub(super) fn locate(c: &Connection, req: &Locate) -> Result<Located> {
    limits::check_locate(req)?;
    let name = req.name.as_str();
    require_model(c, name)?;
    let number = match (req.version, req.alias.as_deref()) {
        (Some(v), _) => v,
        (None, Some(alias)) if !limits::is_latest(alias) => alias_target(c, name, alias)?
            .ok_or_else(|| not_found("alias", format!("model `{name}` has no alias `{alias}`")))?,
        (None, latest) => {
            let v: Option<Version> = c
                .prepare_cached(
                    "SELECT max(version) FROM versions WHERE model = ?1 AND status = 'READY'",
                )
                .and_then(|mut st| st.query_row([name], |r| r.get(0)))
                .map_err(internal)?;
            v.ok_or_else(|| {
                let field = if latest.is_some() { "alias" } else { "version" };
                not_found(
                    field,
                    format!("model `{name}` has no READY version to be the latest"),
                )
            })?
        }
    };
    let v = require_version(c, name, number)?;
    Ok(Located {
        name: v.name,
        version: v.version,
        source: v.source,
        run_id: v.run_id,
        status: v.status,
        alias: req.alias.clone(),
    })
}
