//! `registry/1` over MLflow's model registry.
//!
//! MLflow has no REST call that sets a version's status (its versions are READY once
//! created), so a status the standard sets is kept as the version tags
//! [`STATUS_TAG`] and [`MESSAGE_TAG`], which are not shown as tags.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use mlmesh::protocol::registry::{
    self, limits, AliasAssign, AliasDelete, AliasDeleted, AliasSet, Locate, Located, ModelCreate,
    ModelGet, ModelPage, ModelSearch, ModelUpdate, ModelVersion, RegisteredModel, RunId, Tags,
    Version, VersionCreate, VersionGet, VersionPage, VersionSearch, VersionStatus, VersionUpdate,
};
use mlmesh::protocol::{Code, Status};
use mlmesh::NodeBuilder;

use super::filter::{self as f, Fields, Target};
use super::wire::{self, Kv};
use super::{invalid, not_found, read, write, Inner, Outcome};
use crate::serve::Meta;

type Result<T> = std::result::Result<T, Status>;

/// The version tag that holds a status other than READY.
pub(crate) const STATUS_TAG: &str = "mlmesh.registry.status";
/// The version tag that holds the status message.
pub(crate) const MESSAGE_TAG: &str = "mlmesh.registry.status_message";
/// Items a search may list from MLflow to filter, order and page itself.
const MAX_SCAN: usize = 50_000;
/// Calls under way at once to complete a page.
const AT_ONCE: usize = 8;

pub(crate) fn serve(b: NodeBuilder, inner: &Arc<Inner>) -> NodeBuilder {
    let b = write(b, registry::MODEL_CREATE, inner, model_create);
    let b = write(b, registry::MODEL_UPDATE, inner, model_update);
    let b = write(b, registry::VERSION_CREATE, inner, version_create);
    let b = write(b, registry::VERSION_UPDATE, inner, version_update);
    let b = write(b, registry::ALIAS_ASSIGN, inner, alias_assign);
    let b = write(b, registry::ALIAS_DELETE, inner, alias_delete);
    let b = read(
        b,
        registry::MODEL_GET,
        inner,
        |i, req: ModelGet, _| async move {
            limits::check_model_get(&req)?;
            require_model(&i, &req.name).await
        },
    );
    let b = read(
        b,
        registry::VERSION_GET,
        inner,
        |i, req: VersionGet, _| async move {
            limits::check_version_get(&req)?;
            require_version(&i, &req.name, req.version).await
        },
    );
    let b = read(b, registry::MODEL_LOCATE, inner, |i, req, _| locate(i, req));
    let b = read(b, registry::MODEL_SEARCH, inner, |i, req, _| {
        model_search(i, req)
    });
    read(b, registry::VERSION_SEARCH, inner, |i, req, _| {
        version_search(i, req)
    })
}

// ---- Conversions ----------------------------------------------------------------------

fn model_of(inner: &Inner, w: wire::RegisteredModel) -> RegisteredModel {
    let number = |s: &str| s.parse::<Version>().unwrap_or(0);
    RegisteredModel {
        name: inner.in_mesh(&w.name).unwrap_or(&w.name).to_owned(),
        description: w.description,
        tags: w.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        aliases: w
            .aliases
            .into_iter()
            .map(|a| (a.alias, number(&a.version)))
            .collect(),
        last_version: w
            .latest_versions
            .iter()
            .map(|v| number(&v.version))
            .max()
            .unwrap_or(0),
        created_ms: w.creation_timestamp,
        updated_ms: w.last_updated_timestamp.max(w.creation_timestamp),
    }
}

fn version_of(inner: &Inner, w: wire::ModelVersion) -> ModelVersion {
    let mut tags: Tags = w.tags.into_iter().map(|t| (t.key, t.value)).collect();
    let status = tags
        .remove(STATUS_TAG)
        .and_then(|s| VersionStatus::parse(&s))
        .or_else(|| VersionStatus::parse(&w.status))
        .unwrap_or_default();
    let message = tags.remove(MESSAGE_TAG).unwrap_or(w.status_message);
    let mut aliases = w.aliases;
    aliases.sort();
    ModelVersion {
        name: inner.in_mesh(&w.name).unwrap_or(&w.name).to_owned(),
        version: w.version.parse().unwrap_or(0),
        source: w.source,
        run_id: RunId::parse(&w.run_id).ok(),
        status,
        status_message: message,
        description: w.description,
        tags,
        aliases,
        created_ms: w.creation_timestamp,
        updated_ms: w.last_updated_timestamp.max(w.creation_timestamp),
    }
}

