//! `mlmesh-registry`: the model registry node (`registry/1` over SQLite).
//!
//! ```text
//! mlmesh-registry [--config FILE]
//! MLMESH_STORE__DATA_DIR=/var/lib/mlmesh MLMESH_NODE__MESH=lab mlmesh-registry
//! ```
//! Configuration: defaults < FILE < `MLMESH_SECTION__FIELD` environment. The runtime's
//! sections (`[node]`, `[network]`, ...) and `[store]` (`data_dir`, `durability`,
//! `request_retention_s`). When ready it prints one JSON line:
//! `{"id":..,"name":..,"pub":..,"rpc":..,"store":..}`. SIGTERM or Ctrl-C leaves the mesh
//! gracefully.

use std::path::PathBuf;

use clap::Parser;
use mlmesh::{Config, Node};
use mlmesh_nodes::host;
use mlmesh_nodes::registry::Registry;
use mlmesh_nodes::store::StoreSection;

/// The mlmesh model registry.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file: the runtime's sections and `[store]`.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    host::init_tracing();
    let args = Args::parse();
    let (config, store) = Config::load_with::<StoreSection>(args.config.as_deref(), "store")?;
    let registry = Registry::open(&store)?;
    let node = registry.serve(Node::builder(config)).spawn().await?;
    host::print_ready(&node, registry.store_path())?;
    host::wait_for_signal().await?;
    node.shutdown().await;
    Ok(())
}
