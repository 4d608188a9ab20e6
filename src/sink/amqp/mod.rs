//! The AMQP sink: publishes each event to a RabbitMQ exchange as a persistent message and
//! acknowledges a batch only when the broker has confirmed every message in it.
//!
//! Publishing is pipelined: up to `max_inflight` messages (and `max_inflight_bytes` of body)
//! wait for their confirms at once, all on one channel, so they reach each queue in commit
//! order. Confirms are taken in publish order, so a batch is acknowledged exactly when it and
//! every batch before it are confirmed: the contiguous prefix the checkpoint may advance over.
//!
//! On a lost connection or channel, a nack, or (with the default `on_reject = "retry"`) a
//! returned unroutable message, the delivery fails as retryable: the driver reconnects with
//! backoff and sends again every batch not yet acknowledged, and the sink publishes again
//! every message of them not yet confirmed, in order (the confirmed start of the oldest batch
//! is not published twice). Consumers may therefore see a message twice; `message_id` (the
//! event's `meta.id`) is the same both times.
//!
//! With `stream`, each connection also declares that stream queue (retention from the config)
//! and binds it to the exchange for every routing key: what relay nodes read. Every message
//! carries `published_ms`, from which they age their history. Relay nodes connect with
//! [`connect_to`] too.

mod routing;

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use lapin::{Event, ExchangeKind};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

pub use routing::{DEFAULT_TEMPLATE, MAX_ROUTING_KEY_BYTES, RoutingKey};

use super::{Batch, Delivery, Sink, SinkError};
use crate::checkpoint::Seq;
use crate::event::LiveEvent;
use crate::status::{SinkStatus, lock};

/// The sink's name in logs and errors.
pub const NAME: &str = "amqp";
pub const DEFAULT_EXCHANGE: &str = "pglive";
/// Messages awaiting their confirms at once: enough to keep a broker's disk batching busy.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;
/// Bytes of message bodies awaiting their confirms at once.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 16 << 20;
/// A stream's retention by age: relay nodes read at most an hour back (`history_age`).
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(3600);
/// A stream's retention by size.
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 1 << 30;
pub const MIN_STREAM_MAX_BYTES: u64 = 1 << 20;
/// The header carrying when pglive published a message (ms since 1970).
pub const PUBLISHED_HEADER: &str = "published_ms";

/// A RabbitMQ stream queue the sink declares and binds to its exchange (every routing key),
/// for relay nodes and other stream readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQueue {
    pub name: String,
    /// `x-max-age`.
    pub max_age: Duration,
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
}

impl StreamQueue {
    /// The declaration's arguments. Segments are an eighth of the size limit (at most
    /// RabbitMQ's default of 500 MB), so that retention, which drops whole segments, keeps
    /// close to the limit.
    fn arguments(&self) -> FieldTable {
        let segment = (self.max_bytes / 8).clamp(MIN_STREAM_MAX_BYTES, 500_000_000);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", self.max_age.as_secs()).into()),
        );
        let long = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        args.insert("x-max-length-bytes".into(), long(self.max_bytes));
        args.insert("x-stream-max-segment-size-bytes".into(), long(segment));
        args
    }
}

/// What to do when the broker nacks a message, or returns it as unroutable (`mandatory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReject {
    /// Stop advancing, log, and publish it again after a backoff, until it is taken.
    Retry,
    /// Log it and go on: the message is lost to this exchange, on purpose.
    Skip,
}

/// A broker URL: the full text (with its password) for connecting, and a redacted form for
/// messages.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    full: String,
    shown: String,
}

