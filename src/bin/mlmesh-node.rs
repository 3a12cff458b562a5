//! `mlmesh-node`: a plain mesh node. It joins a mesh and stays there: a seed that
//! introduces nodes to each other where multicast is blocked, a probe to check a
//! network, and the process the runtime's own tests kill and restart.
//!
//! ```text
//! mlmesh-node [--config FILE] [--echo TOPIC]... [--flood TOPIC:COUNT:BYTES]
//! MLMESH_NODE__NAME=seed1 MLMESH_NETWORK__RPC_PORT=7001 mlmesh-node
//! ```
//! `--echo TOPIC` serves the instruction TOPIC by answering with its payload.
//! `--flood` publishes COUNT events of BYTES bytes as fast as the queue takes them.
//! When ready it prints one JSON line: `{"id":..,"name":..,"pub":..,"rpc":..}`.
//! SIGTERM or Ctrl-C leaves the mesh gracefully.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use mlmesh::{Config, Node};

struct Args {
    config: Option<PathBuf>,
    echo: Vec<String>,
    flood: Option<(String, u64, usize)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        config: None,
        echo: Vec::new(),
        flood: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config" => args.config = Some(value()?.into()),
            "--echo" => args.echo.push(value()?),
            "--flood" => {
                let v = value()?;
                let parts: Vec<&str> = v.split(':').collect();
                let [topic, count, bytes] = parts[..] else {
                    bail!("--flood takes TOPIC:COUNT:BYTES, got {v:?}");
                };
                args.flood = Some((topic.into(), count.parse()?, bytes.parse()?));
            }
            "-h" | "--help" => {
                println!("usage: mlmesh-node [--config FILE] [--echo TOPIC]... [--flood TOPIC:COUNT:BYTES]\nconfiguration: defaults < FILE < MLMESH_* environment (see `Config`)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MLMESH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let config = Config::load(args.config.as_deref())?;
    let mut builder = Node::builder(config);
    for topic in &args.echo {
        builder = builder.handle_raw(topic, |data: Bytes, _ctx| async move { Ok(data) });
    }
    let node = builder.spawn().await?;
    println!(
        r#"{{"id":"{}","name":"{}","pub":"{}","rpc":"{}"}}"#,
        node.id(),
        node.name(),
        node.endpoints().publish,
        node.endpoints().rpc
    );
    std::io::stdout().flush()?;
    if let Some((topic, count, bytes)) = args.flood {
        let payload = Bytes::from(mlmesh::protocol::to_payload(&serde_bytes::ByteBuf::from(
            vec![7u8; bytes],
        ))?);
        for _ in 0..count {
            node.publish_raw(topic.as_str(), payload.clone()).await?;
        }
        eprintln!("flood done: {:?}", node.stats());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    node.shutdown().await;
    Ok(())
}
