//! `registry/1`: registered models, their numbered versions, and aliases.
//!
//! The names and payloads of SPEC.md section 16. MLflow's model registry is the floor:
//! a registered model has a name, a description and tags; its versions are numbered
//! 1, 2, 3, ... and a number is never given twice; an alias (`champion`) names one
//! version and moves when set again. [`MODEL_LOCATE`] answers the deployer's question, "where
//! is the model I should serve?", by version, by alias, or as the latest READY version.
//! Every change is an event, so a deployer reacts without polling. The checks every
//! payload must pass are in [`limits`].
//!
//! | topic | kind | payload → reply |
//! |---|---|---|
//! | `registry.model.create` | instruction | [`ModelCreate`] → [`RegisteredModel`] (ALREADY_EXISTS if the name is taken) |
//! | `registry.model.get` | instruction | [`ModelGet`] → [`RegisteredModel`] |
//! | `registry.model.update` | instruction | [`ModelUpdate`] → [`RegisteredModel`] |
//! | `registry.model.search` | instruction | [`ModelSearch`] → [`ModelPage`] |
//! | `registry.model.locate` | instruction | [`Locate`] → [`Located`] |
//! | `registry.version.create` | instruction | [`VersionCreate`] → [`ModelVersion`] (creates the model if new) |
//! | `registry.version.get` | instruction | [`VersionGet`] → [`ModelVersion`] |
//! | `registry.version.update` | instruction | [`VersionUpdate`] → [`ModelVersion`] |
//! | `registry.version.search` | instruction | [`VersionSearch`] → [`VersionPage`] |
//! | `registry.alias.assign` | instruction | [`AliasAssign`] → [`AliasSet`] |
//! | `registry.alias.delete` | instruction | [`AliasDelete`] → [`AliasDeleted`] |
//! | `registry.model.created` | event | [`RegisteredModel`] |
//! | `registry.model.updated` | event | [`RegisteredModel`] |
//! | `registry.version.created` | event | [`ModelVersion`] |
//! | `registry.version.updated` | event | [`ModelVersion`] |
//! | `registry.alias.set` | event | [`AliasSet`] (with the version it left, if it moved) |
//! | `registry.alias.deleted` | event | [`AliasDeleted`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ids::RunId;

pub mod limits;

/// The schema version of every `registry.*` topic in this module.
pub const SCHEMA: u32 = 1;

/// Instruction: create a registered model; ALREADY_EXISTS if the name is taken.
pub const MODEL_CREATE: &str = "registry.model.create";
/// Instruction: a registered model by name.
pub const MODEL_GET: &str = "registry.model.get";
/// Instruction: change a model's description and tags.
pub const MODEL_UPDATE: &str = "registry.model.update";
/// Instruction: search registered models with a filter.
pub const MODEL_SEARCH: &str = "registry.model.search";
/// Instruction: the version to serve (by version, by alias, or the latest READY one).
pub const MODEL_LOCATE: &str = "registry.model.locate";
/// Instruction: register a new version (and the model, if new).
pub const VERSION_CREATE: &str = "registry.version.create";
/// Instruction: a model version by name and number.
pub const VERSION_GET: &str = "registry.version.get";
/// Instruction: change a version's description, status and tags.
pub const VERSION_UPDATE: &str = "registry.version.update";
/// Instruction: search model versions with a filter.
pub const VERSION_SEARCH: &str = "registry.version.search";
/// Instruction: point an alias at a version (moving it if it pointed elsewhere).
pub const ALIAS_ASSIGN: &str = "registry.alias.assign";
/// Instruction: delete an alias.
pub const ALIAS_DELETE: &str = "registry.alias.delete";

/// Every instruction of `registry/1`.
pub const INSTRUCTIONS: &[&str] = &[
    MODEL_CREATE,
    MODEL_GET,
    MODEL_UPDATE,
    MODEL_SEARCH,
    MODEL_LOCATE,
    VERSION_CREATE,
    VERSION_GET,
    VERSION_UPDATE,
    VERSION_SEARCH,
    ALIAS_ASSIGN,
    ALIAS_DELETE,
];