impl AmqpUrl {
    /// Parses `amqp://user:password@host:port/vhost?heartbeat=…`, with the password replaced
    /// by `password` when given (read from `password_file`). Errors never quote the URL.
    pub fn parse(text: &str, password: Option<&str>) -> Result<AmqpUrl, String> {
        // An unencoded password's special characters end the user-info part early and put the
        // rest into the port, path, query or fragment; no part of the URL is ever quoted.
        const KNOWN: &[&str] = &[
            "heartbeat",
            "frame_max",
            "channel_max",
            "connection_timeout",
            "auth_mechanism",
        ];
        let hint = crate::source::conninfo::percent_hint("password_file");
        let mut url = url::Url::parse(text)
            .map_err(|e| format!("not a valid amqp:// or amqps:// URL ({e}); {hint}"))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(format!(
                "scheme {:?} is not supported; use amqp:// or amqps://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        if url.fragment().is_some() {
            return Err(format!(
                "the URL has a #fragment, which broker URLs do not use; {hint}"
            ));
        }
        if url.path().contains('@') {
            return Err(format!(
                "the vhost contains an unencoded @ (write a real one as %40); {hint}"
            ));
        }
        // Anything else in the query may be the tail of an unencoded password: never shown.
        if url.query_pairs().any(|(k, _)| !KNOWN.contains(&k.as_ref())) {
            return Err(format!(
                "the URL has an unknown query parameter (not shown: it may be part of a password; \
                 known: {}); {hint}",
                KNOWN.join(", ")
            ));
        }
        if let Some(pw) = password {
            url.set_password(Some(pw))
                .map_err(|()| "cannot set a password on this URL".to_owned())?;
        }
        // The broker library's own parser has the last word (query parameters, vhost).
        AMQPUri::from_str(url.as_str()).map_err(|_| {
            format!(
                "the URL's query is not understood (known: {}); {hint}",
                KNOWN.join(", ")
            )
        })?;
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("********"));
        }
        Ok(AmqpUrl {
            full: url.into(),
            shown: shown.into(),
        })
    }

    /// The URL as the broker library takes it. Its own parser reads an IP address as no host
    /// at all (falling back to `localhost`), so the host is set from the URL here.
    fn uri(&self) -> AMQPUri {
        let url = url::Url::parse(&self.full).expect("validated when configured");
        let mut uri = AMQPUri::from_str(&self.full).expect("validated when configured");
        if let Some(host) = url.host_str() {
            uri.authority.host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
        }
        uri
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)
    }
}

/// A resolved `[[sinks]] type = "amqp"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpSinkConfig {
    pub url: AmqpUrl,
    pub exchange: String,
    /// Declare the exchange (durable, topic) at each connection; otherwise it must exist.
    pub declare: bool,
    pub routing_key: RoutingKey,
    /// Ask the broker to return messages no queue takes, rather than drop them.
    pub mandatory: bool,
    pub on_reject: OnReject,
    pub max_inflight: usize,
    pub max_inflight_bytes: usize,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
    /// PEM certificates to trust for `amqps://`, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// A stream queue to declare and bind at each connection.
    pub stream: Option<StreamQueue>,
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retrying cannot help (credentials, permissions, a missing exchange): stop the daemon.
    Fatal(String),
    /// The connection, channel or broker failed; reconnect and publish again.
    Retry(String),
}

/// Publishes each batch's events and delivers the batch once the broker has confirmed them
/// all.
pub struct AmqpSink {
    config: Arc<AmqpSinkConfig>,
    status: Arc<SinkStatus>,
    session: Option<Session>,
    window: Arc<Window>,
    /// How many events of which batch the broker has confirmed, as the deliveries see them:
    /// the oldest batch, sent again after a failure, skips those.
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Connected, and no batch sent yet.
    resuming: bool,
}

impl AmqpSink {
    /// `status`: where the broker's resource alarms are reported.
    pub fn new(config: AmqpSinkConfig, status: Arc<SinkStatus>) -> AmqpSink {
        AmqpSink {
            window: Arc::new(Window::new(config.max_inflight, config.max_inflight_bytes)),
            config: Arc::new(config),
            status,
            session: None,
            progress: Arc::new(Mutex::new((0, 0))),
            resuming: false,
        }
    }

