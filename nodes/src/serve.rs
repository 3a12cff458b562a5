//! Instruction handlers over a [`Store`]: decode, check, run in the store, publish the
//! op's events once committed, reply. Every standard node serves its names this way.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use mlmesh::protocol::{from_payload, to_payload, NodeId, Status};
use mlmesh::{Ctx, NodeBuilder};

pub(crate) use crate::store::now_ms;
use crate::store::{self, Done, Event, Store};

/// Most bytes of items in one page of a search: with the envelope around it, a page
/// stays under the default 1 MiB message limit whatever `max_results` says.
pub(crate) const PAGE_BYTES: usize = 768 * 1024;

/// How many of `items`, from the first, fit in [`PAGE_BYTES`] encoded; at least one (an
/// item over the limit alone is the runtime's TOO_LARGE, which names it).
pub(crate) fn fitting<T: Serialize>(items: &[T]) -> usize {
    let mut total = 0usize;
    for (i, item) in items.iter().enumerate() {
        // An item that cannot be encoded fails the whole reply later, with its reason.
        total = total.saturating_add(mlmesh::protocol::payload_len(item).unwrap_or(0));
        if total > PAGE_BYTES {
            return i.max(1);
        }
    }
    items.len()
}

/// What a write op knows of the instruction it serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    /// The calling node.
    pub(crate) source: NodeId,
    /// This node.
    pub(crate) node: NodeId,
    /// The time the instruction arrived, Unix milliseconds.
    pub(crate) now_ms: u64,
}

impl Meta {
    /// What a write knows of the instruction `ctx` serves, and the instruction's
    /// idempotency key.
    pub(crate) fn of(ctx: &Ctx) -> (Self, store::Key) {
        let meta = Self {
            source: ctx.source(),
            node: ctx.node().id(),
            now_ms: now_ms(),
        };
        (meta, store::key(ctx.request_id(), ctx.source()))
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Status> {
    to_payload(value)
        .map(Bytes::from)
        .map_err(|e| e.to_status())
}

impl Done {
    /// A reply of `value`.
    pub(crate) fn reply<T: Serialize + ?Sized>(value: &T) -> Result<Self, Status> {
        Ok(Self {
            reply: encode(value)?,
            events: Vec::new(),
        })
    }

    /// Adds an event to publish once the op is committed (encoded then, if watched).
    pub(crate) fn event<T: Serialize + Send + 'static>(
        mut self,
        topic: &'static str,
        payload: T,
    ) -> Self {
        self.events.push(Event::new(topic, payload));
        self
    }
}

/// Serves `topic` with a write: `op` runs in the store's group commit with the decoded
/// payload; a retry of the same request (same id and source) gets the stored reply.
pub(crate) fn write<T, F>(
    builder: NodeBuilder,
    topic: &str,
    store: &Arc<Store>,
    op: F,
) -> NodeBuilder
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(&Connection, T, Meta) -> Result<Done, Status> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let store = store.clone();
    builder.handle_raw(topic, move |data: Bytes, ctx: Ctx| {
        let op = op.clone();
        let store = store.clone();
        async move {
            let req: T = from_payload(&data).map_err(|e| e.to_status())?;
            let (meta, key) = Meta::of(&ctx);
            let done = store
                .write(Some(key), Box::new(move |c| op(c, req, meta)))
                .await?;
            for event in done.events {
                event.publish(ctx.node()).await;
            }
            Ok(done.reply)
        }
    })
}

/// Serves `topic` with a read on a snapshot of what is committed.
pub(crate) fn read<T, R, F>(
    builder: NodeBuilder,
    topic: &str,
    store: &Arc<Store>,
    query: F,
) -> NodeBuilder
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(&Connection, T) -> Result<R, Status> + Send + Sync + 'static,
{
    read_as(builder, topic, store, move |c, req, _node| query(c, req))
}

/// As [`read`], for a query that needs this node's id.
pub(crate) fn read_as<T, R, F>(
    builder: NodeBuilder,
    topic: &str,
    store: &Arc<Store>,
    query: F,
) -> NodeBuilder
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(&Connection, T, NodeId) -> Result<R, Status> + Send + Sync + 'static,
{
    let query = Arc::new(query);
    let store = store.clone();
    builder.handle_raw(topic, move |data: Bytes, ctx: Ctx| {
        let query = query.clone();
        let store = store.clone();
        async move {
            let req: T = from_payload(&data).map_err(|e| e.to_status())?;
            let node = ctx.node().id();
            let out = store.read(move |c| query(c, req, node)).await?;
            encode(&out)
        }
    })
}
