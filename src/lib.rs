//! pglive: PostgreSQL logical replication → Refine LiveEvents → sinks.
//!
//! The pipeline, in order:
//! ```text
//! postgres ─▶ source ─▶ decode ─▶ map ─▶ sink queues ─▶ sink drivers ─┐ ack(batch)
//!    ▲                                                                │
//!    └──── flush LSN (status update) ◀── checkpoint ◀─────────────────┘
//! ```
//! - [`source`]: the replication connection (TLS, auth, `START_REPLICATION`, keepalives, status
//!   updates), the control connection for catalog work, and the loop that drives the rest.
//! - [`decode`]: pgoutput bytes → typed messages (pure).
//! - [`map`]: messages → [`event::LiveEvent`]s: channels, types, typed ids, coalescing (pure).
//! - [`sink`]: the `Sink` trait, its generic driver, and the sinks (stdout, file, and AMQP,
//!   which pipelines publisher confirms across batches with a driver of its own).
//! - [`checkpoint`]: per-sink acknowledgements → the contiguous flush LSN.
//! - [`ops`]: the shared status, the `/healthz` `/readyz` `/metrics` listener, systemd
//!   notifications and the slot monitor.
//! - [`http`]: the accept loop both HTTP listeners share: connection cap, header timeout.
//! - [`app`]: wires the stages; [`config`] loads and validates settings; [`check`] verifies
//!   the server side.

pub mod app;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod event;
pub mod http;
pub mod lsn;
pub mod map;
pub mod ops;
pub mod sink;
pub mod source;
