//! The WebSocket relay: browsers connect to pglive itself, subscribe to channels, and receive
//! every event of those channels, one LiveEvent JSON object per text frame. Events come in
//! as a sink's batches ([`WebSocketSink`], in `pglive run`) or, on a relay node, one by one
//! from a RabbitMQ stream ([`Feed`]); the hub, protocol and limits are the same.
//!
//! Protocol (text frames, JSON):
//! - client → `{"op":"subscribe","channel":C}` (optionally `"since":"<meta.id>"`),
//!   `{"op":"unsubscribe","channel":C}`, `{"op":"auth","token":T}` (a fresh token before the
//!   current one expires);
//! - server → `{"op":"subscribed","channel":C}`, then the events replayed after `since` (or
//!   `{"op":"resync","channel":C}` when they are no longer held), then live events;
//!   `{"op":"authenticated","expires":…}` for a renewed token;
//!   `{"op":"error","channel":C,"code":…,"message":…}` for a refused request.
//!
//! Control frames carry `"op"`; event frames never do. The relay is best-effort: a batch is
//! acknowledged once handed to the clients' queues, and a client that cannot keep up is told
//! to resync rather than slowing anyone down. What one client can hold is bounded: its
//! connection (the listener's cap, counted before authentication), its subscriptions (only
//! channels a mapped table publishes to — fixed, or one a channel template can render — at
//! most `max_subscriptions`), its queue, and its
//! token's lifetime (closed at `exp` unless renewed in-band).

pub mod auth;
mod hub;

use std::collections::HashSet;

use crate::map::channel::ChannelSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Access, Auth, Grants, Refused};
use hub::{Client, Hub};

use super::{Batch, Delivery, Sink, SinkError, delivered};
use crate::event::EventId;
use crate::http::{self, Slot};
use crate::shutdown::CLOSE_HANDSHAKE_STEP;

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
/// Open TCP connections at most, counted from `accept`: WebSocket clients and requests not
/// yet authenticated alike.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Channels one connection may be subscribed to at once: far more than a Refine page
/// subscribes to, and small enough that no client holds much of the relay.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// Longest channel name: the relay refuses longer ones before looking them up, and a mapped
/// table's channel may not be longer.
pub const MAX_CHANNEL_BYTES: usize = 255;
/// Close code sent when pglive stops (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that answered no ping within two intervals, or took no data for as
/// long, and for one whose token expired (RFC 6455 "policy violation").
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a client message over `max_message_bytes` (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// What the WebSocket layer itself buffers of one message: twice `max_message_bytes` (at least
/// this much), so that a message somewhat over the limit gets a close frame with a reason, and a
/// far larger one drops the connection without pglive holding it.
const TRANSPORT_MIN_MESSAGE: usize = 8 * 1024;

/// A resolved `[[sinks]] type = "websocket"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSinkConfig {
    pub listen: SocketAddr,
    pub path: String,
    pub auth: Auth,
    /// `Origin` values accepted from browsers; empty: any. Requests without `Origin` (not from
    /// a browser) are accepted.
    pub allowed_origins: Vec<String>,
    /// The channels mapped tables publish to (templates as written): the only ones a client
    /// may subscribe to.
    pub channels: Vec<String>,
    /// Events kept per channel for `since`, and for how long.
    pub history: usize,
    pub history_age: Duration,
    /// Frames queued per client before it is told to resync.
    pub client_queue: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
}

struct Shared {
    config: WsSinkConfig,
    channels: ChannelSet,
    hub: Hub,
    /// `pglive_websocket_clients`.
    clients: metrics::Gauge,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// Every client's task, so that stopping waits for their close handshakes.
    sessions: TaskTracker,
}

