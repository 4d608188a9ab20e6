//! The Redis sink: each event to Redis, in one of two modes, and a batch acknowledged only when
//! Redis has answered every command of it.
//!
//! - `stream`: `XADD <key> MAXLEN ~ <max_len> * event <LiveEvent JSON> id <meta.id>`, the key
//!   per channel (`pglive:{channel}`) or one fixed key. Entry IDs are Redis's own (time-based),
//!   so XRANGE by time and MINID trimming work; an entry sent again after a failure is a second
//!   entry with the same `id` field, which consumers skip.
//! - `socketio`: the Socket.IO Redis emitter protocol ([`emitter`]): a PUBLISH per event that
//!   every Socket.IO server running the classic `@socket.io/redis-adapter` receives and emits to
//!   the room named by the channel. PUBLISH answers how many subscribers got the message: with
//!   `require_subscribers`, none is a retryable failure (the message reached nobody), so events
//!   wait in the slot while no Socket.IO server listens.
//!
//! Each batch is one MULTI/EXEC transaction, and the next batch goes out only once Redis has
//! answered it. A write Redis refuses while queueing (such as OOM under maxmemory) aborts the
//! whole transaction; one that fails inside EXEC (a key of another type) leaves the commands
//! before it applied, and the batch is sent again whole: repeats, never a gap. Batches are not
//! pipelined on purpose: Redis runs every transaction it has received, so a later batch already
//! on the wire would land before an earlier one that failed and is sent again. A lost
//! connection, a timeout or a busy server is retried with the
//! driver's backoff, sending every unacknowledged batch again; refused credentials or
//! permissions, or a key of another type, stop pglive.

pub mod emitter;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};

use super::{Batch, Delivery, Sink, SinkError, delivered};
use crate::event::LiveEvent;
use crate::sink::template::{self, Field, Part};

pub const NAME: &str = "redis";
/// How long a connection attempt, or an answer to a batch, may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEY: &str = "pglive:{channel}";
/// Entries a stream keeps (about: trimming is approximate, which is cheaper): enough history
/// for consumers that were away for a while, bounded memory.
pub const DEFAULT_MAX_LEN: u64 = 100_000;
pub const DEFAULT_CHANNEL_PREFIX: &str = "socket.io";
pub const DEFAULT_NAMESPACE: &str = "/";
/// Batches awaiting their answers at once: one, so that a failed batch is sent again before
/// any later one reaches Redis (see the module's documentation).
const MAX_IN_FLIGHT: usize = 1;

/// A Redis URL: the full text (with its password) for connecting, and a redacted form for
/// messages.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    full: String,
    shown: String,
}

impl RedisUrl {
    /// Parses `redis://[user[:password]@]host[:port][/db]` (or `rediss://` for TLS), with the
    /// password replaced by `password` when given (read from `password_file`). Errors never
    /// quote the URL.
    pub fn parse(text: &str, password: Option<&str>) -> Result<RedisUrl, String> {
        let hint = crate::source::conninfo::percent_hint("password_file");
        let mut url = url::Url::parse(text)
            .map_err(|e| format!("not a valid redis:// or rediss:// URL ({e}); {hint}"))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(format!(
                "scheme {:?} is not supported; use redis:// or rediss://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            // Either may be the tail of an unencoded password: never shown.
            return Err(format!(
                "the URL has a ?query or #fragment, which pglive does not take; {hint}"
            ));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!(
                "the path must be a database number (/0, /1, …); {hint}"
            ));
        }
        if let Some(pw) = password {
            url.set_password(Some(pw))
                .map_err(|()| "cannot set a password on this URL".to_owned())?;
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("********"));
        }
        Ok(RedisUrl {
            full: url.into(),
            shown: shown.into(),
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)
    }
}

/// A stream key, or a key template with `{channel}`, `{schema}` and `{table}` in it (their
/// values as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate(Vec<Part>);

