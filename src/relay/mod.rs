//! A relay node (`pglive relay`): the WebSocket relay without a source. It reads LiveEvents
//! from a RabbitMQ stream that the source's `amqp` sink fills (`stream = …`), and serves them
//! with the same hub, protocol, authentication, limits and close codes as the in-process relay.
//! Each node is stateless: at start it reads the stream from `now − history_age` to fill
//! every channel's history, so a client resumes with `since` on any node, also after every
//! node has restarted; any number of nodes run behind a plain load balancer.
//!
//! - [`stream`]: the stream consumer — where to start, when the node has caught up (ready),
//!   reconnecting at the offset after the last one it passed.
//! - this file: the node's tasks (ops listener, systemd notifications, the WebSocket server,
//!   the consumer) and its graceful stop.

mod stream;

pub use stream::probe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RelayConfig;
pub use crate::config::{DEFAULT_PREFETCH, DEFAULT_STREAM, StreamConfig};
use crate::shutdown::ShutdownBudget;
use crate::sink::websocket::{self, Relay};
use crate::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Listen(String),
    #[error("relay: {0}")]
    Stream(String),
}

/// The sockets a node serves on, bound before it starts (by `main`, or by a test on port 0).
pub struct Listeners {
    /// `ops.listen`, with the metrics recorder it renders.
    pub ops: Option<(TcpListener, PrometheusHandle)>,
    pub websocket: TcpListener,
}

impl Listeners {
    /// Binds what `config` asks for; `metrics` is the installed recorder (needed when
    /// `ops.listen` is set).
    pub async fn bind(
        config: &RelayConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Listeners, NodeError> {
        let ops = match (config.ops.listen, metrics) {
            (Some(listen), Some(handle)) => Some((bind(listen, "ops.listen").await?, handle)),
            _ => None,
        };
        let websocket = bind(config.websocket.listen, "sinks[0].listen").await?;
        Ok(Listeners { ops, websocket })
    }
}

async fn bind(listen: SocketAddr, key: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| NodeError::Listen(format!("{key}: cannot listen on {listen}: {e}")))
}

/// Runs a relay node until `shutdown` (then closes every client with 1001 within
/// `ops.shutdown_timeout`) or a failure that retrying cannot fix (credentials, a queue that is
/// not a stream).
pub async fn run(
    config: RelayConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let root = CancellationToken::new();
    // Ends every task however this function returns.
    let _root_guard = root.clone().drop_guard();
    let tasks = TaskTracker::new();
    let source = format!("stream {}", config.stream.stream);
    let status = Arc::new(Status::new(
        &source,
        vec![(websocket::NAME.to_owned(), None)],
    ));
    if let Some((listener, handle)) = listeners.ops {
        crate::ops::serve(listener, status.clone(), handle, &tasks, root.clone());
    }
    tasks.spawn(crate::ops::notify::run(status.clone(), root.clone()));
    let clients_stop = root.child_token();
    let relay = Relay::catching_up(
        config.websocket.clone(),
        websocket::NAME,
        clients_stop.clone(),
    );
    let feed = relay.feed();
    let budget = ShutdownBudget::new(config.ops.shutdown_timeout);
    let server = tokio::spawn(relay.serve(listeners.websocket, budget.relay_close()));
    let reader = stream::Reader::new(
        config.stream,
        config.websocket.history_age,
        feed,
        status.clone(),
    );
    let result = reader.run(shutdown.clone()).await;
    status.stopping();
    if let Err(e) = &result {
        tracing::error!(error = %e, "relay node stopping");
    }
    // Clients get 1001 and their close handshakes get the relay's share of the budget.
    clients_stop.cancel();
    let _ = server.await;
    root.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    result.map_err(NodeError::Stream)
}