// ---- Reads ----------------------------------------------------------------------------

async fn fetch_model(inner: &Inner, name: &str) -> Result<Option<wire::RegisteredModel>> {
    let got: std::result::Result<wire::ModelReply, _> = inner
        .rest
        .get("registered-models/get", &[("name", inner.in_mlflow(name))])
        .await;
    match got {
        Ok(r) => Ok(Some(r.registered_model)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.status_at("name")),
    }
}

fn no_model(name: &str) -> Status {
    not_found("name", format!("no registered model `{name}`"))
}

async fn require_model(inner: &Inner, name: &str) -> Result<RegisteredModel> {
    match fetch_model(inner, name).await? {
        Some(w) => Ok(model_of(inner, w)),
        None => Err(no_model(name)),
    }
}

async fn fetch_version(
    inner: &Inner,
    name: &str,
    version: Version,
) -> Result<Option<ModelVersion>> {
    let got: std::result::Result<wire::VersionReply, _> = inner
        .rest
        .get(
            "model-versions/get",
            &[
                ("name", inner.in_mlflow(name)),
                ("version", version.to_string()),
            ],
        )
        .await;
    match got {
        Ok(r) => Ok(Some(version_of(inner, r.model_version))),
        Err(e) if e.is_not_found() || e.is("INVALID_PARAMETER_VALUE") => Ok(None),
        Err(e) => Err(e.status()),
    }
}

/// The version, or NOT_FOUND naming `name` (no such model) or `version`.
async fn require_version(inner: &Inner, name: &str, version: Version) -> Result<ModelVersion> {
    if let Some(v) = fetch_version(inner, name, version).await? {
        return Ok(v);
    }
    require_model(inner, name).await?;
    Err(not_found(
        "version",
        format!("model `{name}` has no version {version}"),
    ))
}

/// Every version of the MLflow models `filter` lists, as the mesh sees them.
async fn list_versions(inner: &Inner, filter: String) -> Result<Vec<ModelVersion>> {
    scan(
        inner,
        "model-versions/search",
        &filter,
        |page: wire::VersionPage| {
            let versions = page
                .model_versions
                .into_iter()
                .filter(|v| inner.in_mesh(&v.name).is_some())
                .map(|v| version_of(inner, v))
                .collect();
            (versions, page.next_page_token)
        },
    )
    .await
}

/// Every MLflow model `filter` lists, as the mesh sees them (aliases not included).
async fn list_models(inner: &Inner, filter: String) -> Result<Vec<RegisteredModel>> {
    scan(
        inner,
        "registered-models/search",
        &filter,
        |page: wire::ModelPage| {
            let models = page
                .registered_models
                .into_iter()
                .filter(|m| inner.in_mesh(&m.name).is_some())
                .map(|m| model_of(inner, m))
                .collect();
            (models, page.next_page_token)
        },
    )
    .await
}

/// Reads an MLflow search at `path` page after page; `items` takes what the mesh sees of
/// a page, and its next token. At most [`MAX_SCAN`] items.
async fn scan<P, T>(
    inner: &Inner,
    path: &str,
    filter: &str,
    mut items: impl FnMut(P) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>>
where
    P: serde::de::DeserializeOwned,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("max_results", "1000".to_owned())];
        if !filter.is_empty() {
            query.push(("filter", filter.to_owned()));
        }
        if let Some(t) = token.take() {
            query.push(("page_token", t));
        }
        let (page, next) = items(inner.rest.get(path, &query).await?);
        out.extend(page);
        if out.len() > MAX_SCAN {
            return Err(too_many());
        }
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