/// Event: a registered model was created.
pub const MODEL_CREATED: &str = "registry.model.created";
/// Event: a registered model's description or tags changed.
pub const MODEL_UPDATED: &str = "registry.model.updated";
/// Event: a model version was registered.
pub const VERSION_CREATED: &str = "registry.version.created";
/// Event: a version's description, status or tags changed.
pub const VERSION_UPDATED: &str = "registry.version.updated";
/// Event: an alias now points at a version (new, or moved from another one).
pub const ALIAS_SET: &str = "registry.alias.set";
/// Event: an alias was deleted.
pub const ALIAS_DELETED: &str = "registry.alias.deleted";

/// Every event of `registry/1`.
pub const EVENTS: &[&str] = &[
    MODEL_CREATED,
    MODEL_UPDATED,
    VERSION_CREATED,
    VERSION_UPDATED,
    ALIAS_SET,
    ALIAS_DELETED,
];

/// Tags (`name → value`).
pub type Tags = BTreeMap<String, String>;

/// A version number: 1 for a model's first version, never given twice for one model.
pub type Version = u64;

/// Payload of `registry.model.create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCreate {
    /// The model's name, unique on its registry ([`limits::check_model_name`]).
    pub name: String,
    /// What the model is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// Payload of `registry.model.get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelGet {
    /// The model's name.
    pub name: String,
}

/// Payload of `registry.model.update`: what is absent is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    /// The model's name.
    pub name: String,
    /// The new description (`""` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags to set (the last write wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_tags: Tags,
    /// Tag keys to delete (absent keys are ignored). A key may not be both set and deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_tags: Vec<String>,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Tags,
    /// Its aliases and the version each names.
    #[serde(default)]
    pub aliases: BTreeMap<String, Version>,
    /// The highest version number given so far (0 before the first version).
    #[serde(default)]
    pub last_version: Version,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Time of the last change to the model, its versions or its aliases, Unix milliseconds.
    pub updated_ms: u64,
}

/// Payload of `registry.model.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSearch {
    /// A filter over `name` (`=`, `!=`, `LIKE`, `ILIKE`) and `tags.<key>`, clauses joined
    /// by `AND`: `name LIKE 'fraud-%' AND tags.team = 'risk'`. Everything when empty.
    #[serde(default)]
    pub filter: String,
    /// Orderings among `name`, `created`, `updated`, each optionally followed by `ASC`
    /// or `DESC`; `name ASC` when empty.
    #[serde(default)]
    pub order_by: Vec<String>,
    /// At most this many models in the page (1..=1000).
    #[serde(default = "default_max_results")]
    pub max_results: u32,
    /// The `next_page_token` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}

impl Default for ModelSearch {
    fn default() -> Self {
        Self {
            filter: String::new(),
            order_by: Vec::new(),
            max_results: default_max_results(),
            page_token: None,
        }
    }
}

fn default_max_results() -> u32 {
    limits::DEFAULT_MAX_RESULTS
}

/// Reply to `registry.model.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPage {
    /// The models of this page.
    pub models: Vec<RegisteredModel>,
    /// Pass it back for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The state of a model version. Versions are registered READY unless the caller says
/// otherwise (an upload still under way is PENDING_REGISTRATION).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", try_from = "String")]
pub enum VersionStatus {
    /// Registration under way (its files are not all there yet).
    PendingRegistration,
    /// Registration failed; the version must not be served.
    FailedRegistration,
    /// Ready to serve.
    #[default]
    Ready,
}

impl TryFrom<String> for VersionStatus {
    type Error = String;

    /// Only the name: MessagePack decoders would otherwise take an integer for a variant's
    /// index.
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| {
            format!(
                "`{s}` is not a version status (PENDING_REGISTRATION, FAILED_REGISTRATION, READY)"
            )
        })
    }
}

impl VersionStatus {
    /// The status as it reads on the wire and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingRegistration => "PENDING_REGISTRATION",
            Self::FailedRegistration => "FAILED_REGISTRATION",
            Self::Ready => "READY",
        }
    }

    /// The status of its wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PendingRegistration,
            Self::FailedRegistration,
            Self::Ready,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Payload of `registry.version.create`, MLflow's `register_model`: the model is
