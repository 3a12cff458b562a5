//! `doctor`'s own probes, beside the runtime: the runtime ignores what it cannot use (a
//! node of another mesh or protocol version, an address it cannot reach), and these
//! look at exactly that. A TCP connect, a `sys.describe` sent on a socket of its own and
//! decoded whatever version answers, and an mDNS browser that keeps every record.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use tokio::time::Instant;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use mlmesh::protocol::sys::{self, Describe};
use mlmesh::protocol::{
    from_payload, Body, Codec, DecodeError, Envelope, NodeId, Topic, MDNS_SERVICE_TYPE,
};
use mlmesh::{Config, Status};

/// `host:port` of a `tcp://host:port` endpoint.
fn address(endpoint: &str) -> Result<&str, String> {
    endpoint
        .strip_prefix("tcp://")
        .filter(|a| a.contains(':'))
        .ok_or_else(|| format!("{endpoint:?} is not tcp://host:port"))
}

/// Whether a TCP connection to `endpoint` opens within `timeout`; the error says why not.
pub(crate) async fn reachable(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let addr = address(endpoint)?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// What a `sys.describe` sent straight to an endpoint found.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A node of protocol version 1 answered.
    Node(Box<Describe>),
    /// The answer is of another protocol version, or says ours is not spoken.
    Version(String),
    /// It answered with an error.
    Refused(Status),
    /// Something answered that does not speak mlmesh.
    Foreign(String),
    /// Nothing answered.
    Silent(String),
}

/// Sends `sys.describe` to the ROUTER at `endpoint` on a DEALER of its own.
pub(crate) async fn describe(endpoint: &str, timeout: Duration) -> Answer {
    let codec = Codec::default();
    let mut socket = DealerSocket::new();
    match tokio::time::timeout(timeout, socket.connect(endpoint)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Answer::Silent(format!("cannot connect: {e}")),
        Err(_) => return Answer::Silent("the connection did not open".into()),
    }
    let Ok(topic) = Topic::new(sys::DESCRIBE) else {
        return Answer::Silent("bad topic".into());
    };
    let ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let request = Envelope::request(topic, NodeId::new(), ms, Bytes::from_static(&[0x80]));
    let frame = match codec.encode(&request) {
        Ok(f) => f,
        Err(e) => return Answer::Silent(e.to_string()),
    };
    let mut msg = ZmqMessage::from(Bytes::new());
    msg.push_back(Bytes::from(frame));
    let sent = tokio::time::timeout(timeout, socket.send(msg)).await;
    if !matches!(sent, Ok(Ok(()))) {
        return Answer::Silent("the request could not be sent".into());
    }
    let reply = match tokio::time::timeout(timeout, socket.recv()).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Answer::Silent(format!("the connection failed: {e}")),
        Err(_) => return Answer::Silent(format!("no reply within {} ms", timeout.as_millis())),
    };
    let Some(last) = reply.into_vec().pop() else {
        return Answer::Foreign("an empty message".into());
    };
    match codec.decode(&last) {
        Ok(env) => match env.body {
            Body::Reply { status, .. } if status.is_ok() => {
                match from_payload::<Describe>(&env.data) {
                    Ok(d) if d.protocol != mlmesh::protocol::PROTOCOL_VERSION => {
                        Answer::Version(format!("it speaks protocol {}", d.protocol))
                    }
                    Ok(d) => Answer::Node(Box::new(d)),
                    Err(e) => Answer::Foreign(format!("its describe answer is malformed: {e}")),
                }
            }
            Body::Reply { status, .. } if status.code == mlmesh::Code::VersionMismatch => {
                Answer::Version(status.message)
            }
            Body::Reply { status, .. } => Answer::Refused(status),
            _ => Answer::Foreign("it answered with a non-reply".into()),
        },
        Err(DecodeError::Version { got }) => {
            Answer::Version(format!("it answers in protocol {got}"))
        }
        Err(e) => Answer::Foreign(e.to_string()),
    }
}

/// One node's mDNS record, as advertised (SPEC 6.1).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: Option<NodeId>,
    pub(crate) name: String,
    pub(crate) mesh: String,
    pub(crate) version: String,
    pub(crate) addresses: Vec<Ipv4Addr>,
    pub(crate) rpc_port: u16,
}

/// An mDNS browser of `_mlmesh._tcp` on the interfaces a node of `config` uses.
pub(crate) struct Browser {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Browser")
    }
}

/// The interfaces mDNS uses for `config`, as the runtime chooses them: empty means all.
pub(crate) fn mdns_interfaces(config: &Config) -> Result<Vec<IfKind>, String> {
    let bind = config.bind_address().map_err(|e| e.to_string())?;
    Ok(
        match (
            &config.discovery.mdns_interfaces[..],
            &config.network.interface,
        ) {
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
        },
    )
}

impl Browser {
    /// Starts browsing.
    pub(crate) fn start(config: &Config) -> Result<Self, String> {
        let err = |e: mdns_sd::Error| e.to_string();
        let daemon = ServiceDaemon::new().map_err(err)?;
        daemon.disable_interface(IfKind::IPv6).map_err(err)?;
        let only = mdns_interfaces(config)?;
        if !only.is_empty() {
            daemon.disable_interface(IfKind::All).map_err(err)?;
            daemon.enable_interface(only).map_err(err)?;
        }
        let events = daemon.browse(MDNS_SERVICE_TYPE).map_err(err)?;
        Ok(Self { daemon, events })
    }

    /// Every record resolved until `until`, one per instance (the latest).
    pub(crate) async fn collect(self, until: Instant) -> Vec<Record> {
        let mut records: Vec<(String, Record)> = Vec::new();
        loop {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                e = self.events.recv_async() => match e {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            match event {
                ServiceEvent::ServiceResolved(svc) => {
                    let txt = |k: &str| svc.get_property_val_str(k).unwrap_or_default().to_owned();
                    let mut addresses: Vec<Ipv4Addr> = svc.get_addresses_v4().into_iter().collect();
                    addresses.sort();
                    let record = Record {
                        id: txt("id").parse().ok(),
                        name: txt("name"),
                        mesh: txt("mesh"),
                        version: txt("v"),
                        addresses,
                        rpc_port: svc.get_port(),
                    };
                    let fullname = svc.get_fullname().to_owned();
                    records.retain(|(n, _)| *n != fullname);
                    records.push((fullname, record));
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    records.retain(|(n, _)| *n != fullname);
                }
                _ => {}
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ =
                tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_millis(500)))
                    .await;
        }
        records.into_iter().map(|(_, r)| r).collect()
    }
}
