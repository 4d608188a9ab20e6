//! HTTP listeners — the WebSocket relay's and the ops endpoints': an accept loop that caps the
//! concurrent TCP connections, counted from `accept` (before any request is read, let alone
//! authenticated), and closes a connection whose request headers do not arrive in time. Each
//! connection is served by hyper with an axum router, WebSocket upgrades included; a
//! connection's [`Slot`] stays taken until it is closed, upgraded or not.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// A client that has not sent its request headers within this long is disconnected: an
/// unfinished request must not hold a connection slot for long.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's start line and headers may take (hyper's smallest read buffer is
/// 8 KiB). A browser's WebSocket upgrade with a JWT in the query and its cookies fits; more is
/// answered with `431` and the connection closed. It bounds what a connection that never
/// finishes its request can make pglive hold: hyper's default would let each hold 400 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Refusals (a `503` written to a connection over the cap) in progress at once; beyond it,
/// connections over the cap are closed without a word.
const MAX_REFUSING: usize = 64;
/// How long a refused connection may take to read its `503`.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
      content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open TCP connections at most, whatever state they are in.
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// A connection's place under the cap, held while it is open. A handler that takes the
/// connection over (a WebSocket upgrade) keeps a clone for as long as it serves it.
#[derive(Clone)]
pub struct Slot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and lets
/// connections finish their current request (upgraded connections are their handlers' to
/// close). `tune` is applied to each accepted socket. Returns once every HTTP connection
/// task has ended.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    name: &'static str,
    stop: CancellationToken,
    tune: fn(&TcpStream),
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let refused =
        metrics::counter!(crate::status::metric::HTTP_CONNECTIONS_REFUSED, "listener" => name);
    let tasks = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_header_size(MAX_HEADER_BYTES);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            tracing::debug!(
                listener = name,
                max = limits.max_connections,
                "connection refused: too many connections"
            );
            if let Ok(turn) = refusing.clone().try_acquire_owned() {
                tasks.spawn(refuse(tcp, turn));
            }
            continue;
        };
        tune(&tcp);
        let slot = Slot(Arc::new(permit));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(slot.clone());
            router.clone().call(request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Tells a connection over the cap why it is closed. Reading what it sent before closing
/// keeps the kernel from answering its request with a reset that could hide the `503`.
async fn refuse(mut tcp: TcpStream, _turn: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        tcp.write_all(REFUSAL).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