    fn error(&self, failure: Failure) -> SinkError {
        match failure {
            Failure::Fatal(message) => SinkError::fatal(NAME, message),
            Failure::Retry(message) => {
                SinkError::retryable(NAME, format!("{}: {message}", self.config.url))
            }
        }
    }
}

impl Sink for AmqpSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        // A failed session's connection goes; its unconfirmed messages are published again.
        self.session = None;
        let session = Session::open(&self.config)
            .await
            .map_err(|f| self.error(f))?;
        tracing::info!(broker = %self.config.url, exchange = %self.config.exchange, "publishing to AMQP");
        self.session = Some(session);
        // The first batch sent is the oldest unacknowledged one: it may skip what the broker
        // confirmed of it before.
        self.resuming = true;
        Ok(())
    }

    fn connected(&mut self) {
        if let Some(session) = self.session.as_mut()
            && let Some(events) = session.events.take()
        {
            let watch = tokio::spawn(log_alarms(events, self.status.clone()));
            session._watch = Some(AbortOnDropHandle::new(watch));
        }
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        let Some(channel) = self.session.as_ref().map(|s| s.channel.clone()) else {
            return Err(SinkError::retryable(NAME, "not connected"));
        };
        let confirmed = match std::mem::take(&mut self.resuming) {
            true => {
                let p = lock(&self.progress);
                if p.0 == batch.seq { p.1 } else { 0 }
            }
            false => 0,
        };
        let mut publishing = Publishing {
            batch: batch.clone(),
            config: self.config.clone(),
            progress: self.progress.clone(),
            confirmed,
            pending: VecDeque::new(),
        };
        let mut key = String::new();
        for i in confirmed..batch.events.len() {
            let bytes = batch.events[i].json.len();
            // No room: wait for this batch's oldest message (earlier batches' deliveries are
            // polled meanwhile), or for the deliveries to free some.
            let permit = loop {
                let freed = self.window.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(permit) = self.window.try_take(bytes) {
                    break permit;
                }
                if publishing.pending.is_empty() {
                    freed.await;
                } else {
                    publishing
                        .confirm_oldest()
                        .await
                        .map_err(|f| self.error(f))?;
                }
            };
            let event = &batch.events[i];
            self.config.routing_key.render(
                &mut key,
                &event.channel,
                &event.schema,
                &event.table,
                event.kind,
            );
            // AMQP caps a routing key at 255 bytes; the mapper keeps channels within that, but
            // the template may add to it.
            let routing_key = ShortString::try_new(key.as_str()).map_err(|_| {
                self.error(Failure::Fatal(format!(
                    "the routing key of event {} ({} bytes) is longer than AMQP's 255: \
                     shorten routing_key or the table's channel",
                    event.id,
                    key.len()
                )))
            })?;
            let publish = start_publish(
                &channel,
                self.config.exchange.as_str().into(),
                routing_key,
                self.config.mandatory,
                batch.clone(),
                i,
            );
            publishing.pending.push_back((permit, publish));
        }
        let url = self.config.url.clone();
        Ok(Box::pin(async move {
            while !publishing.pending.is_empty() {
                publishing.confirm_oldest().await.map_err(|f| match f {
                    Failure::Fatal(m) => SinkError::fatal(NAME, m),
                    Failure::Retry(m) => SinkError::retryable(NAME, format!("{url}: {m}")),
                })?;
            }
            Ok(())
        }))
    }

    fn max_in_flight(&self) -> usize {
        // The window of messages bounds what is in flight.
        usize::MAX
    }

    fn max_backoff(&self) -> Duration {
        self.config.max_backoff
    }

    fn interrupted(&self) -> &'static str {
        "AMQP publishing interrupted; will publish unconfirmed messages again"
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(session) = self.session.take() {
            let _ = session.conn.close(200, "pglive stopping".into()).await;
        }
        Ok(())
    }
}