/// The relay: its hub of channels and clients, the sink that publishes into it, and its
/// server, which `app` starts on a listener it bound.
pub struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    /// `label`: the sink's metric label; `stop`: when to close every connection.
    pub fn new(config: WsSinkConfig, label: &str, stop: CancellationToken) -> Relay {
        Relay::with_hub(config, label, stop, true)
    }

    /// A relay node's relay: its hub is catching up with the stream until
    /// [`Feed::caught_up`].
    pub fn catching_up(config: WsSinkConfig, label: &str, stop: CancellationToken) -> Relay {
        Relay::with_hub(config, label, stop, false)
    }

    fn with_hub(
        config: WsSinkConfig,
        label: &str,
        stop: CancellationToken,
        complete: bool,
    ) -> Relay {
        Relay {
            shared: Arc::new(Shared {
                hub: Hub::new(config.history, config.history_age, complete),
                channels: ChannelSet::new(config.channels.iter().map(String::as_str)),
                config,
                clients: metrics::gauge!(crate::status::metric::WEBSOCKET_CLIENTS, "sink" => label.to_owned()),
                next_id: AtomicU64::new(1),
                stop,
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// What a relay node publishes the events it reads into.
    pub fn feed(&self) -> Feed {
        Feed {
            shared: self.shared.clone(),
        }
    }

    /// The sink that publishes every event into the hub.
    pub fn sink(&self) -> WebSocketSink {
        WebSocketSink {
            shared: self.shared.clone(),
        }
    }

    /// Serves clients on `listener` until the relay's `stop`, then closes every connection
    /// (close code 1001) and waits, at most `close_within`, for their close handshakes.
    pub async fn serve(self, listener: tokio::net::TcpListener, close_within: Duration) {
        let shared = self.shared;
        let app = axum::Router::new()
            .route(&shared.config.path, get(upgrade))
            .with_state(shared.clone());
        let listen = listener.local_addr().unwrap_or(shared.config.listen);
        tracing::info!(%listen, path = %shared.config.path, "WebSocket relay listening");
        let limits = http::Limits {
            max_connections: shared.config.max_connections,
            header_timeout: shared.config.header_timeout,
        };
        let server = http::serve(listener, app, limits, NAME, shared.stop.clone(), |tcp| {
            let _ = tcp.set_nodelay(true);
            // A bounded kernel buffer per client: a client that stops reading is noticed
            // after this much (and its queue) rather than after megabytes.
            let _ = socket2::SockRef::from(tcp).set_send_buffer_size(SOCKET_SEND_BUFFER);
        });
        tokio::pin!(server);
        // Channels nobody reads keep their history only as long as it could serve a `since`.
        let mut sweep =
            tokio::time::interval(shared.config.history_age.max(Duration::from_secs(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Subscribers resuming from an event that never came are told to refetch.
        let mut waits = tokio::time::interval(Duration::from_secs(1));
        waits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The accept loop runs until `shared.stop`.
        let mut serving = true;
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = &mut server, if serving => serving = false,
                _ = sweep.tick() => shared.hub.sweep(),
                _ = waits.tick() => shared.hub.give_up_waiting(|c| control("resync", c)),
            }
        }
        // The accept loop ends at once; what it waits for are requests still being read, and
        // each client's close handshake.
        shared.sessions.close();
        let _ = tokio::time::timeout(close_within, async {
            if serving {
                (&mut server).await;
            }
            shared.sessions.wait().await;
        })
        .await;
    }
}

/// Publishes events a relay node reads into its hub.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    /// Publishes one event (its JSON text) on `channel`; `at`: when it was published
    /// upstream, from which its history ages.
    pub fn publish(&self, channel: &str, id: EventId, json: String, at: std::time::Instant) {
        self.shared
            .hub
            .publish_at(channel, id, Utf8Bytes::from(json), at);
    }

    /// The node has read the stream up to where it stood: a `since` not seen by now (and not
    /// newer than everything seen) will not come.
    pub fn caught_up(&self) {
        self.shared.hub.caught_up();
    }

    /// The stream no longer holds what follows the node's last event (retention dropped it, or
    /// the stream was recreated): every client is told to refetch, and the history goes.
    pub fn gap(&self) {
        self.shared.hub.resync_all(|c| control("resync", c));
    }

    /// Whether a client may subscribe to `channel`: the node passes only those on.
    pub fn serves(&self, channel: &str) -> bool {
        self.shared.channels.contains(channel)
    }
}

/// Publishes every batch into the relay's hub: delivered once handed to the clients' queues.
pub struct WebSocketSink {
    shared: Arc<Shared>,
}

impl Sink for WebSocketSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        for event in &batch.events {
            // Event JSON is UTF-8 (serde_json wrote it); converting once shares it among
            // clients.
            let text = String::from_utf8_lossy(&event.json).into_owned();
            self.shared
                .hub
                .publish(&event.channel, event.id, Utf8Bytes::from(text));
        }
        Ok(delivered())
    }
}

#[derive(Deserialize)]
struct Params {
    token: Option<String>,
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(slot): Extension<Slot>,
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
    let access = match config.auth.authorize(params.token.as_deref().or(bearer)) {
        Ok(a) => a,
        Err(why) => {
            why.log();
            return (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
        }
    };
    let guard = Connected::new(shared.clone());
    // Counted from here, before the upgrade completes, so that a stop meanwhile still waits
    // for this client's close handshake.
    let session = shared.sessions.token();
    let transport_max = config
        .max_message_bytes
        .saturating_mul(2)
        .max(TRANSPORT_MIN_MESSAGE);
    ws.read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(transport_max)
        .max_frame_size(transport_max)
        .on_upgrade(move |socket| async move {
            serve_client(socket, access, &guard.0).await;
            drop(guard);
            // The connection's place under the listener's cap is free from here.
            drop(slot);
            drop(session);
        })
}

/// Counts a connected client until dropped.
struct Connected(Arc<Shared>);

impl Connected {
    fn new(shared: Arc<Shared>) -> Connected {
        shared.clients.increment(1.0);
        Connected(shared)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.clients.decrement(1.0);
    }
}

#[derive(Deserialize)]
struct Request {
    op: String,
    channel: Option<String>,
    since: Option<String>,
    token: Option<String>,
}

fn control(op: &str, channel: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({ "op": op, "channel": channel }).to_string())
}

fn error(channel: Option<&str>, code: &str, message: &str) -> Message {
    Message::Text(Utf8Bytes::from(
        json!({ "op": "error", "channel": channel, "code": code, "message": message }).to_string(),
    ))
}

/// One client's state in its task.
struct Session {
    client: Arc<Client>,
    access: Access,
    channels: HashSet<String>,
}

/// When a token that stops being accepted at `expires` must be refused on an open socket.
fn deadline(expires: Option<SystemTime>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match expires {
        Some(at) => now + at.duration_since(SystemTime::now()).unwrap_or_default(),
        // Never: far enough ahead for any process, near enough for the timer.
        None => now + Duration::from_secs(86_400 * 365),
    }
}

async fn serve_client(mut socket: WebSocket, access: Access, shared: &Shared) {
    let config = &shared.config;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (client, mut frames) = Client::new(id, config.client_queue);
    let expiry = tokio::time::sleep_until(deadline(access.expires));
    tokio::pin!(expiry);
    let mut session = Session {
        client,
        access,
        channels: HashSet::new(),
    };
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // A write that takes this long means the client stopped reading.
    let write_timeout = config.ping_interval * 2;
    // The client's own token: polling the shared one would lock its mutex (and its waiter
    // list's) for every frame of every client. Created once: polling a registered future is
    // cheaper than registering one per frame.
    let stop = shared.stop.child_token();
    let stop = stop.cancelled();
    tokio::pin!(stop);
    let mut outgoing = Vec::new();
    let closing = loop {
        outgoing.clear();
        tokio::select! {
            biased;
            _ = &mut stop => break Some((CLOSE_GOING_AWAY, "pglive is stopping")),
            _ = &mut expiry => break Some((CLOSE_POLICY, "token expired")),
            frame = frames.recv() => match frame {
                Some(first) => queued(first, &mut frames, &session, &mut outgoing),
                None => break None,
            },
            incoming = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) if text.len() > config.max_message_bytes => {
                        break Some((CLOSE_TOO_BIG, "message too big"));
                    }
                    Some(Ok(Message::Text(text))) => {
                        let expires = session.access.expires;
                        outgoing = handle(&text, &mut session, shared);
                        if session.access.expires != expires {
                            expiry.as_mut().reset(deadline(session.access.expires));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => outgoing.push(error(None, "bad_request", "send text frames")),
                    Some(Ok(_)) => {} // ping (answered by the library) or pong
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.ping_interval * 2 {
                    break Some((CLOSE_POLICY, "no pong"));
                }
                outgoing.push(Message::Ping(Default::default()));
            }
        };
        if !outgoing.is_empty() && !write(&mut socket, &mut outgoing, write_timeout).await {
            break None;
        }
    };
    shared.hub.leave(id, &session.channels);
    if let Some((code, reason)) = closing {
        tracing::debug!(client = id, code, reason, "closing a WebSocket client");
        close(socket, code, reason).await;
    }
}

/// Puts the frames to write now into `out`: `first` and whatever else is queued, or, for a
/// client that fell too far behind, `resync` for each of its channels instead.
fn queued(
    first: Utf8Bytes,
    frames: &mut tokio::sync::mpsc::Receiver<Utf8Bytes>,
    session: &Session,
    out: &mut Vec<Message>,
) {
    if session.client.take_overflow() {
        // Too slow: drop what is queued and tell it to refetch every channel.
        while frames.try_recv().is_ok() {}
        let mut names: Vec<&String> = session.channels.iter().collect();
        names.sort();
        out.extend(
            names
                .into_iter()
                .map(|c| Message::Text(control("resync", c))),
        );
        return;
    }
    // Whatever else is queued goes out in the same write.
    out.push(Message::Text(first));
    while out.len() < WRITE_BATCH {
        match frames.try_recv() {
            Ok(f) => out.push(Message::Text(f)),
            Err(_) => break,
        }
    }
}

/// Writes `out` (emptying it) and flushes; false if the client is gone or took longer than
/// `within`. The timer starts only for a write the socket did not take at once: arming one
/// per frame would cost every client a timer-wheel insertion and removal per event.
async fn write(socket: &mut WebSocket, out: &mut Vec<Message>, within: Duration) -> bool {
    let write = async {
        for message in out.drain(..) {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    tokio::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(written) => written.is_ok(),
        Poll::Pending => {
            matches!(tokio::time::timeout(within, write).await, Ok(Ok(())))
        }
    }
}

/// Sends a close frame and lets the client answer it, briefly.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        CLOSE_HANDSHAKE_STEP,
        socket.send(Message::Close(Some(frame))),
    )
    .await;
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_STEP, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Handles one client request; returns its direct replies (errors, `authenticated`). Replies
/// that must be ordered with events (`subscribed`, replays, `resync`) go through the client's
/// queue.
fn handle(text: &str, session: &mut Session, shared: &Shared) -> Vec<Message> {
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(_) => {
            return vec![error(
                None,
                "bad_request",
                r#"expected {"op":"subscribe"|"unsubscribe","channel":"…"} or {"op":"auth","token":"…"}"#,
            )];
        }
    };
    if request.op == "auth" {
        return renew(request.token.as_deref(), session, shared);
    }
    let Some(channel) = request.channel.as_deref() else {
        return vec![error(None, "bad_request", "`channel` is required")];
    };
    match request.op.as_str() {
        "subscribe" => match subscribe(channel, request.since.as_deref(), session, shared) {
            Ok(()) => vec![],
            Err((code, message)) => vec![error(Some(channel), code, &message)],
        },
        "unsubscribe" => {
            if session.channels.remove(channel) {
                shared.hub.unsubscribe(session.client.id, channel);
            }
            vec![]
        }
        other => vec![error(
            Some(channel),
            "bad_request",
            &format!("unknown op {other:?}; use subscribe, unsubscribe or auth"),
        )],
    }
}

