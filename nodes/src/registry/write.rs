//! The registry's writes. Each runs inside the store's group commit, in its own
//! savepoint: an error undoes the whole instruction and nothing else. Events are
//! published once the commit is done.

use rusqlite::{params, Connection};

use mlmesh::protocol::registry::{
    self, limits, AliasAssign, AliasDelete, AliasDeleted, AliasSet, ModelCreate, ModelUpdate,
    RegisteredModel, RunId, Tags, Version, VersionCreate, VersionUpdate,
};
use mlmesh::protocol::{Code, Status};

use super::read::{self, not_found, require_model, require_version, Result};
use crate::serve::Meta;
use crate::store::{internal, Done};

/// The model as it is now (it exists: the op created or found it).
fn model_now(c: &Connection, name: &str) -> Result<RegisteredModel> {
    read::model(c, name)?.ok_or_else(|| internal(format!("model `{name}` vanished")))
}

fn insert_model(
    c: &Connection,
    name: &str,
    description: &str,
    tags: &Tags,
    now: u64,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO models(name, description, last_version, created_ms, updated_ms)
         VALUES (?1, ?2, 0, ?3, ?3)",
    )
    .and_then(|mut st| st.execute(params![name, description, now]))
    .map_err(internal)?;
    set_model_tags(c, name, tags)
}

fn set_model_tags(c: &Connection, name: &str, tags: &Tags) -> Result<()> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO model_tags(model, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(model, key) DO UPDATE SET value = excluded.value",
        )
        .map_err(internal)?;
    for (k, v) in tags {
        st.execute(params![name, k, v]).map_err(internal)?;
    }
    Ok(())
}

fn set_version_tags(c: &Connection, name: &str, version: Version, tags: &Tags) -> Result<()> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO version_tags(model, version, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(model, version, key) DO UPDATE SET value = excluded.value",
        )
        .map_err(internal)?;
    for (k, v) in tags {
        st.execute(params![name, version, k, v]).map_err(internal)?;
    }
    Ok(())
}

/// Marks the model changed now.
fn touch_model(c: &Connection, name: &str, now: u64) -> Result<()> {
    c.prepare_cached("UPDATE models SET updated_ms = max(updated_ms, ?2) WHERE name = ?1")
        .and_then(|mut st| st.execute(params![name, now]))
        .map_err(internal)?;
    Ok(())
}

/// `registry.model.create`.
pub(super) fn model_create(c: &Connection, req: ModelCreate, meta: Meta) -> Result<Done> {
    limits::check_model_create(&req)?;
    if read::model_exists(c, &req.name)? {
        return Err(Status::error(
            Code::AlreadyExists,
            format!("registered model `{}` already exists", req.name),
        )
        .with_field("name"));
    }
    insert_model(c, &req.name, &req.description, &req.tags, meta.now_ms)?;
    let model = model_now(c, &req.name)?;
    Ok(Done::reply(&model)?.event(registry::MODEL_CREATED, model))
}

/// `registry.model.update`.
pub(super) fn model_update(c: &Connection, req: ModelUpdate, meta: Meta) -> Result<Done> {
    limits::check_model_update(&req)?;
    require_model(c, &req.name)?;
    if let Some(d) = &req.description {
        c.prepare_cached("UPDATE models SET description = ?2 WHERE name = ?1")
            .and_then(|mut st| st.execute(params![req.name, d]))
            .map_err(internal)?;
    }
    set_model_tags(c, &req.name, &req.set_tags)?;
    let mut st = c
        .prepare_cached("DELETE FROM model_tags WHERE model = ?1 AND key = ?2")
        .map_err(internal)?;
    for k in &req.delete_tags {
        st.execute(params![req.name, k]).map_err(internal)?;
    }
    touch_model(c, &req.name, meta.now_ms)?;
    let model = model_now(c, &req.name)?;
    Ok(Done::reply(&model)?.event(registry::MODEL_UPDATED, model))
}

