//! The WebSocket relay: browsers connect to pglive itself, subscribe to channels, and receive
//! every event of those channels, one LiveEvent JSON object per text frame.
//!
//! Protocol (text frames, JSON):
//! - client → `{"op":"subscribe","channel":C}` (optionally `"since":"<meta.id>"`),
//!   `{"op":"unsubscribe","channel":C}`;
//! - server → `{"op":"subscribed","channel":C}`, then the events replayed after `since` (or
//!   `{"op":"resync","channel":C}` when they are no longer held), then live events;
//!   `{"op":"error","channel":C,"code":…,"message":…}` for a refused request.
//!
//! Control frames carry `"op"`; event frames never do. The relay is best-effort: a batch is
//! acknowledged once handed to the clients' queues, and a client that cannot keep up is told
//! to resync rather than slowing anyone down.

pub mod auth;
mod hub;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use auth::{Auth, Grants};
use hub::{Client, Hub};

use super::{Batch, Lane, SinkError};
use crate::event::EventId;

pub const NAME: &str = "websocket";
pub const DEFAULT_PATH: &str = "/live";
pub const DEFAULT_HISTORY: usize = 1000;
pub const DEFAULT_HISTORY_AGE: Duration = Duration::from_secs(300);
/// Above the largest batch (1,024 events), so that a client keeping up rides out a burst.
pub const DEFAULT_CLIENT_QUEUE: usize = 4096;
/// Kernel send buffer per client socket.
const SOCKET_SEND_BUFFER: usize = 64 * 1024;
/// Frames written to a client per flush, at most.
const WRITE_BATCH: usize = 256;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Close code sent when pglive stops (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that answered no ping within two intervals, or took no data for as
/// long (RFC 6455 "policy violation").
pub const CLOSE_UNRESPONSIVE: u16 = 1008;
/// Close code for a client message over `max_message_bytes` (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// What the WebSocket layer itself accepts, above `max_message_bytes` so that a message over
/// the limit gets a close frame with a reason rather than a dropped connection.
const TRANSPORT_MAX_MESSAGE: usize = 64 * 1024;

/// A resolved `[[sinks]] type = "websocket"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSinkConfig {
    pub listen: SocketAddr,
    pub path: String,
    pub auth: Auth,
    /// `Origin` values accepted from browsers; empty: any. Requests without `Origin` (not from
    /// a browser) are accepted.
    pub allowed_origins: Vec<String>,
    /// Events kept per channel for `since`, and for how long.
    pub history: usize,
    pub history_age: Duration,
    /// Frames queued per client before it is told to resync.
    pub client_queue: usize,
    pub max_connections: usize,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
}

struct Shared {
    config: WsSinkConfig,
    hub: Hub,
    connections: AtomicUsize,
    /// `pglive_websocket_clients`.
    clients: metrics::Gauge,
    next_id: AtomicU64,
    stop: CancellationToken,
}

/// Serves the relay and hands it every batch from `queue`, acknowledging each at once.
/// Returns when the queue is closed, after closing every connection (close code 1001).
pub async fn drive(
    config: WsSinkConfig,
    lane: Lane,
    mut queue: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), SinkError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| SinkError {
            sink: NAME,
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let shared = Arc::new(Shared {
        hub: Hub::new(config.history, config.history_age),
        config,
        connections: AtomicUsize::new(0),
        clients: metrics::gauge!("pglive_websocket_clients", "sink" => lane.status().label.clone()),
        next_id: AtomicU64::new(1),
        stop: CancellationToken::new(),
    });
    let app = axum::Router::new()
        .route(&shared.config.path, get(upgrade))
        .with_state(shared.clone());
    tracing::info!(listen = %shared.config.listen, path = %shared.config.path, "WebSocket relay listening");
    let stop = shared.stop.clone();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        // A bounded kernel buffer per client: a client that stops reading is noticed after
        // this much (and its queue) rather than after megabytes.
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SOCKET_SEND_BUFFER);
    });
    lane.status().healthy();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    while let Some(batch) = queue.recv().await {
        for event in &batch.events {
            // Event JSON is UTF-8 (serde_json wrote it); converting once shares it among clients.
            let text = String::from_utf8_lossy(&event.json).into_owned();
            shared
                .hub
                .publish(&event.channel, event.id, Utf8Bytes::from(text));
        }
        lane.ack(&batch);
    }
    shared.stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => Err(SinkError {
            sink: NAME,
            message: format!("serving: {e}"),
        }),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct Params {
    token: Option<String>,
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    ws: WebSocketUpgrade,
) -> Response {
    let config = &shared.config;
    if let Some(origin) = headers.get(header::ORIGIN)
        && !config.allowed_origins.is_empty()
        && !config
            .allowed_origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes())
    {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let grants = match config.auth.grants(params.token.as_deref().or(bearer)) {
        Ok(g) => g,
        Err(why) => return (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response(),
    };
    if shared.connections.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    }
    let guard = Connected::new(shared.clone());
    ws.read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(TRANSPORT_MAX_MESSAGE.max(config.max_message_bytes))
        .max_frame_size(TRANSPORT_MAX_MESSAGE.max(config.max_message_bytes))
        .on_upgrade(move |socket| async move {
            serve_client(socket, grants, &guard.0).await;
            drop(guard);
        })
}