fn too_many() -> Status {
    Status::error(
        Code::FailedPrecondition,
        format!(
            "the search lists more than {MAX_SCAN} items in MLflow; narrow it with `name = '...'`"
        ),
    )
    .with_field("filter")
}

/// MLflow's filter for the names of the mesh: the namespace, or one exact name.
fn mlflow_filter(inner: &Inner, exact: Option<&str>) -> String {
    match exact {
        Some(name) => format!("name = {}", f::quoted(&inner.in_mlflow(name))),
        None if inner.namespace.is_empty() => String::new(),
        None => format!("name LIKE '{}%'", inner.namespace),
    }
}

async fn locate(inner: Arc<Inner>, req: Locate) -> Result<Located> {
    limits::check_locate(&req)?;
    let name = req.name.as_str();
    let model = require_model(&inner, name).await?;
    let v = match (req.version, req.alias.as_deref()) {
        (Some(number), _) => require_version(&inner, name, number).await?,
        (None, Some(alias)) if !limits::is_latest(alias) => {
            let number = *model.aliases.get(alias).ok_or_else(|| {
                not_found("alias", format!("model `{name}` has no alias `{alias}`"))
            })?;
            require_version(&inner, name, number).await?
        }
        (None, latest) => {
            let all = list_versions(&inner, mlflow_filter(&inner, Some(name))).await?;
            all.into_iter()
                .filter(|v| v.name == name && v.status == VersionStatus::Ready)
                .max_by_key(|v| v.version)
                .ok_or_else(|| {
                    let field = if latest.is_some() { "alias" } else { "version" };
                    not_found(
                        field,
                        format!("model `{name}` has no READY version to be the latest"),
                    )
                })?
        }
    };
    Ok(Located {
        name: v.name,
        version: v.version,
        source: v.source,
        run_id: v.run_id,
        status: v.status,
        alias: req.alias,
    })
}

fn offset(token: Option<&str>) -> Result<usize> {
    match token {
        None => Ok(0),
        Some(t) => t.parse().map_err(|_| {
            invalid(
                "page_token",
                format!("`{t}` is not a page token of this search"),
            )
        }),
    }
}

