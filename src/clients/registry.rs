//! The typed client of `registry/1`.
//!
//! ```no_run
//! # async fn run(node: mlmesh::NodeHandle) -> Result<(), mlmesh::Status> {
//! use mlmesh::clients::Registry;
//! use mlmesh::protocol::registry::VersionCreate;
//!
//! let registry = Registry::new(&node);
//! let v = registry
//!     .register(&VersionCreate {
//!         name: "churn".into(),
//!         source: "file:///models/churn/1".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! registry.set_alias("churn", "champion", v.version).await?;
//! let serving = registry.locate_alias("churn", "champion").await?;
//! println!("serve {}", serving.source);
//! # Ok(()) }
//! ```

use mlmesh_protocol::registry::{
    self as reg, AliasAssign, AliasDelete, AliasDeleted, AliasSet, Locate, Located, ModelCreate,
    ModelGet, ModelPage, ModelSearch, ModelUpdate, ModelVersion, RegisteredModel, Version,
    VersionCreate, VersionGet, VersionPage, VersionSearch, VersionUpdate,
};
use mlmesh_protocol::Status;

use crate::node::NodeHandle;

/// A `registry/1` client on a node.
#[derive(Debug, Clone)]
pub struct Registry {
    node: NodeHandle,
}

impl Registry {
    /// A client that calls through `node`.
    pub fn new(node: &NodeHandle) -> Self {
        Self { node: node.clone() }
    }

    /// Creates a registered model (ALREADY_EXISTS if the name is taken).
    pub async fn create_model(&self, req: &ModelCreate) -> Result<RegisteredModel, Status> {
        self.node.request(reg::MODEL_CREATE, req).await
    }

    /// A registered model, with its aliases and latest version.
    pub async fn get_model(&self, name: &str) -> Result<RegisteredModel, Status> {
        let req = ModelGet { name: name.into() };
        self.node.request(reg::MODEL_GET, &req).await
    }

    /// Changes a model's description or tags.
    pub async fn update_model(&self, req: &ModelUpdate) -> Result<RegisteredModel, Status> {
        self.node.request(reg::MODEL_UPDATE, req).await
    }

    /// Registers a new version of a model (creating the model if new).
    pub async fn register(&self, req: &VersionCreate) -> Result<ModelVersion, Status> {
        self.node.request(reg::VERSION_CREATE, req).await
    }

    /// One version of a model.
    pub async fn get_version(&self, name: &str, version: Version) -> Result<ModelVersion, Status> {
        let req = VersionGet {
            name: name.into(),
            version,
        };
        self.node.request(reg::VERSION_GET, &req).await
    }

    /// Changes a version's description, status or tags.
    pub async fn update_version(&self, req: &VersionUpdate) -> Result<ModelVersion, Status> {
        self.node.request(reg::VERSION_UPDATE, req).await
    }

    /// Points `alias` of model `name` at `version` (moving it if it pointed elsewhere).
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: Version,
    ) -> Result<AliasSet, Status> {
        let req = AliasAssign {
            name: name.into(),
            alias: alias.into(),
            version,
        };
        reg::limits::check_alias("alias", alias)?;
        self.node.request(reg::ALIAS_ASSIGN, &req).await
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<AliasDeleted, Status> {
        let req = AliasDelete {
            name: name.into(),
            alias: alias.into(),
        };
        self.node.request(reg::ALIAS_DELETE, &req).await
    }

    /// Where the model to serve is: the version `alias` points at.
    pub async fn locate_alias(&self, name: &str, alias: &str) -> Result<Located, Status> {
        self.locate(&Locate {
            name: name.into(),
            version: None,
            alias: Some(alias.into()),
        })
        .await
    }

    /// Where a version of a model is: by version, by alias, or the latest.
    pub async fn locate(&self, req: &Locate) -> Result<Located, Status> {
        self.node.request(reg::MODEL_LOCATE, req).await
    }

    /// Registered models matching a filter (`name LIKE 'churn%' and tags.team = 'a'`).
    pub async fn search_models(&self, req: &ModelSearch) -> Result<ModelPage, Status> {
        self.node.request(reg::MODEL_SEARCH, req).await
    }

    /// Model versions matching a filter (`name = 'churn' and run_id = '...'`).
    pub async fn search_versions(&self, req: &VersionSearch) -> Result<VersionPage, Status> {
        self.node.request(reg::VERSION_SEARCH, req).await
    }
}