/// Counts a connection (already added to `connections`) until dropped.
struct Connected(Arc<Shared>);

impl Connected {
    fn new(shared: Arc<Shared>) -> Connected {
        shared.clients.increment(1.0);
        Connected(shared)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.clients.decrement(1.0);
    }
}

#[derive(Deserialize)]
struct Request {
    op: String,
    channel: Option<String>,
    since: Option<String>,
}

fn control(op: &str, channel: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({ "op": op, "channel": channel }).to_string())
}

fn error(channel: Option<&str>, code: &str, message: &str) -> Message {
    Message::Text(Utf8Bytes::from(
        json!({ "op": "error", "channel": channel, "code": code, "message": message }).to_string(),
    ))
}

async fn serve_client(mut socket: WebSocket, grants: Grants, shared: &Shared) {
    let config = &shared.config;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (client, mut frames) = Client::new(id, config.client_queue);
    let mut channels: HashSet<String> = HashSet::new();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // A write that takes this long means the client stopped reading.
    let write_timeout = config.ping_interval * 2;
    // Created once: polling a registered future is cheaper than registering one per frame.
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    let closing = loop {
        let outgoing = tokio::select! {
            biased;
            _ = &mut stop => break Some((CLOSE_GOING_AWAY, "pglive is stopping")),
            frame = frames.recv() => match frame {
                Some(_) if client.take_overflow() => {
                    // Too slow: drop what is queued and tell it to refetch every channel.
                    while frames.try_recv().is_ok() {}
                    let mut names: Vec<&String> = channels.iter().collect();
                    names.sort();
                    names.into_iter().map(|c| Message::Text(control("resync", c))).collect()
                }
                Some(f) => {
                    // Whatever else is queued goes out in the same write.
                    let mut out = vec![Message::Text(f)];
                    while out.len() < WRITE_BATCH {
                        match frames.try_recv() {
                            Ok(f) => out.push(Message::Text(f)),
                            Err(_) => break,
                        }
                    }
                    out
                }
                None => break None,
            },
            incoming = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) if text.len() > config.max_message_bytes => {
                        break Some((CLOSE_TOO_BIG, "message too big"));
                    }
                    Some(Ok(Message::Text(text))) => match handle(&text, &grants, &client, &mut channels, shared) {
                        Some(reply) => vec![reply],
                        None => continue,
                    },
                    Some(Ok(Message::Binary(_))) => vec![error(None, "bad_request", "send text frames")],
                    Some(Ok(_)) => continue, // ping (answered by the library) or pong
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.ping_interval * 2 {
                    break Some((CLOSE_UNRESPONSIVE, "no pong"));
                }
                vec![Message::Ping(Default::default())]
            }
        };
        let write = async {
            for message in outgoing {
                socket.feed(message).await?;
            }
            socket.flush().await
        };
        if !matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(()))) {
            break None;
        }
    };
    shared.hub.leave(id, &channels);
    if let Some((code, reason)) = closing {
        tracing::debug!(client = id, code, reason, "closing a WebSocket client");
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
        // Let the client answer the close, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Handles one client request; returns a direct reply (errors), if any. Replies that must be
/// ordered with events (`subscribed`, replays, `resync`) go through the client's queue.
fn handle(
    text: &str,
    grants: &Grants,
    client: &Arc<Client>,
    channels: &mut HashSet<String>,
    shared: &Shared,
) -> Option<Message> {
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(_) => {
            return Some(error(
                None,
                "bad_request",
                r#"expected {"op":"subscribe"|"unsubscribe","channel":"…"}"#,
            ));
        }
    };
    let Some(channel) = request.channel.as_deref() else {
        return Some(error(None, "bad_request", "`channel` is required"));
    };
    match request.op.as_str() {
        "subscribe" => {
            if !grants.allows(channel) {
                return Some(error(
                    Some(channel),
                    "forbidden",
                    "the token does not allow this channel",
                ));
            }
            let since = match request.since.as_deref().map(str::parse::<EventId>) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => {
                    return Some(error(
                        Some(channel),
                        "bad_request",
                        "`since` must be an event's meta.id",
                    ));
                }
            };
            if channels.contains(channel) {
                // Subscribing again (a resume on the same socket): start over.
                shared.hub.unsubscribe(client.id, channel);
            }
            channels.insert(channel.to_owned());
            shared.hub.subscribe(
                client,
                channel,
                since,
                control("subscribed", channel),
                control("resync", channel),
            );
            None
        }
        "unsubscribe" => {
            shared.hub.unsubscribe(client.id, channel);
            channels.remove(channel);
            None
        }
        other => Some(error(
            Some(channel),
            "bad_request",
            &format!("unknown op {other:?}; use subscribe or unsubscribe"),
        )),
    }
}
