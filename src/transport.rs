//! The ZeroMQ side: one PUB and one ROUTER per node, a SUB per peer, a DEALER per peer.

pub(crate) mod client;
pub(crate) mod publisher;
pub(crate) mod server;
pub(crate) mod subscriber;

use std::time::Duration;

use zeromq::{Endpoint, SocketOptions};

/// Socket options for outgoing connections: a short connect timeout, since zmq.rs
/// otherwise blocks for 30 s on a peer that is not listening.
pub(crate) fn dial_options(timeout: Duration) -> SocketOptions {
    let mut o = SocketOptions::default();
    o.connect_timeout(timeout);
    o
}

/// The port of a bound TCP endpoint.
pub(crate) fn port_of(endpoint: &Endpoint) -> u16 {
    match endpoint {
        Endpoint::Tcp(_, port) => *port,
        _ => 0,
    }
}
