//! pglive: PostgreSQL logical replication → Refine LiveEvents → sinks.
//!
//! The pipeline, in order:
//! ```text
//! postgres ─▶ source ─▶ pipeline: decode ─▶ map ─▶ outbox ─▶ sink queues ─▶ sink drivers ─┐
//!    ▲                                             │                                      │ ack
//!    └──────── flush LSN (status update) ◀── checkpoint ◀──────── AckBoard ◀───────────────┘
//! ```
//! - [`source`]: the replication stream only — the transport both connections share (TLS,
//!   auth, the password rule), the replication protocol (`START_REPLICATION`, messages,
//!   throttled status updates), and the control connection's catalog work.
//! - [`pipeline`]: the loop that opens sessions (slot and publication as configured), decodes
//!   and maps each message into the [`pipeline::outbox`], which seals batches, hands them to
//!   every sink's queue and advances the checkpoint; reconnects, stands by, shuts down.
//! - [`decode`]: pgoutput bytes → typed messages (pure).
//! - [`map`]: messages → [`event::LiveEvent`]s: channels, types, typed ids, coalescing (pure).
//! - [`sink`]: the `Sink` contract, the one driver every sink runs under (in-flight window,
//!   acknowledgements, health, backoff, retry), and the sinks: stdout, file, AMQP, and the
//!   WebSocket relay (whose server `app` starts).
//! - [`checkpoint`]: per-sink acknowledgements → the contiguous flush LSN.
//! - [`status`]: the shared state every stage reports to, and every metric name (a leaf).
//! - [`ops`]: the `/healthz` `/readyz` `/metrics` listener, systemd notifications and the slot
//!   monitor.
//! - [`http`]: the accept loop both HTTP listeners share: connection cap, header timeout.
//! - [`relay`]: a relay node (`pglive relay`): the WebSocket relay fed from a RabbitMQ stream
//!   instead of a slot, any number of them behind a load balancer.
//! - [`app`]: wires the stages and owns every task; [`shutdown`]: how a shutdown spends its
//!   time; [`backoff`]: reconnection delays; [`config`] loads and validates settings;
//!   [`check`] verifies the server side.

pub mod app;
pub mod backoff;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod event;
pub mod http;
pub mod lsn;
pub mod map;
pub mod ops;
pub mod pipeline;
pub mod relay;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
