//! The ZeroMQ side: one PUB and one ROUTER per node, a SUB per peer, a DEALER per peer.

pub(crate) mod client;
pub(crate) mod publisher;
pub(crate) mod server;
pub(crate) mod subscriber;

use std::time::Duration;

use zeromq::{Endpoint, SocketOptions};

/// What a ZeroMQ message may hold beyond one envelope: routing and topic frames.
const FRAMING_SLACK: usize = 4096;

/// Socket options for listening sockets. zmq.rs (as patched) refuses a message over
/// twice the envelope limit by closing the connection before reserving memory for it
/// (upstream would reserve whatever a frame header announces). Up to twice the limit, a
/// message still reaches the node, which answers it TOO_LARGE or drops and counts it.
/// A request or reply that nothing is queued before goes on the wire from the task that
/// sends it, without a hop to the connection's writer task (`direct_writes`; the PUB and
/// SUB sockets made with these options ignore it).
pub(crate) fn listen_options(max_message_size: usize) -> SocketOptions {
    let mut o = SocketOptions::default();
    o.max_message_size(
        max_message_size
            .saturating_mul(2)
            .saturating_add(FRAMING_SLACK),
    )
    .direct_writes(true);
    o
}

/// Socket options for outgoing connections: the same bound, and a short connect
/// timeout, since zmq.rs otherwise blocks for 30 s on a peer that is not listening.
pub(crate) fn dial_options(max_message_size: usize, timeout: Duration) -> SocketOptions {
    let mut o = listen_options(max_message_size);
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