/// Orders `items` by the checked orderings, then `tiebreak`; returns the page at the
/// token's offset and the next token.
fn page_of<T>(
    mut items: Vec<T>,
    order: &[(&'static str, bool)],
    key: impl Fn(&T, &str) -> (u64, String),
    tiebreak: impl Fn(&T, &T) -> std::cmp::Ordering,
    max: u32,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>)> {
    let start = offset(token)?;
    items.sort_by(|a, b| {
        for (k, desc) in order {
            let o = key(a, k).cmp(&key(b, k));
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        tiebreak(a, b)
    });
    let max = max as usize;
    let next = (items.len() > start.saturating_add(max)).then(|| (start + max).to_string());
    Ok((items.into_iter().skip(start).take(max).collect(), next))
}

/// Ends a page where [`crate::serve::fitting`] says (the items complete, aliases
/// included), with a token that carries on from there.
fn cut<T: serde::Serialize>(
    items: &mut Vec<T>,
    token: Option<&str>,
    next: &mut Option<String>,
) -> Result<()> {
    let fit = crate::serve::fitting(items);
    if fit < items.len() {
        items.truncate(fit);
        *next = Some((offset(token)? + fit).to_string());
    }
    Ok(())
}

fn orders(entries: &[String], keys: &[&'static str]) -> Result<Vec<(&'static str, bool)>> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        out.push(limits::parse_order(&format!("order_by[{i}]"), e, keys)?);
    }
    Ok(out)
}

impl Fields for RegisteredModel {
    fn text(&self, attr: &str) -> Option<&str> {
        (attr == "name").then_some(self.name.as_str())
    }
    fn number(&self) -> u64 {
        0
    }
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

impl Fields for ModelVersion {
    fn text(&self, attr: &str) -> Option<&str> {
        match attr {
            "name" => Some(&self.name),
            "source" => Some(&self.source),
            "run_id" => self.run_id.as_ref().map(RunId::as_str),
            "status" => Some(self.status.as_str()),
            _ => None,
        }
    }
    fn number(&self) -> u64 {
        self.version
    }
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

async fn model_search(inner: Arc<Inner>, req: ModelSearch) -> Result<ModelPage> {
    limits::check_model_search(&req)?;
    let clauses = f::check_registry(Target::Models, &req.filter)?;
    let order = orders(&req.order_by, limits::MODEL_ORDER_KEYS)?;
    offset(req.page_token.as_deref())?;
    let listed = list_models(&inner, mlflow_filter(&inner, f::exact_name(&clauses))).await?;
    let kept: Vec<RegisteredModel> = listed
        .into_iter()
        .filter(|m| f::holds(&clauses, m))
        .collect();
    let (page, mut next) = page_of(
        kept,
        &order,
        |m, k| match k {
            "created" => (m.created_ms, String::new()),
            "updated" => (m.updated_ms, String::new()),
            _ => (0, m.name.clone()),
        },
        |a, b| a.name.as_bytes().cmp(b.name.as_bytes()),
        req.max_results,
        req.page_token.as_deref(),
    )?;
    // MLflow's listing leaves out aliases: read each model of the page.
    let mut models: Vec<RegisteredModel> = futures::stream::iter(page)
        .map(|m| {
            let inner = &inner;
            async move {
                Ok::<_, Status>(match fetch_model(inner, &m.name).await? {
                    Some(w) => model_of(inner, w),
                    None => m,
                })
            }
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await?;
    cut(&mut models, req.page_token.as_deref(), &mut next)?;
    Ok(ModelPage {
        models,
        next_page_token: next,
    })
}

async fn version_search(inner: Arc<Inner>, req: VersionSearch) -> Result<VersionPage> {
    limits::check_version_search(&req)?;
    let clauses = f::check_registry(Target::Versions, &req.filter)?;
    let order = orders(&req.order_by, limits::VERSION_ORDER_KEYS)?;
    offset(req.page_token.as_deref())?;
    let listed = list_versions(&inner, mlflow_filter(&inner, f::exact_name(&clauses))).await?;
    let kept: Vec<ModelVersion> = listed
        .into_iter()
        .filter(|v| f::holds(&clauses, v))
        .collect();
    let (mut page, mut next) = page_of(
        kept,
        &order,
        |v, k| match k {
            "version_number" => (v.version, String::new()),
            "created" => (v.created_ms, String::new()),
            "updated" => (v.updated_ms, String::new()),
            _ => (0, v.name.clone()),
        },
        |a, b| {
            a.name
                .as_bytes()
                .cmp(b.name.as_bytes())
                .then(b.version.cmp(&a.version))
        },
        req.max_results,
        req.page_token.as_deref(),
    )?;
    // MLflow's listing leaves out aliases: read them from each model of the page.
    let mut names: Vec<String> = page.iter().map(|v| v.name.clone()).collect();
    names.sort();
    names.dedup();
    let aliases: HashMap<String, BTreeMap<String, Version>> = futures::stream::iter(names)
        .map(|name| {
            let inner = &inner;
            async move {
                let m = fetch_model(inner, &name).await?;
                Ok::<_, Status>((
                    name,
                    m.map(|w| model_of(inner, w).aliases).unwrap_or_default(),
                ))
            }
        })
        .buffer_unordered(AT_ONCE)
        .try_collect()
        .await?;
    for v in &mut page {
        if let Some(a) = aliases.get(&v.name) {
            v.aliases = a
                .iter()
                .filter(|(_, n)| **n == v.version)
                .map(|(k, _)| k.clone())
                .collect();
        }
    }
    cut(&mut page, req.page_token.as_deref(), &mut next)?;
    Ok(VersionPage {
        versions: page,
        next_page_token: next,
    })
}

// ---- Writes ---------------------------------------------------------------------------

async fn set_model_tags(inner: &Inner, name: &str, tags: &Tags) -> Result<()> {
    for (k, v) in tags {
        let _: wire::Empty = inner
            .rest
            .post(
                "registered-models/set-tag",
                &json!({ "name": inner.in_mlflow(name), "key": k, "value": v }),
            )
            .await
            .map_err(|e| e.status_at(format!("set_tags.{k}").as_str()))?;
    }
    Ok(())
}

async fn model_create(inner: Arc<Inner>, req: ModelCreate, _meta: Meta) -> Result<Outcome> {
    limits::check_model_create(&req)?;
    let body = json!({
        "name": inner.in_mlflow(&req.name),
        "description": req.description,
        "tags": wire::kvs(&req.tags),
    });
    let made: wire::ModelReply = inner
        .rest
        .post("registered-models/create", &body)
        .await
        .map_err(|e| e.status_at("name"))?;
    let model = model_of(&inner, made.registered_model);
    Outcome::reply(&model)?.event(registry::MODEL_CREATED, &model)
}

async fn model_update(inner: Arc<Inner>, req: ModelUpdate, _meta: Meta) -> Result<Outcome> {
    limits::check_model_update(&req)?;
    let before = require_model(&inner, &req.name).await?;
    let name = inner.in_mlflow(&req.name);
    if let Some(d) = &req.description {
        let _: wire::ModelReply = inner
            .rest
            .patch(
                "registered-models/update",
                &json!({ "name": name, "description": d }),
            )
            .await
            .map_err(|e| e.status_at("description"))?;
    }
    set_model_tags(&inner, &req.name, &req.set_tags).await?;
    for (i, k) in req.delete_tags.iter().enumerate() {
        if before.tags.contains_key(k) {
            inner
                .rest
                .delete(
                    "registered-models/delete-tag",
                    &json!({ "name": name, "key": k }),
                )
                .await
                .map_err(|e| e.status_at(format!("delete_tags[{i}]").as_str()))?;
        }
    }
    let model = require_model(&inner, &req.name).await?;
    Outcome::reply(&model)?.event(registry::MODEL_UPDATED, &model)
}

async fn version_create(inner: Arc<Inner>, req: VersionCreate, _meta: Meta) -> Result<Outcome> {
    limits::check_version_create(&req)?;
    let mut created_model = None;
    if fetch_model(&inner, &req.name).await?.is_none() {
        let made: std::result::Result<wire::ModelReply, _> = inner
            .rest
            .post(
                "registered-models/create",
                &json!({ "name": inner.in_mlflow(&req.name) }),
            )
            .await;
        match made {
            Ok(m) => created_model = Some(model_of(&inner, m.registered_model)),
            // Registered meanwhile by someone else.
            Err(e) if e.is("RESOURCE_ALREADY_EXISTS") => {}
            Err(e) => return Err(e.status_at("name")),
        }
    }
    let mut tags: Vec<Kv> = wire::kvs(&req.tags);
    let status = req.status.unwrap_or_default();
    if status != VersionStatus::Ready {
        tags.push(Kv {
            key: STATUS_TAG.into(),
            value: status.as_str().into(),
        });
    }
    let mut body = json!({
        "name": inner.in_mlflow(&req.name),
        "source": req.source,
        "description": req.description,
        "tags": tags,
    });
    if let Some(run) = &req.run_id {
        body["run_id"] = json!(run.as_str());
    }
    let made: wire::VersionReply = inner
        .rest
        .post("model-versions/create", &body)
        .await
        .map_err(|e| e.status_at("source"))?;
    let version = version_of(&inner, made.model_version);
    let mut out = Outcome::reply(&version)?;
    if let Some(model) = &created_model {
        out = out.event(registry::MODEL_CREATED, model)?;
    }
    out.event(registry::VERSION_CREATED, &version)
}

async fn set_version_tag(
    inner: &Inner,
    name: &str,
    version: Version,
    key: &str,
    value: &str,
    field: &str,
) -> Result<()> {
    let _: wire::Empty = inner
        .rest
        .post(
            "model-versions/set-tag",
            &json!({
                "name": inner.in_mlflow(name),
                "version": version.to_string(),
                "key": key,
                "value": value,
            }),
        )
        .await
        .map_err(|e| e.status_at(field))?;
    Ok(())
}

async fn delete_version_tag(
    inner: &Inner,
    name: &str,
    version: Version,
    key: &str,
    field: &str,
) -> Result<()> {
    inner
        .rest
        .delete(
            "model-versions/delete-tag",
            &json!({
                "name": inner.in_mlflow(name),
                "version": version.to_string(),
                "key": key,
            }),
        )
        .await
        .map_err(|e| e.status_at(field))
}

async fn version_update(inner: Arc<Inner>, req: VersionUpdate, _meta: Meta) -> Result<Outcome> {
    limits::check_version_update(&req)?;
    let (name, number) = (req.name.as_str(), req.version);
    let before = require_version(&inner, name, number).await?;
    if let Some(d) = &req.description {
        let _: wire::VersionReply = inner
            .rest
            .patch(
                "model-versions/update",
                &json!({
                    "name": inner.in_mlflow(name),
                    "version": number.to_string(),
                    "description": d,
                }),
            )
            .await
            .map_err(|e| e.status_at("description"))?;
    }
    match req.status {
        Some(VersionStatus::Ready) if before.status != VersionStatus::Ready => {
            delete_version_tag(&inner, name, number, STATUS_TAG, "status").await?
        }
        Some(s) if s != VersionStatus::Ready => {
            set_version_tag(&inner, name, number, STATUS_TAG, s.as_str(), "status").await?
        }
        _ => {}
    }
    match req.status_message.as_deref() {
        Some("") if !before.status_message.is_empty() => {
            delete_version_tag(&inner, name, number, MESSAGE_TAG, "status_message").await?
        }
        Some(m) if !m.is_empty() => {
            set_version_tag(&inner, name, number, MESSAGE_TAG, m, "status_message").await?
        }
        _ => {}
    }
    for (k, v) in &req.set_tags {
        set_version_tag(&inner, name, number, k, v, &format!("set_tags.{k}")).await?;
    }
    for (i, k) in req.delete_tags.iter().enumerate() {
        if before.tags.contains_key(k) {
            delete_version_tag(&inner, name, number, k, &format!("delete_tags[{i}]")).await?;
        }
    }
    let version = require_version(&inner, name, number).await?;
    Outcome::reply(&version)?.event(registry::VERSION_UPDATED, &version)
}

async fn alias_assign(inner: Arc<Inner>, req: AliasAssign, _meta: Meta) -> Result<Outcome> {
    limits::check_alias_set(&req)?;
    let AliasAssign {
        name,
        alias,
        version,
    } = req;
    let model = require_model(&inner, &name).await?;
    let previous = model.aliases.get(&alias).copied();
    if previous == Some(version) {
        return Outcome::reply(&AliasSet {
            name,
            alias,
            version,
            previous: None,
        });
    }
    let set: std::result::Result<wire::Empty, _> = inner
        .rest
        .post(
            "registered-models/alias",
            &json!({
                "name": inner.in_mlflow(&name),
                "alias": alias,
                "version": version.to_string(),
            }),
        )
        .await;
    match set {
        Ok(_) => {}
        // The model is there (read above): it is the version that is missing.
        Err(e) if e.is_not_found() => {
            return Err(not_found(
                "version",
                format!("model `{name}` has no version {version}"),
            ))
        }
        Err(e) => return Err(e.status_at("alias")),
    }
    let assigned = AliasSet {
        name,
        alias,
        version,
        previous,
    };
    Outcome::reply(&assigned)?.event(registry::ALIAS_SET, &assigned)
}

async fn alias_delete(inner: Arc<Inner>, req: AliasDelete, _meta: Meta) -> Result<Outcome> {
    limits::check_alias_delete(&req)?;
    let AliasDelete { name, alias } = req;
    let model = require_model(&inner, &name).await?;
    let Some(&version) = model.aliases.get(&alias) else {
        return Err(not_found(
            "alias",
            format!("model `{name}` has no alias `{alias}`"),
        ));
    };
    inner
        .rest
        .delete(
            "registered-models/alias",
            &json!({ "name": inner.in_mlflow(&name), "alias": alias }),
        )
        .await
        .map_err(|e| e.status_at("alias"))?;
    let deleted = AliasDeleted {
        name,
        alias,
        version,
    };
    Outcome::reply(&deleted)?.event(registry::ALIAS_DELETED, &deleted)
}