/// Subscribes, or says why not: the checks that bound what one client can hold come first.
fn subscribe(
    channel: &str,
    since: Option<&str>,
    session: &mut Session,
    shared: &Shared,
) -> Result<(), (&'static str, String)> {
    let config = &shared.config;
    if channel.len() > MAX_CHANNEL_BYTES {
        return Err((
            "bad_request",
            format!("channel names are at most {MAX_CHANNEL_BYTES} bytes"),
        ));
    }
    if !session.access.grants.allows(channel) {
        return Err((
            "forbidden",
            "the token does not allow this channel".to_owned(),
        ));
    }
    if !shared.channels.contains(channel) {
        return Err((
            "unknown_channel",
            "no mapped table publishes to this channel".to_owned(),
        ));
    }
    let since = match since.map(str::parse::<EventId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err((
                "bad_request",
                "`since` must be an event's meta.id".to_owned(),
            ));
        }
    };
    if session.channels.contains(channel) {
        // Subscribing again (a resume on the same socket): start over.
        shared.hub.unsubscribe(session.client.id, channel);
    } else if session.channels.len() >= config.max_subscriptions {
        return Err((
            "too_many_subscriptions",
            format!(
                "a connection may hold {} subscriptions; unsubscribe from one first",
                config.max_subscriptions
            ),
        ));
    }
    session.channels.insert(channel.to_owned());
    shared.hub.subscribe(
        &session.client,
        channel,
        since,
        control("subscribed", channel),
        control("resync", channel),
    );
    Ok(())
}