impl KeyTemplate {
    pub fn parse(text: &str) -> Result<KeyTemplate, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let fields = [Field::Channel, Field::Schema, Field::Table];
        Ok(KeyTemplate(template::parse(text, &fields)?))
    }

    /// The key, when it is the same for every event.
    pub fn fixed(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Part::Text(key)] => Some(key),
            _ => None,
        }
    }

    /// The key of `event`, into `out` (cleared first).
    pub fn render(&self, out: &mut String, event: &LiveEvent) {
        out.clear();
        for part in &self.0 {
            out.push_str(match part {
                Part::Text(t) => t,
                Part::Field(Field::Channel) => &event.channel,
                Part::Field(Field::Schema) => &event.schema,
                Part::Field(Field::Table) => &event.table,
                Part::Field(Field::Type) => event.kind.as_str(),
            });
        }
    }
}

/// What the sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// XADD to a stream per key.
    Stream {
        key: KeyTemplate,
        /// Trim each stream to about this many entries; none: never trim.
        max_len: Option<u64>,
    },
    /// PUBLISH in the Socket.IO emitter protocol.
    SocketIo(SocketIo),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketIo {
    /// The adapter's `key` option: channels are `<channel_prefix>#<namespace>#<room>#`.
    pub channel_prefix: String,
    /// Starts with `/`.
    pub namespace: String,
    /// The room is this followed by the event's channel.
    pub room_prefix: String,
    /// The Socket.IO event name; none: the event's `type`.
    pub event: Option<String>,
    /// A PUBLISH no subscriber received fails (retryable) rather than counts as delivered.
    pub require_subscribers: bool,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Stream { .. } => "stream",
            Mode::SocketIo(_) => "socketio",
        }
    }
}

/// A resolved `[[sinks]] type = "redis"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSinkConfig {
    pub url: RedisUrl,
    pub mode: Mode,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

/// Why an attempt failed.
enum Failure {
    Fatal(String),
    Retry(String),
}

/// Writes each batch as one transaction on one multiplexed connection (see the module docs).
pub struct RedisSink {
    config: Arc<RedisSinkConfig>,
    conn: Option<MultiplexedConnection>,
    /// Reused for each event's key and message.
    key: String,
    message: Vec<u8>,
}

impl RedisSink {
    pub fn new(config: RedisSinkConfig) -> RedisSink {
        RedisSink {
            config: Arc::new(config),
            conn: None,
            key: String::new(),
            message: Vec::new(),
        }
    }

    /// The transaction that writes `batch`.
    fn transaction(&mut self, batch: &Batch) -> Result<redis::Pipeline, Failure> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in &batch.events {
            target(&self.config.mode, event, &mut self.key);
            match &self.config.mode {
                Mode::Stream { max_len, .. } => {
                    let cmd = pipe.cmd("XADD").arg(&self.key);
                    if let Some(n) = max_len {
                        cmd.arg("MAXLEN").arg("~").arg(*n);
                    }
                    cmd.arg("*")
                        .arg("event")
                        .arg(&*event.json)
                        .arg("id")
                        .arg(event.id.to_string());
                }
                Mode::SocketIo(sio) => {
                    let name = sio.event.as_deref().unwrap_or(event.kind.as_str());
                    let room = [sio.room_prefix.as_str(), &event.channel];
                    emitter::message(&mut self.message, name, &event.json, &sio.namespace, room)
                        .map_err(|e| Failure::Fatal(format!("event {}: {e}", event.id)))?;
                    pipe.cmd("PUBLISH").arg(&self.key).arg(&self.message);
                }
            }
        }
        Ok(pipe)
    }
}

