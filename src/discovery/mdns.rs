//! mDNS: advertise this node and browse for others (IPv4 only: zmq.rs cannot dial
//! link-local IPv6).
//!
//! Instance names carry the node id, so they are unique and probing is skipped
//! (resolves take under a millisecond instead of ~0.9 s).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use mlmesh_protocol::{NodeId, MDNS_SERVICE_TYPE, PROTOCOL_VERSION};

use crate::node::{BuildError, Inner};
use crate::peers::Via;

/// The running mDNS daemon and this node's record.
pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Mdns {
    /// Unregisters the record (peers see it leave in about a second) and stops the
    /// daemon. Blocks for up to a second.
    pub(crate) fn goodbye(self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(Duration::from_millis(500));
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_millis(500));
        }
    }
}

impl Drop for Mdns {
    /// A node dropped without `shutdown` still stops its daemon thread (no goodbye:
    /// peers expire it by heartbeat silence, as they would a crash).
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

fn err(e: impl std::fmt::Display) -> BuildError {
    BuildError::Mdns(e.to_string())
}

pub(crate) fn start(inner: &Arc<Inner>) -> Result<Mdns, BuildError> {
    let cfg = &inner.config;
    let daemon = ServiceDaemon::new().map_err(err)?;
    daemon.disable_interface(IfKind::IPv6).map_err(err)?;
    // mDNS runs on the configured interfaces, else where the node listens.
    let bind = cfg.bind_address()?;
    let only: Vec<IfKind> = match (&cfg.discovery.mdns_interfaces[..], &cfg.network.interface) {
        ([], Some(name)) => vec![IfKind::Name(name.clone())],
        ([], None) if bind.is_loopback() => vec![IfKind::LoopbackV4],
        ([], None) if bind.is_unspecified() => Vec::new(),
        ([], None) => vec![IfKind::Addr(bind.into())],
        (names, _) => names
            .iter()
            .map(|n| match n.as_str() {
                "lo" => IfKind::LoopbackV4,
                _ => IfKind::Name(n.clone()),
            })
            .collect(),
    };
    if !only.is_empty() {
        daemon.disable_interface(IfKind::All).map_err(err)?;
        daemon.enable_interface(only).map_err(err)?;
    }

    let instance = format!("{}-{}", cfg.node.name, inner.id.0.simple());
    let host = format!("{instance}.local.");
    let rpc_port = port(&inner.endpoints.rpc);
    let roles = cfg.node.roles.join(",");
    let id = inner.id.to_string();
    let v = PROTOCOL_VERSION.to_string();
    let pub_port = port(&inner.endpoints.publish).to_string();
    let rpc = rpc_port.to_string();
    let txt = [
        ("id", id.as_str()),
        ("name", cfg.node.name.as_str()),
        ("mesh", cfg.node.mesh.as_str()),
        ("v", v.as_str()),
        ("pub", pub_port.as_str()),
        ("rpc", rpc.as_str()),
        ("roles", roles.as_str()),
    ];
    let fixed = cfg
        .network
        .advertise
        .or((!bind.is_unspecified()).then_some(bind));
    let mut info = match fixed {
        Some(ip) => {
            let ip = std::net::IpAddr::V4(ip);
            ServiceInfo::new(MDNS_SERVICE_TYPE, &instance, &host, ip, rpc_port, &txt[..])
        }
        None => ServiceInfo::new(MDNS_SERVICE_TYPE, &instance, &host, "", rpc_port, &txt[..])
            .map(ServiceInfo::enable_addr_auto),
    }
    .map_err(err)?;
    info.set_requires_probe(false);
    let fullname = info.get_fullname().to_owned();
    daemon.register(info).map_err(err)?;
    let events = daemon.browse(MDNS_SERVICE_TYPE).map_err(err)?;
    inner.tasks.spawn(browse(inner.clone(), events));
    Ok(Mdns { daemon, fullname })
}

fn port(endpoint: &str) -> u16 {
    crate::config::parse_tcp_endpoint(endpoint)
        .map(|(_, p)| p)
        .unwrap_or(0)
}

async fn browse(inner: Arc<Inner>, events: mdns_sd::Receiver<ServiceEvent>) {
    let mut names: HashMap<String, NodeId> = HashMap::new();
    let loopback_mesh = inner.config.bind_address().is_ok_and(|a| a.is_loopback());
    loop {
        let event = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            e = events.recv_async() => match e {
                Ok(e) => e,
                Err(_) => return,
            },
        };
        match event {
            ServiceEvent::ServiceResolved(svc) => {
                let txt = |k: &str| svc.get_property_val_str(k).map(str::to_owned);
                let Some(id) = txt("id").and_then(|s| s.parse::<NodeId>().ok()) else {
                    continue;
                };
                if id == inner.id
                    || txt("mesh").as_deref() != Some(inner.config.node.mesh.as_str())
                    || txt("v").as_deref() != Some(&PROTOCOL_VERSION.to_string())
                {
                    continue;
                }
                // Prefer loopback for a loopback mesh, a routable address otherwise.
                let mut addrs: Vec<Ipv4Addr> = svc.get_addresses_v4().into_iter().collect();
                addrs.sort_by_key(|a| (a.is_loopback() != loopback_mesh, a.is_link_local(), *a));
                let Some(addr) = addrs.first() else { continue };
                names.insert(svc.get_fullname().to_owned(), id);
                let endpoint = format!("tcp://{addr}:{}", svc.get_port());
                inner
                    .rejoin
                    .resolved(&id, &endpoint, std::time::Instant::now());
                // A peer that expired is not in the table, so it is described again.
                super::consider(&inner, endpoint, Via::Mdns, Some(id), false);
            }
            // An mDNS goodbye, or a record that lapsed unanswered (as a partition
            // longer than its TTL lapses it too). Neither removes a live peer nor ends
            // the search for one dropped for silence (SPEC 6.2, 6.5): multicast can fail
            // while a node and its TCP links are fine, so liveness alone decides. A node
            // that leaves says so in its last heartbeat.
            ServiceEvent::ServiceRemoved(_, fullname) => {
                names.remove(&fullname);
            }
            _ => {}
        }
    }
}