/// `registry.version.create`: the model is created if new; the version is numbered
/// after the highest number the model ever had.
pub(super) fn version_create(c: &Connection, req: VersionCreate, meta: Meta) -> Result<Done> {
    limits::check_version_create(&req)?;
    let name = req.name.as_str();
    let created = !read::model_exists(c, name)?;
    if created {
        insert_model(c, name, "", &Tags::new(), meta.now_ms)?;
    }
    let number: Version = c
        .prepare_cached(
            "UPDATE models SET last_version = last_version + 1, updated_ms = max(updated_ms, ?2)
             WHERE name = ?1 RETURNING last_version",
        )
        .and_then(|mut st| st.query_row(params![name, meta.now_ms], |r| r.get(0)))
        .map_err(internal)?;
    let status = req.status.unwrap_or_default();
    c.prepare_cached(
        "INSERT INTO versions(model, version, source, run_id, status, status_message,
                              description, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            name,
            number,
            req.source,
            req.run_id.as_ref().map(RunId::as_str),
            status.as_str(),
            req.description,
            meta.now_ms,
        ])
    })
    .map_err(internal)?;
    set_version_tags(c, name, number, &req.tags)?;
    let version = require_version(c, name, number)?;
    let mut done = Done::reply(&version)?;
    if created {
        done = done.event(registry::MODEL_CREATED, model_now(c, name)?);
    }
    Ok(done.event(registry::VERSION_CREATED, version))
}

/// `registry.version.update`.
pub(super) fn version_update(c: &Connection, req: VersionUpdate, meta: Meta) -> Result<Done> {
    limits::check_version_update(&req)?;
    let name = req.name.as_str();
    let before = require_version(c, name, req.version)?;
    let description = req.description.as_ref().unwrap_or(&before.description);
    let status = req.status.unwrap_or(before.status);
    let status_message = req
        .status_message
        .as_ref()
        .unwrap_or(&before.status_message);
    c.prepare_cached(
        "UPDATE versions SET description = ?3, status = ?4, status_message = ?5,
                             updated_ms = max(updated_ms, ?6)
         WHERE model = ?1 AND version = ?2",
    )
    .and_then(|mut st| {
        st.execute(params![
            name,
            req.version,
            description,
            status.as_str(),
            status_message,
            meta.now_ms,
        ])
    })
    .map_err(internal)?;
    set_version_tags(c, name, req.version, &req.set_tags)?;
    let mut st = c
        .prepare_cached("DELETE FROM version_tags WHERE model = ?1 AND version = ?2 AND key = ?3")
        .map_err(internal)?;
    for k in &req.delete_tags {
        st.execute(params![name, req.version, k])
            .map_err(internal)?;
    }
    touch_model(c, name, meta.now_ms)?;
    let version = require_version(c, name, req.version)?;
    Ok(Done::reply(&version)?.event(registry::VERSION_UPDATED, version))
}

/// `registry.alias.assign`: new, moved, or (already there) unchanged and silent.
pub(super) fn alias_set(c: &Connection, req: AliasAssign, meta: Meta) -> Result<Done> {
    limits::check_alias_set(&req)?;
    let AliasAssign {
        name,
        alias,
        version,
    } = req;
    require_version(c, &name, version)?;
    let previous = read::alias_target(c, &name, &alias)?;
    if previous == Some(version) {
        return Done::reply(&AliasSet {
            name,
            alias,
            version,
            previous: None,
        });
    }
    c.prepare_cached(
        "INSERT INTO aliases(model, alias, version) VALUES (?1, ?2, ?3)
         ON CONFLICT(model, alias) DO UPDATE SET version = excluded.version",
    )
    .and_then(|mut st| st.execute(params![name, alias, version]))
    .map_err(internal)?;
    touch_model(c, &name, meta.now_ms)?;
    let assigned = AliasSet {
        name,
        alias,
        version,
        previous,
    };
    Ok(Done::reply(&assigned)?.event(registry::ALIAS_SET, assigned))
}

