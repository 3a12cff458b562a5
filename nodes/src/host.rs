//! What every standard node binary does around its node: logging, its ready line, and
//! waiting for Ctrl-C or SIGTERM.

use std::io::Write;
use std::path::Path;

use mlmesh::NodeHandle;

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