/// `{"op":"auth"}`: a fresh token replaces the connection's access (and its expiry);
/// subscriptions the new token does not allow end with `forbidden`. A token that is refused
/// changes nothing: the current one still holds until it expires.
fn renew(token: Option<&str>, session: &mut Session, shared: &Shared) -> Vec<Message> {
    let Some(token) = token else {
        return vec![error(None, "bad_request", "`token` is required")];
    };
    let access = match shared.config.auth.authorize(Some(token)) {
        Ok(a) => a,
        Err(why) => {
            why.log();
            return vec![error(None, "unauthorized", &why.to_string())];
        }
    };
    let mut replies = Vec::new();
    let mut lost: Vec<String> = session
        .channels
        .iter()
        .filter(|c| !access.grants.allows(c))
        .cloned()
        .collect();
    lost.sort();
    for channel in lost {
        session.channels.remove(&channel);
        shared.hub.unsubscribe(session.client.id, &channel);
        replies.push(error(
            Some(&channel),
            "forbidden",
            "the renewed token does not allow this channel; unsubscribed",
        ));
    }
    let expires = access.expires.map(|at| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    });
    session.access = access;
    replies.push(Message::Text(Utf8Bytes::from(
        json!({ "op": "authenticated", "expires": expires }).to_string(),
    )));
    replies
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::*;

    fn config() -> WsSinkConfig {
        WsSinkConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            path: DEFAULT_PATH.into(),
            auth: Auth::Anonymous,
            allowed_origins: vec!["https://app.example".into()],
            channels: vec!["resources/t".into()],
            history: DEFAULT_HISTORY,
            history_age: DEFAULT_HISTORY_AGE,
            client_queue: DEFAULT_CLIENT_QUEUE,
            max_connections: 10,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            header_timeout: crate::http::DEFAULT_HEADER_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn meets_the_sink_contract_for_a_subscribed_client() {
        let stop = CancellationToken::new();
        let relay = Relay::new(config(), "websocket", stop.clone());
        let sink = relay.sink();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}{DEFAULT_PATH}", listener.local_addr().unwrap());
        let server = tokio::spawn(relay.serve(listener, Duration::from_secs(1)));
        let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let subscribe = json!({"op": "subscribe", "channel": "resources/t"}).to_string();
        client.send(WsMessage::text(subscribe)).await.unwrap();
        let reply = client.next().await.unwrap().unwrap();
        assert!(reply.to_text().unwrap().contains("subscribed"), "{reply:?}");
        let read = async |n| {
            let mut events = Vec::new();
            while events.len() < n {
                let next = tokio::time::timeout(Duration::from_secs(10), client.next());
                let frame = next
                    .await
                    .expect("every event within 10 s")
                    .unwrap()
                    .unwrap();
                events.push(frame.into_data().to_vec());
            }
            events
        };
        crate::sink::contract::check(sink, read).await;
        stop.cancel();
        server.await.unwrap();
    }
}
