//! The command's own node: its configuration, waiting for discovery (bounded by
//! `--wait`), and naming peers by name, id or id prefix.

use std::collections::HashSet;
use std::time::Duration;

use mlmesh::{Code, Config, Node, NodeHandle, NodeId, Overflow, PeerInfo};
use tokio::time::Instant;

use super::{Failure, Global, EXIT_CONFIG};
use crate::store::StoreSection;

/// The name the command's node joins the mesh with.
pub(crate) const CLI_NAME: &str = "mlmesh-cli";
/// Its role.
pub(crate) const CLI_ROLE: &str = "cli";

/// How long the peer set must stay unchanged before discovery counts as settled.
const QUIET: Duration = Duration::from_millis(300);
/// How often waits look at the peer table.
const POLL: Duration = Duration::from_millis(10);
/// How long a publishing command waits for its peers to subscribe, even once the wait
/// for discovery is over: they connect and subscribe a moment after they admit it.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// Loads the configuration as nodes do (defaults < file < `MLMESH_*`), with the
/// standard nodes' `[store]` section accepted, then applies the flags.
pub(crate) fn load_config(g: &Global) -> Result<Config, Failure> {
    load_with_store(g).map(|(config, _)| config)
}

/// [`load_config`], with the `[store]` section (for `mlmesh run`).
pub(crate) fn load_with_store(g: &Global) -> Result<(Config, StoreSection), Failure> {
    let (mut config, store) = Config::load_with::<StoreSection>(g.config.as_deref(), "store")
        .map_err(|e| Failure::new(EXIT_CONFIG, e.to_string()))?;
    if let Some(mesh) = &g.mesh {
        config.node.mesh = mesh.clone();
    }
    config.discovery.seeds.extend(g.seeds.iter().cloned());
    if g.no_mdns {
        config.discovery.mdns = false;
    }
    config
        .validate()
        .map_err(|e| Failure::new(EXIT_CONFIG, e.to_string()))?;
    Ok((config, store))
}

/// The command's node, and how long it waits for discovery.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) node: NodeHandle,
    pub(crate) wait: Duration,
    started: Instant,
}

impl Session {
    /// Joins the mesh as `mlmesh-cli` (role `cli`, a new id, ephemeral ports, and a
    /// publish queue that waits rather than drops, so that piped input is not lost).
    pub(crate) async fn start(g: &Global, default_wait: Duration) -> Result<Self, Failure> {
        let mut config = load_config(g)?;
        config.node.name = CLI_NAME.into();
        config.node.roles = vec![CLI_ROLE.into()];
        config.node.id = None;
        config.network.pub_port = 0;
        config.network.rpc_port = 0;
        config.limits.publish_overflow = Overflow::Block;
        config.limits.publish_queue = config.limits.publish_queue.min(1024);
        let node = Node::builder(config)
            .spawn()
            .await
            .map_err(|e| Failure::internal(format!("cannot join the mesh: {e}")))?;
        Ok(Self {
            node,
            wait: g.wait.unwrap_or(default_wait),
            started: Instant::now(),
        })
    }

    /// When the wait for discovery ends.
    pub(crate) fn deadline(&self) -> Instant {
        self.started + self.wait
    }

    /// The mesh's name.
    pub(crate) fn mesh(&self) -> &str {
        &self.node.config().node.mesh
    }

    /// Waits until `found` gives something for the peer table, or the wait ends.
    pub(crate) async fn wait_for<T>(
        &self,
        mut found: impl FnMut(&[PeerInfo]) -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(t) = found(&self.node.peers()) {
                return Some(t);
            }
            if Instant::now() >= self.deadline() {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until discovery has settled: some peers found and none new for a moment,
    /// or the wait ends. Returns the peers.
    pub(crate) async fn settle(&self) -> Vec<PeerInfo> {
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut changed = Instant::now();
        loop {
            let peers = self.node.peers();
            let ids: HashSet<NodeId> = peers.iter().map(|p| p.id).collect();
            let now = Instant::now();
            if ids != seen {
                seen = ids;
                changed = now;
            }
            let quiet = QUIET.min(self.wait / 2);
            if (!seen.is_empty() && now - changed >= quiet) || now >= self.deadline() {
                return peers;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every peer has connected to this node's events and subscribed (bounded
    /// by the wait, and by [`SUBSCRIBE_WAIT`] at least), so that what it publishes next
    /// reaches every peer that subscribes to it. Returns how many peers there are and how
    /// many had not subscribed.
    pub(crate) async fn announce(&self) -> (usize, usize) {
        if self.node.peers().is_empty() {
            return (0, 0);
        }
        let wait = self
            .deadline()
            .saturating_duration_since(Instant::now())
            .max(SUBSCRIBE_WAIT);
        let missing = self.node.wait_for_subscribers(wait).await;
        (self.node.peers().len(), missing)
    }

    /// The peer `spec` names, waiting for it (bounded by the wait).
    pub(crate) async fn resolve(&self, spec: &str) -> Result<PeerInfo, Failure> {
        let found = self
            .wait_for(|peers| {
                let m = matching(spec, peers);
                (!m.is_empty()).then(|| m.into_iter().cloned().collect::<Vec<_>>())
            })
            .await;
        match found {
            Some(mut m) if m.len() == 1 => Ok(m.remove(0)),
            Some(m) => {
                let list: Vec<String> =
                    m.iter().map(|p| format!("{} ({})", p.name, p.id)).collect();
                Err(Failure::invalid(format!(
                    "{spec:?} names {} nodes: {}; give more of the id",
                    m.len(),
                    list.join(", ")
                )))
            }
            None => {
                let names: Vec<String> = self.node.peers().iter().map(|p| p.name.clone()).collect();
                let known = if names.is_empty() {
                    "none found; see `mlmesh doctor`".to_owned()
                } else {
                    format!("live: {}", names.join(", "))
                };
                Err(Failure::code(
                    Code::NoResponders,
                    format!(
                        "no live node named {spec:?} or with that id (prefix) in mesh {} within {} ({known})",
                        self.mesh(),
                        super::io::human_duration(self.wait)
                    ),
                ))
            }
        }
    }

    /// Leaves the mesh gracefully (flushing queued events).
    pub(crate) async fn close(self) {
        self.node.shutdown().await;
    }
}

/// The peers `spec` names: those of that name; else those whose id (with or without
/// hyphens) starts with it.
fn matching<'a>(spec: &str, peers: &'a [PeerInfo]) -> Vec<&'a PeerInfo> {
    let named: Vec<&PeerInfo> = peers.iter().filter(|p| p.name == spec).collect();
    if !named.is_empty() {
        return named;
    }
    let prefix: String = spec.to_ascii_lowercase().replace('-', "");
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Vec::new();
    }
    peers
        .iter()
        .filter(|p| p.id.0.simple().to_string().starts_with(&prefix))
        .collect()
}