/// One batch's published messages awaiting their confirms, oldest first.
struct Publishing {
    batch: Arc<Batch>,
    config: Arc<AmqpSinkConfig>,
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Events of the batch confirmed so far.
    confirmed: usize,
    pending: VecDeque<(Permit, InFlight)>,
}

impl Publishing {
    /// Waits for the oldest pending message's confirm and judges it.
    async fn confirm_oldest(&mut self) -> Result<(), Failure> {
        let Some((_, publish)) = self.pending.front_mut() else {
            return Ok(());
        };
        let result = publish.as_mut().await;
        let id = self.batch.events[self.confirmed].id;
        // Its place in the window is free from here.
        self.pending.pop_front();
        let config = &self.config;
        let rejected = match result.map_err(|e| classify(&e, "publish"))? {
            Confirmation::Ack(None) => None,
            Confirmation::Ack(Some(returned)) => Some(format!(
                "was returned unroutable by the broker ({} {}): no queue is bound to exchange {:?} for routing key {:?}",
                returned.reply_code,
                returned.reply_text,
                config.exchange,
                returned.delivery.routing_key
            )),
            Confirmation::Nack(_) => Some("was rejected by the broker (nack)".to_owned()),
            Confirmation::NotRequested => {
                return Err(Failure::Fatal(
                    "the broker did not confirm a message although confirms are on".into(),
                ));
            }
        };
        if let Some(why) = rejected {
            match config.on_reject {
                OnReject::Retry => {
                    return Err(Failure::Retry(format!(
                        "message {id} {why}; nothing after it is acknowledged until it is taken (or set on_reject = \"skip\")"
                    )));
                }
                OnReject::Skip => {
                    tracing::error!(sink = NAME, message_id = %id, "message {why}; skipped (on_reject = \"skip\")");
                }
            }
        }
        self.confirmed += 1;
        *lock(&self.progress) = (self.batch.seq, self.confirmed);
        Ok(())
    }
}

/// Messages (and bytes of their bodies) awaiting confirms, across every pending delivery:
/// one more may be published while both are under their limits.
struct Window {
    max: usize,
    max_bytes: usize,
    /// (messages, bytes) in flight.
    used: Mutex<(usize, usize)>,
    freed: Notify,
}

/// One message's place in the [`Window`], until its confirm (or until it is dropped).
struct Permit {
    window: Arc<Window>,
    bytes: usize,
}

impl Window {
    fn new(max: usize, max_bytes: usize) -> Window {
        Window {
            max,
            max_bytes,
            used: Mutex::new((0, 0)),
            freed: Notify::new(),
        }
    }

    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Permit> {
        let mut used = lock(&self.used);
        if used.0 >= self.max || used.1 >= self.max_bytes {
            return None;
        }
        used.0 += 1;
        used.1 += bytes;
        Some(Permit {
            window: self.clone(),
            bytes,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = lock(&self.window.used);
        used.0 -= 1;
        used.1 -= self.bytes;
        drop(used);
        self.window.freed.notify_waiters();
    }
}

/// Connects, checks the exchange and closes: what `pglive check` asks of the broker.
/// Returns whether the exchange exists already.
pub async fn probe(config: &AmqpSinkConfig) -> Result<bool, String> {
    let conn = connect(config).await.map_err(failure_message)?;
    let channel = conn.create_channel().await.map_err(|e| describe(&e))?;
    let exists = match channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => true,
        Err(e) if amqp_code(&e) == Some(404) => false,
        Err(e) => return Err(describe(&e)),
    };
    let _ = conn.close(200, "check done".into()).await;
    Ok(exists)
}

fn failure_message(f: Failure) -> String {
    match f {
        Failure::Fatal(m) | Failure::Retry(m) => m,
    }
}

async fn connect(config: &AmqpSinkConfig) -> Result<Connection, Failure> {
    connect_to(
        &config.url,
        config.ca_file.as_deref(),
        config.connect_timeout,
    )
    .await
}

/// Connects to the broker at `url` within `timeout`, trusting `ca_file` besides the system's
/// certificates: the sink's connection and a relay node's.
pub(crate) async fn connect_to(
    url: &AmqpUrl,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<Connection, Failure> {
    let tls = match ca_file {
        None => OwnedTLSConfig::default(),
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                Failure::Fatal(format!("cannot read ca_file {}: {e}", path.display()))
            })?),
        },
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("pglive {}", env!("CARGO_PKG_VERSION")).into());
    let connecting = Connection::connect_uri_with_config(
        url.uri(),
        properties,
        tls,
        lapin::runtime::default_runtime().map_err(|e| Failure::Fatal(describe(&e)))?,
    );
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(Failure::Retry(format!("no connection within {timeout:?}"))),
        Ok(Err(e)) => Err(classify(&e, "connect")),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// One connection and its publishing channel.
