//! Instruction handlers: typed closures erased to one shape the server can call.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use mlmesh_protocol::{from_payload, to_payload, MessageId, NodeId, Status, Topic};

use crate::node::NodeHandle;

/// What a handler knows about the instruction it serves.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub(crate) node: NodeHandle,
    pub(crate) topic: Topic,
    pub(crate) source: NodeId,
    pub(crate) id: MessageId,
    pub(crate) deadline: Instant,
}

impl Ctx {
    /// The node serving the instruction: publish events or call others from here.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The instruction's topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The calling node.
    pub fn source(&self) -> NodeId {
        self.source
    }

    /// The request id (with `source`, the idempotency key of the instruction).
    pub fn request_id(&self) -> MessageId {
        self.id
    }

    /// When the caller stops waiting.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The reply of a handler: its payload, or an error status.
pub(crate) type Reply = Result<Bytes, Status>;

/// A handler with its payload types erased.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, data: Bytes, ctx: Ctx) -> BoxFuture<'static, Reply>;
}

pub(crate) struct Typed<F, T, R> {
    f: F,
    _types: PhantomData<fn(T) -> R>,
}

impl<F, T, R> Typed<F, T, R> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _types: PhantomData,
        }
    }
}

impl<F, Fut, T, R> ErasedHandler for Typed<F, T, R>
where
    F: Fn(T, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    fn call(&self, data: Bytes, ctx: Ctx) -> BoxFuture<'static, Reply> {
        match from_payload::<T>(&data) {
            Ok(payload) => {
                let fut = (self.f)(payload, ctx);
                Box::pin(async move {
                    let out = fut.await?;
                    to_payload(&out).map(Bytes::from).map_err(|e| e.to_status())
                })
            }
            Err(e) => Box::pin(std::future::ready(Err(e.to_status()))),
        }
    }
}

pub(crate) struct Raw<F>(pub(crate) F);

impl<F, Fut> ErasedHandler for Raw<F>
where
    F: Fn(Bytes, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    fn call(&self, data: Bytes, ctx: Ctx) -> BoxFuture<'static, Reply> {
        Box::pin((self.0)(data, ctx))
    }
}
