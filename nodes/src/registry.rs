//! The model registry: `registry/1` over an embedded SQLite store.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use mlmesh::protocol::registry::{Locate, Located, VersionCreate, MODEL_LOCATE, VERSION_CREATE};
//! use mlmesh::{Config, Node};
//! use mlmesh_nodes::{registry::Registry, store::StoreSection};
//!
//! let registry = Registry::open(&StoreSection::default())?;
//! let node = registry.serve(Node::builder(Config::local("registry", "demo"))).spawn().await?;
//! let v: mlmesh::protocol::registry::ModelVersion = node
//!     .request(VERSION_CREATE, &VersionCreate {
//!         name: "fraud".into(),
//!         source: "s3://models/fraud/7".into(),
//!         ..VersionCreate::default()
//!     })
//!     .await?;
//! let at: Located = node
//!     .request(MODEL_LOCATE, &Locate { name: "fraud".into(), ..Locate::default() })
//!     .await?;
//! assert_eq!((at.version, at.source.as_str()), (v.version, "s3://models/fraud/7"));
//! # Ok(()) }
//! ```
//!
//! ## Schema
//! `models` (one row per registered model, with `last_version`, the highest number ever
//! given), `model_tags`, `versions` (one row per model and number: source, run id,
//! status), `version_tags`, and `aliases` (one row per model and alias: the version it
//! names). Model names and aliases are compared byte for byte (case-sensitive).
//!
//! ## Semantics
//! - `registry.version.create` creates the model if it is new (publishing
//!   `registry.model.created` before `registry.version.created`), and numbers the
//!   version `last_version + 1`: a number is never given twice, whatever happens later.
//! - A version must exist for an alias to name it. Setting an alias that names another
//!   version moves it and says from where (`previous`); setting it to the version it
//!   already names changes nothing and publishes nothing.
//! - `registry.model.locate` with neither version nor alias, or with the alias `latest`
//!   (any case, never stored), answers the highest-numbered READY version: a version
//!   still PENDING_REGISTRATION or FAILED_REGISTRATION is not served by default. By
//!   version or alias it answers that version whatever its status, and says which.
//! - A model's `updated_ms` moves with every change to it, its versions or its aliases.
//! - Every instruction is atomic, and its reply and events follow its commit; a retry
//!   with the same request id gets the stored reply (see [`crate::store`]).
//! - Searches page with an offset token: a page is consistent in itself, and rows written
//!   between two pages can shift the next page by as many rows.

use std::path::Path;
use std::sync::Arc;

use mlmesh::protocol::registry::{self, Locate, ModelGet, ModelSearch, VersionGet, VersionSearch};
use mlmesh::NodeBuilder;

use crate::serve;
use crate::store::{Store, StoreError, StoreSection};

mod read;
mod search;
mod write;

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS models(
    name TEXT PRIMARY KEY, description TEXT NOT NULL, last_version INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS model_tags(
    model TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(model, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions(
    model TEXT NOT NULL, version INTEGER NOT NULL, source TEXT NOT NULL, run_id TEXT,
    status TEXT NOT NULL, status_message TEXT NOT NULL, description TEXT NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY(model, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_run ON versions(run_id) WHERE run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS version_tags(
    model TEXT NOT NULL, version INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(model, version, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases(
    model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY(model, alias)) WITHOUT ROWID;
";

/// A model registry: a store and the handlers of `registry/1`.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<Store>,
}

impl Registry {
    /// Opens (or creates) `registry.db` in the section's data directory.
    pub fn open(section: &StoreSection) -> Result<Self, StoreError> {
        let store = Store::open(section, "registry.db", SCHEMA, SCHEMA_VERSION)?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// The database file.
    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    /// Adds the role `registry` and a handler for every `registry/1` instruction.
    pub fn serve(&self, builder: NodeBuilder) -> NodeBuilder {
        let store = &self.store;
        let b = builder.role("registry");
        let b = serve::write(b, registry::MODEL_CREATE, store, write::model_create);
        let b = serve::write(b, registry::MODEL_UPDATE, store, write::model_update);
        let b = serve::write(b, registry::VERSION_CREATE, store, write::version_create);
        let b = serve::write(b, registry::VERSION_UPDATE, store, write::version_update);
        let b = serve::write(b, registry::ALIAS_ASSIGN, store, write::alias_set);
        let b = serve::write(b, registry::ALIAS_DELETE, store, write::alias_delete);
        let b = serve::read(b, registry::MODEL_GET, store, |c, req: ModelGet| {
            read::model_get(c, &req)
        });
        let b = serve::read(b, registry::VERSION_GET, store, |c, req: VersionGet| {
            read::version_get(c, &req)
        });
        let b = serve::read(b, registry::MODEL_LOCATE, store, |c, req: Locate| {
            read::locate(c, &req)
        });
        let b = serve::read(b, registry::MODEL_SEARCH, store, |c, req: ModelSearch| {
            search::models(c, &req)
        });
        serve::read(
            b,
            registry::VERSION_SEARCH,
            store,
            |c, req: VersionSearch| search::versions(c, &req),
        )
    }
}
