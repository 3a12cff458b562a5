//! `mlmesh-tracker`: the experiment tracker node (`tracking/1` over SQLite).
//!
//! ```text
//! mlmesh-tracker [--config FILE]
//! MLMESH_STORE__DATA_DIR=/var/lib/mlmesh MLMESH_NODE__MESH=lab mlmesh-tracker
//! ```
//! Configuration: defaults < FILE < `MLMESH_SECTION__FIELD` environment. The runtime's
//! sections (`[node]`, `[network]`, ...) and `[store]` (`data_dir`, `durability`,
//! `request_retention_s`). When ready it prints one JSON line:
//! `{"id":..,"name":..,"pub":..,"rpc":..,"store":..}`. SIGTERM or Ctrl-C leaves the mesh
//! gracefully. `mlmesh run tracker` does the same.

use std::path::PathBuf;

use clap::Parser;
use mlmesh_nodes::host::{self, NodeKind};

/// The mlmesh experiment tracker.
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
    host::run_node(NodeKind::Tracker, args.config.as_deref()).await?;
    Ok(())
}