struct Session {
    conn: Connection,
    channel: Channel,
    /// The connection's events from its start, until the alarm listener takes them.
    events: Option<Pin<Box<dyn Stream<Item = Event> + Send>>>,
    /// Logs the broker's resource alarms. While one is raised, publishing waits in
    /// `basic_publish`, so this runs beside the publishing loop.
    _watch: Option<AbortOnDropHandle<()>>,
}

async fn log_alarms(
    mut events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    status: Arc<SinkStatus>,
) {
    while let Some(event) = poll_fn(|cx| events.as_mut().poll_next(cx)).await {
        match event {
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(
                    sink = NAME,
                    %reason,
                    "the broker blocked publishing (resource alarm); waiting for it to clear"
                );
                status.unhealthy(format!("the broker blocked publishing: {reason}"));
            }
            Event::ConnectionUnblocked => {
                tracing::info!(sink = NAME, "the broker unblocked publishing");
                status.healthy();
            }
            // Errors also fail the pending confirms, which end the session.
            _ => {}
        }
    }
}

impl Session {
    async fn open(config: &AmqpSinkConfig) -> Result<Session, Failure> {
        let conn = connect(config).await?;
        // Listened to from here, so that an alarm raised while the session opens is heard;
        // reported once the driver has marked the sink healthy (`Sink::connected`).
        let events: Pin<Box<dyn Stream<Item = Event> + Send>> = Box::pin(conn.events_listener());
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| classify(&e, "open a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| classify(&e, "enable publisher confirms"))?;
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: !config.declare,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| match amqp_code(&e) {
                Some(404) => Failure::Fatal(format!(
                    "exchange {:?} does not exist (declare = false); create it, or set declare = true",
                    config.exchange
                )),
                Some(406) => Failure::Fatal(format!(
                    "exchange {:?} exists with other settings than a durable topic exchange ({}); use another exchange name, or set declare = false to publish to it as it is",
                    config.exchange,
                    describe(&e)
                )),
                _ => classify(&e, "declare the exchange"),
            })?;
        if let Some(stream) = &config.stream {
            declare_stream(&channel, stream, &config.exchange).await?;
        }
        Ok(Session {
            conn,
            channel,
            events: Some(events),
            _watch: None,
        })
    }
}

/// Declares the stream queue (durable, with its retention) and binds it to `exchange` for
/// every routing key.
async fn declare_stream(
    channel: &Channel,
    stream: &StreamQueue,
    exchange: &str,
) -> Result<(), Failure> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.name.as_str().into(), options, stream.arguments())
        .await
        .map_err(|e| match amqp_code(&e) {
            Some(406) => Failure::Fatal(format!(
                "queue {:?} exists with other settings than this stream ({}): another queue \
                 type, or other retention; delete it (rabbitmqctl delete_queue), or set \
                 stream_max_age and stream_max_bytes to what it has",
                stream.name,
                describe(&e)
            )),
            _ => classify(&e, "declare the stream"),
        })?;
    channel
        .queue_bind(
            stream.name.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&e, "bind the stream to the exchange"))
}

