//! `mlmesh-mlflow`: `tracking/1` and `registry/1` served by an MLflow tracking server.
//!
//! ```text
//! mlmesh-mlflow [--config FILE]
//! MLMESH_MLFLOW__URL=http://127.0.0.1:5000 MLMESH_MLFLOW__DATA_DIR=/var/lib/mlmesh/mlflow \
//!   MLMESH_NODE__MESH=lab mlmesh-mlflow
//! ```
//! Configuration: defaults < FILE < `MLMESH_SECTION__FIELD` environment. The runtime's
//! sections (`[node]`, `[network]`, ...) and `[mlflow]` (`url`, `token`, `timeout_ms`,
//! `data_dir`, `max_in_flight`, `namespace`). When ready it prints one JSON line:
//! `{"id":..,"name":..,"pub":..,"rpc":..,"store":..}`; an MLflow that does not answer
//! yet is a warning, not a failure (calls are UNAVAILABLE until it does). SIGTERM or
//! Ctrl-C leaves the mesh gracefully.

use std::path::PathBuf;

use clap::Parser;
use mlmesh::{Config, Node};
use mlmesh_nodes::host;
use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};

/// The mlmesh adapter of an MLflow tracking server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file: the runtime's sections and `[mlflow]`.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    host::init_tracing();
    let args = Args::parse();
    let (config, section) = Config::load_with::<MlflowSection>(args.config.as_deref(), "mlflow")?;
    let adapter = Mlflow::open(&section)?;
    if let Err(e) = adapter.probe().await {
        tracing::warn!(url = %section.url, error = %e, "MLflow does not answer yet");
    }
    let node = adapter.serve(Node::builder(config)).spawn().await?;
    adapter.watch(&node);
    host::print_ready(&node, adapter.store_path())?;
    host::wait_for_signal().await?;
    node.shutdown().await;
    Ok(())
}