/// The key (stream mode) or the channel (socketio mode) of `event`, into `out`.
fn target(mode: &Mode, event: &LiveEvent, out: &mut String) {
    match mode {
        Mode::Stream { key, .. } => key.render(out, event),
        Mode::SocketIo(sio) => emitter::channel(
            out,
            &sio.channel_prefix,
            &sio.namespace,
            &sio.room_prefix,
            &event.channel,
        ),
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        self.conn = None;
        let conn = open(&self.config)
            .await
            .map_err(|f| error(&self.config.url, f))?;
        tracing::info!(redis = %self.config.url, mode = self.config.mode.name(), "publishing to Redis");
        self.conn = Some(conn);
        Ok(())
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        if batch.events.is_empty() {
            return Ok(delivered());
        }
        let Some(mut conn) = self.conn.clone() else {
            return Err(SinkError::retryable(NAME, "not connected"));
        };
        let pipe = self
            .transaction(&batch)
            .map_err(|f| error(&self.config.url, f))?;
        let n = batch.events.len();
        let config = self.config.clone();
        let mut answer = Box::pin(async move {
            let answer = conn.send_packed_commands(&pipe, n + 1, 1).await;
            judge(&config, &batch, answer).map_err(|f| error(&config.url, f))
        });
        // Hand the transaction to the connection now, so that transactions reach Redis in the
        // order of their batches whatever order their deliveries are polled in: the first poll
        // puts it in the connection's request queue (or, were the queue full, in line for it:
        // a tokio channel serves waiting senders in order).
        let first = std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await;
        Ok(match first {
            Poll::Ready(result) => Box::pin(std::future::ready(result)),
            Poll::Pending => answer,
        })
    }

    fn max_in_flight(&self) -> usize {
        MAX_IN_FLIGHT
    }

    fn max_backoff(&self) -> Duration {
        self.config.max_backoff
    }

    fn interrupted(&self) -> &'static str {
        "Redis delivery interrupted; will send unacknowledged events again"
    }
}

fn error(url: &RedisUrl, failure: Failure) -> SinkError {
    match failure {
        Failure::Fatal(m) => SinkError::fatal(NAME, format!("{url}: {m}")),
        Failure::Retry(m) => SinkError::retryable(NAME, format!("{url}: {m}")),
    }
}

/// Connects, authenticates and selects the database (the URL's), and checks with a PING that
/// commands are allowed.
async fn open(config: &RedisSinkConfig) -> Result<MultiplexedConnection, Failure> {
    let client = redis::Client::open(config.url.full.as_str())
        .map_err(|e| Failure::Fatal(format!("the URL is not usable: {e}")))?;
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .map_err(|e| classify(&e, "connect"))?;
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| classify(&e, "PING"))?;
    Ok(conn)
}

