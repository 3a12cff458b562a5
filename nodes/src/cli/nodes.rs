//! `mlmesh nodes` and `mlmesh describe`: who is in the mesh, and what one node serves.

use std::time::Duration;

use mlmesh::protocol::sys::{self, Describe, Empty};
use mlmesh::{CallOptions, PeerInfo, PeerState, Via};

use super::io::{human_duration, table, Out};
use super::session::Session;
use super::{Failure, Global};

/// The default wait for discovery.
const WAIT: Duration = Duration::from_millis(1500);

/// List the live nodes of the mesh: name, id, roles, address, state, last seen.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Only nodes the runtime holds alive or suspect (by their heartbeats) are listed: a node that
stopped never shows, even while its mDNS record lingers. The command waits for discovery
until no new node has appeared for 300 ms, or --wait.

Examples:
  mlmesh nodes
  mlmesh nodes --json --seed tcp://10.0.0.2:7001 | jq -r 'select(.roles | index(\"tracker\")) | .id'")]
pub(crate) struct NodesArgs {
    /// One JSON object a line: name, id, mesh, roles, rpc, pub, state, last_seen_ms,
    /// heartbeat_ms, version, via, started_ms, serves.
    #[arg(long)]
    json: bool,
}

/// Show what one node serves: its roles, endpoints, version and instruction topics.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
NODE is a node name, an id (with or without hyphens) or a unique prefix of an id.

Examples:
  mlmesh describe tracker
  mlmesh describe 0190f3c2 --json")]
pub(crate) struct DescribeArgs {
    /// The node: a name, an id, or an id prefix.
    #[arg(value_name = "NODE")]
    node: String,
    /// Print the describe answer as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn nodes(g: &Global, args: NodesArgs) -> Result<(), Failure> {
    let session = Session::start(g, WAIT).await?;
    let peers = session.settle().await;
    let result = print_nodes(&session, &peers, args.json);
    session.close().await;
    result
}

fn print_nodes(session: &Session, peers: &[PeerInfo], json: bool) -> Result<(), Failure> {
    let mut out = Out::new();
    if peers.is_empty() {
        eprintln!(
            "mlmesh: no live nodes found in mesh {} within {} (see `mlmesh doctor`)",
            session.mesh(),
            human_duration(session.wait)
        );
        return Ok(());
    }
    if json {
        for p in peers {
            out.line(&node_json(p))?;
        }
    } else {
        let mut rows = vec![["NAME", "ID", "ROLES", "ADDRESS", "STATE", "LAST SEEN"]
            .map(String::from)
            .to_vec()];
        for p in peers {
            rows.push(vec![
                p.name.clone(),
                p.id.to_string(),
                if p.roles.is_empty() {
                    "-".into()
                } else {
                    p.roles.join(",")
                },
                p.endpoints.rpc.clone(),
                state(p.state).into(),
                format!("{} ago", human_duration(p.last_seen)),
            ]);
        }
        for line in table(&rows) {
            out.line(&line)?;
        }
    }
    out.flush()
}

pub(crate) fn state(s: PeerState) -> &'static str {
    match s {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        _ => "unknown",
    }
}

fn via(v: Via) -> &'static str {
    match v {
        Via::Mdns => "mdns",
        Via::Seed => "seed",
        Via::Introduction => "introduction",
        _ => "unknown",
    }
}

fn node_json(p: &PeerInfo) -> String {
    serde_json::json!({
        "name": p.name,
        "id": p.id.to_string(),
        "mesh": p.mesh,
        "roles": p.roles,
        "rpc": p.endpoints.rpc,
        "pub": p.endpoints.publish,
        "state": state(p.state),
        "last_seen_ms": u64::try_from(p.last_seen.as_millis()).unwrap_or(u64::MAX),
        "heartbeat_ms": u64::try_from(p.heartbeat.as_millis()).unwrap_or(u64::MAX),
        "version": p.version,
        "via": via(p.via),
        "started_ms": p.started_ms,
        "serves": p.serves,
    })
    .to_string()
}

pub(crate) async fn describe(g: &Global, args: DescribeArgs) -> Result<(), Failure> {
    let session = Session::start(g, WAIT).await?;
    let result = describe_in(&session, &args).await;
    session.close().await;
    result
}

async fn describe_in(session: &Session, args: &DescribeArgs) -> Result<(), Failure> {
    let peer = session.resolve(&args.node).await?;
    let d: Describe = session
        .node
        .request_with(sys::DESCRIBE, &Empty {}, CallOptions::default().to(peer.id))
        .await
        .map_err(|s| Failure::status(&s))?;
    let mut out = Out::new();
    if args.json {
        out.line(&describe_json(&d))?;
    } else {
        let now_ms = mlmesh::protocol::now_nanos() / 1_000_000;
        let up = Duration::from_millis(now_ms.saturating_sub(d.started_ms));
        let roles = if d.roles.is_empty() {
            "-".to_owned()
        } else {
            d.roles.join(", ")
        };
        let rows = vec![
            vec!["name".into(), d.name.clone()],
            vec!["id".into(), d.id.to_string()],
            vec!["mesh".into(), d.mesh.clone()],
            vec!["roles".into(), roles],
            vec![
                "version".into(),
                format!("{} (protocol {})", d.version, d.protocol),
            ],
            vec!["rpc".into(), d.endpoints.rpc.clone()],
            vec!["pub".into(), d.endpoints.publish.clone()],
            vec!["heartbeat".into(), format!("{} ms", d.heartbeat_ms)],
            vec!["up".into(), human_duration(up)],
            vec!["state".into(), state(peer.state).into()],
            vec!["peers".into(), format!("{} known", d.peers.len())],
            vec!["serves".into(), format!("{} instructions", d.serves.len())],
        ];
        for line in table(&rows) {
            out.line(&line)?;
        }
        let serves: Vec<Vec<String>> = d
            .serves
            .iter()
            .map(|s| vec![format!("  {}", s.topic), format!("schema {}", s.schema)])
            .collect();
        for line in table(&serves) {
            out.line(&line)?;
        }
    }
    out.flush()
}

fn describe_json(d: &Describe) -> String {
    let serves: Vec<_> = d
        .serves
        .iter()
        .map(|s| serde_json::json!({"topic": s.topic, "schema": s.schema}))
        .collect();
    let peers: Vec<_> = d
        .peers
        .iter()
        .map(
            |p| serde_json::json!({"id": p.id.to_string(), "name": p.name, "rpc": p.endpoints.rpc}),
        )
        .collect();
    serde_json::json!({
        "name": d.name,
        "id": d.id.to_string(),
        "mesh": d.mesh,
        "protocol": d.protocol,
        "version": d.version,
        "roles": d.roles,
        "rpc": d.endpoints.rpc,
        "pub": d.endpoints.publish,
        "heartbeat_ms": d.heartbeat_ms,
        "started_ms": d.started_ms,
        "serves": serves,
        "peers": peers,
    })
    .to_string()
}