/// `registry.alias.delete`.
pub(super) fn alias_delete(c: &Connection, req: AliasDelete, meta: Meta) -> Result<Done> {
    limits::check_alias_delete(&req)?;
    let AliasDelete { name, alias } = req;
    require_model(c, &name)?;
    let Some(version) = read::alias_target(c, &name, &alias)? else {
        return Err(not_found(
            "alias",
            format!("model `{name}` has no alias `{alias}`"),
        ));
    };
    c.prepare_cached("DELETE FROM aliases WHERE model = ?1 AND alias = ?2")
        .and_then(|mut st| st.execute(params![name, alias]))
        .map_err(internal)?;
    touch_model(c, &name, meta.now_ms)?;
    let deleted = AliasDeleted {
        name,
        alias,
        version,
    };
    Ok(Done::reply(&deleted)?.event(registry::ALIAS_DELETED, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh::protocol::registry::{Locate, VersionGet, VersionStatus};
    use mlmesh::protocol::NodeId;

    fn db() -> Connection {
        let c = Connection::open_in_memory().expect("sqlite");
        c.execute_batch(super::super::SCHEMA).expect("schema");
        c
    }

    fn meta(now_ms: u64) -> Meta {
        Meta {
            source: NodeId::new(),
            node: NodeId::new(),
            now_ms,
        }
    }

    fn register(c: &Connection, name: &str, source: &str) -> Done {
        version_create(
            c,
            VersionCreate {
                name: name.into(),
                source: source.into(),
                ..VersionCreate::default()
            },
            meta(1),
        )
        .expect("registers")
    }

    fn code(r: Result<Done>) -> (Code, String) {
        let s = r.expect_err("refused");
        (s.code, s.field.unwrap_or_default())
    }

    #[test]
    fn numbers_follow_the_highest_ever_given() {
        let c = db();
        let first = register(&c, "m", "s3://a");
        assert_eq!(
            first.events.iter().map(|e| e.topic).collect::<Vec<_>>(),
            [registry::MODEL_CREATED, registry::VERSION_CREATED]
        );
        let second = register(&c, "m", "s3://b");
        assert_eq!(second.events.len(), 1);
        // A version removed behind the registry's back does not free its number.
        c.execute("DELETE FROM versions WHERE version = 2", [])
            .expect("delete");
        register(&c, "m", "s3://c");
        let v = read::version_get(
            &c,
            &VersionGet {
                name: "m".into(),
                version: 3,
            },
        )
        .expect("v3");
        assert_eq!(v.source, "s3://c");
    }

    #[test]
    fn aliases_move_and_stay_put_silently() {
        let c = db();
        register(&c, "m", "s3://a");
        register(&c, "m", "s3://b");
        let set = |v| {
            alias_set(
                &c,
                AliasAssign {
                    name: "m".into(),
                    alias: "champion".into(),
                    version: v,
                },
                meta(2),
            )
        };
        assert_eq!(set(1).expect("set").events.len(), 1);
        assert!(set(1).expect("same").events.is_empty());
        assert_eq!(code(set(3)), (Code::NotFound, "version".into()));
        let moved = set(2).expect("moved");
        let ev: AliasSet =
            mlmesh::protocol::from_payload(&moved.events[0].encoded()).expect("decodes");
        assert_eq!((ev.version, ev.previous), (2, Some(1)));
        let at = read::locate(
            &c,
            &Locate {
                name: "m".into(),
                alias: Some("champion".into()),
                ..Locate::default()
            },
        )
        .expect("locates");
        assert_eq!((at.version, at.source.as_str()), (2, "s3://b"));
        let del = |alias: &str| {
            alias_delete(
                &c,
                AliasDelete {
                    name: "m".into(),
                    alias: alias.into(),
                },
                meta(3),
            )
        };
        del("champion").expect("deleted");
        assert_eq!(code(del("champion")), (Code::NotFound, "alias".into()));
    }

    #[test]
    fn latest_skips_versions_not_ready() {
        let c = db();
        register(&c, "m", "s3://a");
        register(&c, "m", "s3://b");
        version_update(
            &c,
            VersionUpdate {
                name: "m".into(),
                version: 2,
                status: Some(VersionStatus::FailedRegistration),
                ..VersionUpdate::default()
            },
            meta(5),
        )
        .expect("updates");
        let latest = read::locate(
            &c,
            &Locate {
                name: "m".into(),
                ..Locate::default()
            },
        )
        .expect("locates");
        assert_eq!(latest.version, 1);
        let by_number = read::locate(
            &c,
            &Locate {
                name: "m".into(),
                version: Some(2),
                ..Locate::default()
            },
        )
        .expect("locates");
        assert_eq!(by_number.status, VersionStatus::FailedRegistration);
    }
}
