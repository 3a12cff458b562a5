//! What every standard node binary does around its node: logging, its ready line, and
//! waiting for Ctrl-C or SIGTERM; and [`run_node`], the whole life of a standard node,
//! shared by the node binaries and `mlmesh run`.

use std::io::Write;
use std::path::Path;

use mlmesh::{Config, Node, NodeHandle};

use crate::registry::Registry;
use crate::store::StoreSection;
use crate::tracker::Tracker;

/// Logs to stderr, filtered by `MLMESH_LOG` (default `warn`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MLMESH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Prints the one JSON line that says the node is up:
/// `{"id":..,"name":..,"pub":..,"rpc":..,"store":..}`.
pub fn print_ready(node: &NodeHandle, store: &Path) -> std::io::Result<()> {
    let quote = |s: &str| format!("{s:?}");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        r#"{{"id":"{}","name":{},"pub":{},"rpc":{},"store":{}}}"#,
        node.id(),
        quote(node.name()),
        quote(&node.endpoints().publish),
        quote(&node.endpoints().rpc),
        quote(&store.display().to_string()),
    )?;
    out.flush()
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// A standard node this crate can run: what `mlmesh run KIND` and the node binaries start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeKind {
    /// The experiment tracker (`tracking/1`), binary `mlmesh-tracker`.
    Tracker,
    /// The model registry (`registry/1`), binary `mlmesh-registry`.
    Registry,
}

/// Why a standard node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration file or environment is invalid.
    #[error(transparent)]
    Config(#[from] mlmesh::ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The node could not start.
    #[error(transparent)]
    Build(#[from] mlmesh::BuildError),
    /// Writing the ready line or waiting for a signal failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs a standard node until Ctrl-C or SIGTERM, as its binary does: loads the config
/// (defaults < `config` < `MLMESH_*` environment, with its `[store]` section), then
/// [`serve_node`]. Logging is the caller's (see [`init_tracing`]).
pub async fn run_node(kind: NodeKind, config: Option<&Path>) -> Result<(), RunError> {
    let (config, store) = Config::load_with::<StoreSection>(config, "store")?;
    serve_node(kind, config, &store).await
}

/// Opens the store, starts the node, prints the ready line, waits for Ctrl-C or SIGTERM
/// and leaves the mesh gracefully.
pub async fn serve_node(
    kind: NodeKind,
    config: Config,
    store: &StoreSection,
) -> Result<(), RunError> {
    let node = match kind {
        NodeKind::Tracker => {
            let tracker = Tracker::open(store)?;
            let node = tracker.serve(Node::builder(config)).spawn().await?;
            tracker.watch(&node);
            print_ready(&node, tracker.store_path())?;
            node
        }
        NodeKind::Registry => {
            let registry = Registry::open(store)?;
            let node = registry.serve(Node::builder(config)).spawn().await?;
            print_ready(&node, registry.store_path())?;
            node
        }
    };
    let waited = wait_for_signal().await;
    node.shutdown().await;
    waited.map_err(RunError::Io)
}