/// A message being published: resolves with the broker's confirmation.
pub type InFlight = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// Publishes event `i` of `batch`. The publication starts here, in call order, which fixes the
/// message's place on the channel (its delivery tag) and queues its frames; the returned future
/// then waits for the frames to be written and the broker's confirm. Not waiting for each write
/// before the next publication lets the connection's I/O thread write many messages per wake-up.
pub fn start_publish(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    batch: Arc<Batch>,
    i: usize,
) -> InFlight {
    let channel = channel.clone();
    let options = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let mut publish: InFlight = Box::pin(async move {
        let event = &batch.events[i];
        let props = properties(event);
        channel
            .basic_publish(exchange, routing_key, options, &event.json, props)
            .await?
            .await
    });
    // The first poll runs the publication up to its first wait. Nothing needs waking for it:
    // the future is polled again, with a real waker, when its turn to be awaited comes.
    let mut cx = Context::from_waker(Waker::noop());
    match publish.as_mut().poll(&mut cx) {
        Poll::Pending => publish,
        // Finished already (an error, say): keep the result, never poll a finished future.
        Poll::Ready(result) => Box::pin(std::future::ready(result)),
    }
}

/// The message properties of an event.
pub fn properties(event: &LiveEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "lsn".into(),
        AMQPValue::LongString(LongString::from(event.id.commit_lsn.to_string())),
    );
    headers.insert(
        "schema".into(),
        AMQPValue::LongString(LongString::from(event.schema.as_ref())),
    );
    headers.insert(
        "table".into(),
        AMQPValue::LongString(LongString::from(event.table.as_ref())),
    );
    headers.insert("xid".into(), AMQPValue::LongUInt(event.xid));
    headers.insert(
        PUBLISHED_HEADER.into(),
        AMQPValue::LongLongInt(crate::status::unix_micros_now() / 1000),
    );
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_type(ShortString::from(event.kind.as_str()))
        .with_timestamp(u64::try_from(event.commit_unix_secs()).unwrap_or(0))
        .with_app_id(ShortString::from("pglive"))
        .with_headers(headers)
}

/// The AMQP reply code of an error the broker sent, if it was one.
pub(crate) fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

pub(crate) fn describe(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            format!("{} {}", amqp.get_id(), amqp.get_message())
        }
        lapin::ErrorKind::IOError(io) => io.to_string(),
        _ => e.to_string(),
    }
}

/// Sorts a broker error into "fix the configuration" and "try again".
pub(crate) fn classify(e: &lapin::Error, doing: &str) -> Failure {
    let what = format!("cannot {doing}: {}", describe(e));
    if let lapin::ErrorKind::IOError(io) = e.kind()
        && crate::source::tls::certificate_refused(io)
    {
        return Failure::Fatal(format!(
            "{what} — the broker's certificate is not trusted: set ca_file to the CA that signed it, and make sure the URL's host is a name in the certificate"
        ));
    }
    match amqp_code(e) {
        // ACCESS_REFUSED (credentials, or permissions on the vhost or exchange), NOT_ALLOWED
        // (the vhost), NOT_FOUND, PRECONDITION_FAILED, INVALID_PATH, and the protocol errors
        // that mean a message can never be taken (too large, not allowed).
        Some(403) => Failure::Fatal(format!(
            "{what} — check the user name, password and the user's permissions on the vhost and exchange"
        )),
        Some(530) => Failure::Fatal(format!(
            "{what} — check that the vhost in the URL exists and the user may use it"
        )),
        Some(311 | 402 | 404 | 406 | 501 | 502 | 503 | 540) => Failure::Fatal(what),
        _ => Failure::Retry(what),
    }
}

#[cfg(test)]
mod tests;
