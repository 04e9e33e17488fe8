//! The coordinator: where every front end hands a decoded request and its
//! [`session::Session`], and from where it reaches the shard that owns its
//! keys (inline on this core, over a channel to another core, through the
//! shard's Raft group in cluster mode), batched per destination, fanned out
//! when it names keys of several shards, and answered once durable.
//!
//! - [`context`]: a core's context (its shard, WAL, replica, stats, the
//!   channels to other cores).
//! - [`dispatch`]: how a request reaches its shard: inline, over a channel
//!   to another core, or through the Raft group; serving other cores.
//! - [`session`]: who a request acts for; made in one place.
//! - [`request`]: the front-end-neutral request and reply.
//! - [`routes`]: the check of the route a client sends with a request.
//! - [`batches`]: a pipeline's requests gathered per destination shard.
//! - [`multi`]: requests that fan out to several shards.
//! - [`replica`]: the path through a shard's Raft group (cluster mode).
//! - [`forward`]: the path to another node, for a range this node does not
//!   replicate (cluster mode, a partial layout).
//! - [`snapshots`]: the per-core snapshot driver.
//! - [`quotas`]: tenant lists and quota shares on a core.

pub mod batches;
pub mod context;
pub mod dispatch;
pub mod forward;
pub mod multi;
pub mod quotas;
pub mod replica;
pub mod request;
pub mod routes;
pub mod session;
pub mod snapshots;