/// created if it does not exist, and the version gets the next number.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionCreate {
    /// The model's name.
    pub name: String,
    /// Where the model's files are: a URI (`s3://bucket/path`, `runs:/<run>/model`, ...).
    pub source: String,
    /// The tracking run that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// What this version is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    /// Its initial status; READY when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VersionStatus>,
}

/// Payload of `registry.version.get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionGet {
    /// The model's name.
    pub name: String,
    /// The version number.
    pub version: Version,
}

/// Payload of `registry.version.update`: what is absent is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionUpdate {
    /// The model's name.
    pub name: String,
    /// The version number.
    pub version: Version,
    /// The new description (`""` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The new status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VersionStatus>,
    /// Why the status is what it is (`""` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Tags to set (the last write wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_tags: Tags,
    /// Tag keys to delete (absent keys are ignored). A key may not be both set and deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_tags: Vec<String>,
}

/// A model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model's name.
    pub name: String,
    /// The version number.
    pub version: Version,
    /// Where its files are.
    pub source: String,
    /// The run that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Its status.
    pub status: VersionStatus,
    /// Why the status is what it is.
    #[serde(default)]
    pub status_message: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Tags,
    /// The aliases that name it, sorted.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Registration time, Unix milliseconds.
    pub created_ms: u64,
    /// Time of the last change, Unix milliseconds.
    pub updated_ms: u64,
}

/// Payload of `registry.version.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSearch {
    /// A filter over `name`, `source` (`=`, `!=`, `LIKE`, `ILIKE`), `version_number`
    /// (`=`, `!=`, `<`, `<=`, `>`, `>=`), `run_id` (`=`, `!=`, `IN`, `NOT IN`), `status`
    /// (`=`, `!=`) and `tags.<key>`, clauses joined by `AND`. Everything when empty.
    #[serde(default)]
    pub filter: String,
    /// Orderings among `name`, `version_number`, `created`, `updated`, each optionally
    /// followed by `ASC` or `DESC`; `name ASC, version_number DESC` when empty.
    #[serde(default)]
    pub order_by: Vec<String>,
    /// At most this many versions in the page (1..=1000).
    #[serde(default = "default_max_results")]
    pub max_results: u32,
    /// The `next_page_token` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}

impl Default for VersionSearch {
    fn default() -> Self {
        Self {
            filter: String::new(),
            order_by: Vec::new(),
            max_results: default_max_results(),
            page_token: None,
        }
    }
}

/// Reply to `registry.version.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionPage {
    /// The versions of this page.
    pub versions: Vec<ModelVersion>,
    /// Pass it back for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Payload of `registry.alias.assign`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasAssign {
    /// The model's name.
    pub name: String,
    /// The alias ([`limits::check_alias`]).
    pub alias: String,
    /// The version it is to name; it must exist.
    pub version: Version,
}

/// Reply to `registry.alias.assign`, and the event `registry.alias.set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasSet {
    /// The model's name.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// The version it names now.
    pub version: Version,
    /// The version it named before, if it moved; absent for a new alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
}

/// Payload of `registry.alias.delete`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasDelete {
    /// The model's name.
    pub name: String,
    /// The alias.
    pub alias: String,
}

/// Reply to `registry.alias.delete`, and the event `registry.alias.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasDeleted {
    /// The model's name.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// The version it named.
    pub version: Version,
}

/// Payload of `registry.model.locate`: at most one of `version` and `alias`; with
/// neither, the latest READY version. The alias `latest` (any case) means the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Locate {
    /// The model's name.
    pub name: String,
    /// A version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// An alias, or `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// Reply to `registry.model.locate`: the version to serve and where its files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Located {
    /// The model's name.
    pub name: String,
    /// The version found.
    pub version: Version,
    /// Where its files are.
    pub source: String,
    /// The run that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Its status (READY unless it was asked for by version or alias).
    pub status: VersionStatus,
    /// The alias it was asked for by, as given (`latest` included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}