/// Checks Redis's answer to a batch's transaction: every command succeeded (and, with
/// `require_subscribers`, every PUBLISH reached a subscriber).
fn judge(
    config: &RedisSinkConfig,
    batch: &Batch,
    answer: Result<Vec<Value>, RedisError>,
) -> Result<(), Failure> {
    let what = |i: usize| match batch.events.get(i) {
        Some(event) => what(&config.mode, event),
        None => "a command".to_owned(),
    };
    let replies = match answer {
        Ok(mut values) if values.len() == 1 => match values.pop() {
            Some(Value::Array(replies)) if replies.len() == batch.events.len() => replies,
            other => {
                return Err(Failure::Retry(format!(
                    "unexpected answer to the transaction: {other:?}"
                )));
            }
        },
        Ok(values) => {
            return Err(Failure::Retry(format!(
                "unexpected answer to the transaction: {values:?}"
            )));
        }
        Err(e) => {
            // Refused while queued: the whole transaction was discarded.
            return Err(match e.clone().into_server_errors() {
                Some(errors) => match errors.first() {
                    Some((i, first)) => {
                        refused(first.code(), format!("{} refused: {first}", what(*i)))
                    }
                    None => classify(&e, "run the transaction"),
                },
                None => classify(&e, "send the batch"),
            });
        }
    };
    for (i, reply) in replies.into_iter().enumerate() {
        match reply {
            Value::ServerError(e) => {
                return Err(refused(e.code(), format!("{} refused: {e}", what(i))));
            }
            Value::Int(0) if is_required(config) => {
                return Err(Failure::Retry(format!(
                    "no Socket.IO server subscribes: {} reached nobody; events wait until one does (or set require_subscribers = false to drop them then)",
                    what(i)
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_required(config: &RedisSinkConfig) -> bool {
    matches!(&config.mode, Mode::SocketIo(s) if s.require_subscribers)
}

/// The command that wrote `event`, for messages.
fn what(mode: &Mode, event: &LiveEvent) -> String {
    let mut at = String::new();
    target(mode, event, &mut at);
    match mode {
        Mode::Stream { .. } => format!("XADD of event {} to key {at:?}", event.id),
        Mode::SocketIo(_) => format!("PUBLISH of event {} to {at:?}", event.id),
    }
}

/// Sorts what Redis refused by its error code: busy or out of memory for now, or a problem
/// only the operator can fix. `text` says what was refused and why.
fn refused(code: &str, text: String) -> Failure {
    match code {
        "OOM" | "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN"
        | "MISCONF" => Failure::Retry(text),
        "WRONGTYPE" => Failure::Fatal(format!(
            "{text} — the key holds another type of value: delete or rename it, or set another key"
        )),
        "NOAUTH" | "WRONGPASS" | "NOPERM" => Failure::Fatal(format!(
            "{text} — check the user and password in the URL (or password_file) and the user's ACL: it needs {}",
            "XADD (stream mode) or PUBLISH (socketio mode) on the keys or channels"
        )),
        "MOVED" | "ASK" | "CROSSSLOT" => Failure::Fatal(format!(
            "{text} — Redis Cluster is not supported: point the URL at a single Redis server"
        )),
        _ => Failure::Fatal(text),
    }
}

/// Sorts an error of the connection or of a command.
fn classify(e: &RedisError, doing: &str) -> Failure {
    let what = format!("cannot {doing}: {e}");
    if let Some(code) = e.code() {
        return refused(code, what);
    }
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => Failure::Fatal(format!(
            "{what} — check the user and password in the URL (or password_file)"
        )),
        redis::ErrorKind::InvalidClientConfig => Failure::Fatal(what),
        _ => Failure::Retry(what),
    }
}

/// What `pglive check` finds: whether Redis takes the URL's credentials, and (stream mode,
/// fixed key) whether the key is a stream or absent, or (socketio mode) how many pattern
/// subscriptions the server has. Ok: what was found, and a warning if any.
pub async fn probe(config: &RedisSinkConfig) -> Result<(String, Option<String>), String> {
    let message = |f: Failure| match f {
        Failure::Fatal(m) | Failure::Retry(m) => m,
    };
    let mut conn = open(config).await.map_err(message)?;
    match &config.mode {
        Mode::Stream { key, .. } => {
            let Some(key) = key.fixed() else {
                return Ok(("authenticated; stream keys per channel".into(), None));
            };
            let kind: String = redis::cmd("TYPE")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| message(classify(&e, "TYPE")))?;
            match kind.as_str() {
                "stream" => Ok((format!("authenticated; stream {key:?} exists"), None)),
                "none" => Ok((
                    format!("authenticated; stream {key:?} will be created"),
                    None,
                )),
                other => Err(format!(
                    "key {key:?} holds a {other}, not a stream: XADD would fail"
                )),
            }
        }
        Mode::SocketIo(sio) => {
            let patterns: u64 = redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query_async(&mut conn)
                .await
                .map_err(|e| message(classify(&e, "PUBSUB NUMPAT")))?;
            let found = format!(
                "authenticated; {patterns} pattern subscription(s) on the server (each Socket.IO server with the Redis adapter holds one; other clients' patterns count too)"
            );
            let warning = (patterns == 0).then(|| match sio.require_subscribers {
                true => "no Socket.IO server listens: events will wait until one does; start the Socket.IO servers with @socket.io/redis-adapter".to_owned(),
                false => "no Socket.IO server listens: events published now reach nobody (require_subscribers = false)".to_owned(),
            });
            Ok((found, warning))
        }
    }
}

#[cfg(test)]
mod tests;
