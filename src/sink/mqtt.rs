//! The MQTT sink: publishes each event to an MQTT 3.1.1 broker at QoS 1 (retain off) on the
//! topic of its channel (`resources/posts`, after `topic_prefix`), the LiveEvent JSON as the
//! payload, and acknowledges a batch only when the broker has sent a PUBACK for every message
//! of it.
//!
//! Publishing is pipelined: the client library writes up to `max_inflight` messages ahead of
//! their PUBACKs and holds as many more in its bounded request queue. A task owned by the sink
//! polls the library's event loop (nothing moves unless it is polled): it numbers the messages
//! in the order they are written (`Outgoing::Publish(pkid)`, in publish order), matches each
//! PUBACK to its message by packet id, and resolves each batch's delivery once every message
//! up to its last is acknowledged.
//!
//! The session is persistent (`clean_session = false`, a stable `client_id`). On a lost
//! connection, a refused one, or a PUBACK that does not come within `timeout`, every pending
//! delivery fails as retryable and the task ends. The driver then reconnects with backoff,
//! which builds a new client, and sends again every batch not yet acknowledged (minus the
//! acknowledged start of the oldest): the library's own state — its unacknowledged messages,
//! which it would publish again itself, and its packet ids — goes with the old client, so a
//! message is never held twice by pglive and a PUBACK is only ever matched within the
//! connection that carried its message. Subscribers may see a message twice; its `meta.id` is
//! the same both times.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{Batch, Delivery, Sink, SinkError, delivered};
use crate::checkpoint::Seq;
use crate::event::LiveEvent;
use crate::status::lock;

/// The sink's name in logs and errors.
pub const NAME: &str = "mqtt";
/// Messages written ahead of their PUBACKs: the client library's default.
pub const DEFAULT_MAX_IN_FLIGHT: u16 = 100;
/// How often an idle connection is checked with a ping.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long connecting (TCP, TLS, CONNACK) and each wait for a PUBACK may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest packet MQTT allows: the remaining length is at most 268,435,455 bytes.
/// The largest packet accepted from the broker (the sink only gets acknowledgements).
const MAX_INCOMING_PACKET: usize = 64 * 1024;
pub const MAX_PACKET_SIZE: usize = 268_435_455 + 5;
/// The longest topic MQTT allows.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// A broker URL: `mqtt://user:password@host:port` or `mqtts://…`. The password is never
/// shown.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    username: Option<String>,
    password: Option<String>,
    shown: String,
}

impl MqttUrl {
    /// Parses the URL, with the password replaced by `password` when given (read from
    /// `password_file`). Errors never quote the URL.
    pub fn parse(text: &str, password: Option<&str>) -> Result<MqttUrl, String> {
        let hint = crate::source::conninfo::percent_hint("password_file");
        let url = url::Url::parse(text)
            .map_err(|e| format!("not a valid mqtt:// or mqtts:// URL ({e}); {hint}"))?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported; use mqtt:// or mqtts://"
                ));
            }
        };
        let host = url.host_str().filter(|h| !h.is_empty());
        let host = host.ok_or("the URL has no host")?;
        // Anything after the authority may be the tail of an unencoded password: never shown.
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "the URL has a path, query or fragment (not shown), which broker URLs do not use; {hint}"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = match password {
            Some(p) => Some(p.to_owned()),
            None => url.password().map(decode),
        };
        if username.is_none() && password.is_some() {
            return Err("a password needs a user name (mqtt://user:password@host)".into());
        }
        let mut shown = url.clone();
        if password.is_some() {
            let _ = shown.set_password(Some("********"));
        }
        Ok(MqttUrl {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            username,
            password,
            shown: shown.as_str().trim_end_matches('/').to_owned(),
        })
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)
    }
}

/// A resolved `[[sinks]] type = "mqtt"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSinkConfig {
    pub url: MqttUrl,
    /// The session's client identifier; `pglive-<slot>` when not set.
    pub client_id: Option<String>,
    /// Levels put before every channel: `pglive` → `pglive/resources/posts`.
    pub topic_prefix: Option<String>,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    /// The largest packet the broker takes; a larger event stops pglive.
    pub max_packet_size: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// PEM certificates to trust for `mqtts://`, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl MqttSinkConfig {
    /// The client identifier for a pipeline on replication slot `slot`.
    pub fn client_id(&self, slot: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("pglive-{slot}"))
    }

    /// The topic of the events of `channel`.
    pub fn topic(&self, channel: &str) -> String {
        match &self.topic_prefix {
            Some(prefix) => format!("{prefix}/{channel}"),
            None => channel.to_owned(),
        }
    }
}

/// Why a topic cannot be published to, if it cannot: MQTT forbids wildcards and NUL in topic
/// names, and names longer than 65535 bytes; a leading `$` is the broker's (`$SYS`), and `#`
/// subscriptions do not see it.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if let Some(c) = topic.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(format!(
            "topic {:?} contains {c:?}, which MQTT topic names may not (a wildcard or NUL)",
            topic.replace('\0', "\\0")
        ));
    }
    if topic.starts_with('$') {
        return Err(format!(
            "topic {topic:?} starts with $, which brokers keep for themselves ($SYS) and # subscriptions skip"
        ));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "the topic is {} bytes; MQTT allows at most {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    Ok(())
}

/// The size of a QoS 1 PUBLISH packet for `topic` and `payload` bytes, as the broker counts
/// it: fixed header, topic, packet id, payload.
pub fn packet_size(topic: usize, payload: usize) -> usize {
    let remaining = 2 + topic + 2 + payload;
    let length_bytes = match remaining {
        0..128 => 1,
        128..16_384 => 2,
        16_384..2_097_152 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Publishes each batch's events and delivers the batch once the broker has acknowledged them
/// all.
pub struct MqttSink {
    config: MqttSinkConfig,
    client_id: String,
    /// For `mqtts://`, built at the first connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    session: Option<Session>,
    /// How many events of which batch the broker has acknowledged: the oldest batch, sent
    /// again after a failure, skips those.
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Connected, and no batch sent yet.
    resuming: bool,
}

/// One connection: its client, the task polling its event loop, and the acknowledgements.
struct Session {
    client: AsyncClient,
    acks: Arc<Acks>,
    /// Messages published in this session (numbered from 1).
    published: u64,
    poller: AbortOnDropHandle<()>,
}

impl MqttSink {
    /// `slot`: the replication slot's name, for the default client identifier.
    pub fn new(config: MqttSinkConfig, slot: &str) -> MqttSink {
        MqttSink {
            client_id: config.client_id(slot),
            config,
            tls: None,
            session: None,
            progress: Arc::new(Mutex::new((0, 0))),
            resuming: false,
        }
    }

    fn retryable(&self, message: impl fmt::Display) -> SinkError {
        SinkError::retryable(NAME, format!("{}: {message}", self.config.url))
    }

    /// Fails with the message `event` would make, if it is larger than the broker takes.
    fn check_size(&self, event: &LiveEvent, topic: &str) -> Result<(), SinkError> {
        let size = packet_size(topic.len(), event.json.len());
        if size <= self.config.max_packet_size {
            return Ok(());
        }
        Err(SinkError::fatal(
            NAME,
            format!(
                "{}: event {} of {}.{} is a {size}-byte MQTT packet, larger than max_packet_size ({}); raise max_packet_size if the broker takes it (and its own limit, such as Mosquitto's message_size_limit), or send ids only for this table",
                self.config.url, event.id, event.schema, event.table, self.config.max_packet_size
            ),
        ))
    }
}

/// The client library's settings for one connection.
fn options(
    config: &MqttSinkConfig,
    client_id: &str,
    clean_session: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, config.url.host.clone(), config.url.port);
    options
        .set_clean_session(clean_session)
        .set_keep_alive(config.keep_alive)
        .set_inflight(config.max_inflight)
        // Outgoing packets are checked against max_packet_size before they are published, with
        // a message naming the event; the library's own check is only a backstop. The sink
        // subscribes to nothing, so what comes in is CONNACKs, PUBACKs and PINGRESPs: a small
        // limit keeps a misbehaving broker from making it allocate much.
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_PACKET_SIZE);
    if let Some(user) = &config.url.username {
        options.set_credentials(user, config.url.password.clone().unwrap_or_default());
    }
    if let Some(tls) = tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    }
    options
}

/// Connects with `options` and waits for the broker's CONNACK; returns the client, its event
/// loop, and whether the broker had a session for the client already.
async fn open(
    config: &MqttSinkConfig,
    options: MqttOptions,
) -> Result<(AsyncClient, EventLoop, bool), SinkError> {
    let cap = usize::from(config.max_inflight);
    let (client, mut eventloop) = AsyncClient::new(options, cap);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(config.timeout.as_secs().max(1));
    eventloop.set_network_options(network);
    let error = |e: Failure| e.into_error(&config.url);
    match tokio::time::timeout(config.timeout, eventloop.poll()).await {
        Err(_) => Err(error(Failure::Retry(format!(
            "no CONNACK within {:?}",
            config.timeout
        )))),
        Ok(Err(e)) => Err(error(classify(e))),
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
            Ok((client, eventloop, ack.session_present))
        }
        Ok(Ok(other)) => Err(error(Failure::Retry(format!(
            "expected CONNACK, got {other:?}"
        )))),
    }
}

/// The TLS settings for `mqtts://`: the system's roots and `ca_file`'s.
fn tls_config(config: &MqttSinkConfig) -> Result<Option<Arc<rustls::ClientConfig>>, SinkError> {
    if !config.url.tls {
        return Ok(None);
    }
    let tls = crate::sink::tls::client_config(config.ca_file.as_deref())
        .map_err(|e| SinkError::fatal(NAME, format!("{}: {e}", config.url)))?;
    Ok(Some(Arc::new(tls)))
}

/// Connects and closes, as `pglive check` asks: whether the broker takes the URL's
/// credentials. It connects as `<client_id>-check` (`pglive-check` by default) with a clean
/// session, so that it neither takes a running pipeline's session over nor leaves a session
/// behind.
pub async fn probe(config: &MqttSinkConfig) -> Result<(), String> {
    let tls = tls_config(config).map_err(|e| e.message)?;
    let id = format!("{}-check", config.client_id.as_deref().unwrap_or("pglive"));
    let (client, mut eventloop, _) = open(config, options(config, &id, true, tls))
        .await
        .map_err(|e| e.message)?;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(config.timeout, eventloop.poll()).await;
    Ok(())
}

impl Sink for MqttSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        // The failed session's client goes, with its unacknowledged messages: the driver sends
        // them again.
        self.session = None;
        if self.tls.is_none() {
            self.tls = tls_config(&self.config)?;
        }
        let options = options(&self.config, &self.client_id, false, self.tls.clone());
        let (client, eventloop, resumed) = open(&self.config, options).await?;
        tracing::info!(broker = %self.config.url, client_id = %self.client_id,
            session_present = resumed, "publishing to MQTT");
        let acks = Arc::new(Acks::new(self.progress.clone()));
        let poll = poll(
            eventloop,
            acks.clone(),
            self.config.timeout,
            self.config.url.clone(),
        );
        self.session = Some(Session {
            client,
            acks,
            published: 0,
            poller: AbortOnDropHandle::new(tokio::spawn(poll)),
        });
        self.resuming = true;
        Ok(())
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        let skip = match std::mem::take(&mut self.resuming) {
            true => {
                let p = lock(&self.progress);
                if p.0 == batch.seq { p.1 } else { 0 }
            }
            false => 0,
        };
        if skip >= batch.events.len() {
            return Ok(delivered());
        }
        for event in &batch.events[skip..] {
            let topic = self.config.topic(&event.channel);
            self.check_size(event, &topic)?;
            let Some(session) = self.session.as_mut() else {
                return Err(self.retryable("not connected"));
            };
            let payload = event.json.to_vec();
            if session
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                // The event loop is gone: its task says why.
                let failure = session.acks.failure();
                return Err(failure.unwrap_or_else(|| self.retryable("the connection ended")));
            }
            session.published += 1;
        }
        let session = self.session.as_ref().expect("published above");
        let count = (batch.events.len() - skip) as u64;
        let first = session.published + 1 - count;
        Ok(session.acks.wait(batch.seq, skip, first, session.published))
    }

    fn max_in_flight(&self) -> usize {
        // The client's window and request queue bound what is in flight.
        usize::MAX
    }

    fn max_backoff(&self) -> Duration {
        self.config.max_backoff
    }

    fn interrupted(&self) -> &'static str {
        "MQTT publishing interrupted; will publish unacknowledged messages again"
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(mut session) = self.session.take() {
            // Every message is acknowledged by now; DISCONNECT ends the connection cleanly
            // (the broker keeps the session).
            if session.client.disconnect().await.is_ok() {
                let _ = tokio::time::timeout(self.config.timeout, &mut session.poller).await;
            }
        }
        Ok(())
    }
}

/// Why a connection failed.
enum Failure {
    /// Credentials, authorisation, the client id: stop the daemon.
    Fatal(String),
    Retry(String),
}

impl Failure {
    fn into_error(self, url: &MqttUrl) -> SinkError {
        match self {
            Failure::Fatal(m) => SinkError::fatal(NAME, format!("{url}: {m}")),
            Failure::Retry(m) => SinkError::retryable(NAME, format!("{url}: {m}")),
        }
    }
}

/// Sorts a connection error into "fix the configuration" and "try again".
fn classify(e: ConnectionError) -> Failure {
    let refused = |what: &str, fix: &str| {
        Failure::Fatal(format!("the broker refused the connection: {what} — {fix}"))
    };
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => refused(
                "bad user name or password",
                "check the URL's user and password (or password_file)",
            ),
            ConnectReturnCode::NotAuthorized => refused(
                "not authorised",
                "check that the broker lets this user connect (its password file, ACLs, or allow_anonymous)",
            ),
            ConnectReturnCode::BadClientId => refused(
                "client identifier rejected",
                "set client_id to one the broker accepts",
            ),
            ConnectReturnCode::RefusedProtocolVersion => refused(
                "unacceptable protocol version",
                "the broker does not take MQTT 3.1.1",
            ),
            other => Failure::Retry(format!("the broker refused the connection: {other:?}")),
        },
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) | ConnectionError::Io(io)
            if crate::source::tls::certificate_refused(&io) =>
        {
            Failure::Fatal(format!(
                "TLS: {io} — the broker's certificate is not trusted: set ca_file to the CA that signed it, and make sure the URL's host is a name in the certificate"
            ))
        }
        other => Failure::Retry(other.to_string()),
    }
}

/// Where the polling task reports acknowledgements, and the deliveries wait for them.
struct Acks {
    inner: Mutex<AckState>,
    /// Shared with the sink: `(seq, events acknowledged)` of the oldest pending batch.
    progress: Arc<Mutex<(Seq, usize)>>,
}

struct AckState {
    /// Every message up to this number is acknowledged.
    through: u64,
    /// Batches awaiting their acknowledgements, oldest first.
    waiting: VecDeque<Waiting>,
    /// Set when the connection failed: every delivery fails with it.
    failed: Option<SinkError>,
}

struct Waiting {
    seq: Seq,
    /// Events of the batch acknowledged before this session (not published in it).
    skipped: usize,
    /// Numbers of its first and last message in this session.
    first: u64,
    last: u64,
    done: oneshot::Sender<Result<(), SinkError>>,
}

impl Acks {
    fn new(progress: Arc<Mutex<(Seq, usize)>>) -> Acks {
        Acks {
            inner: Mutex::new(AckState {
                through: 0,
                waiting: VecDeque::new(),
                failed: None,
            }),
            progress,
        }
    }

    fn failure(&self) -> Option<SinkError> {
        lock(&self.inner).failed.clone()
    }

    /// The delivery of batch `seq`, whose messages `first..=last` were published.
    fn wait(&self, seq: Seq, skipped: usize, first: u64, last: u64) -> Delivery {
        let mut inner = lock(&self.inner);
        if let Some(e) = &inner.failed {
            return Box::pin(std::future::ready(Err(e.clone())));
        }
        if inner.through >= last {
            return delivered();
        }
        let (done, rx) = oneshot::channel();
        inner.waiting.push_back(Waiting {
            seq,
            skipped,
            first,
            last,
            done,
        });
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(SinkError::retryable(
                    NAME,
                    "the connection to the broker ended",
                ))
            })
        })
    }

    /// Every message up to `through` is acknowledged.
    fn advance(&self, through: u64) {
        let mut inner = lock(&self.inner);
        inner.through = through;
        while inner.waiting.front().is_some_and(|w| w.last <= through) {
            let w = inner.waiting.pop_front().expect("checked");
            *lock(&self.progress) = (w.seq, w.skipped + (w.last + 1 - w.first) as usize);
            let _ = w.done.send(Ok(()));
        }
        if let Some(w) = inner.waiting.front()
            && through >= w.first
        {
            *lock(&self.progress) = (w.seq, w.skipped + (through + 1 - w.first) as usize);
        }
    }

    /// The connection failed: so does every pending delivery, and every later one.
    fn fail(&self, error: SinkError) {
        let mut inner = lock(&self.inner);
        for w in inner.waiting.drain(..) {
            let _ = w.done.send(Err(error.clone()));
        }
        inner.failed = Some(error);
    }
}

/// Matches PUBACKs to messages: numbers the messages in the order they are written, and keeps
/// the highest number up to which every message is acknowledged.
#[derive(Default)]
struct Tracker {
    written: u64,
    /// Packet id → number, for the messages awaiting their PUBACK.
    pending: HashMap<u16, u64>,
    /// Acknowledged out of order, above `through`.
    early: BTreeSet<u64>,
    through: u64,
}

impl Tracker {
    fn written(&mut self, pkid: u16) {
        self.written += 1;
        self.pending.insert(pkid, self.written);
    }

    /// A PUBACK for `pkid`: the new `through` if it moved.
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        let n = self.pending.remove(&pkid)?;
        self.early.insert(n);
        let before = self.through;
        while self.early.remove(&(self.through + 1)) {
            self.through += 1;
        }
        (self.through > before).then_some(self.through)
    }
}

/// Polls the event loop until the connection fails (or is closed), reporting PUBACKs to
/// `acks`. A message without its PUBACK for `timeout` fails the connection.
async fn poll(mut eventloop: EventLoop, acks: Arc<Acks>, timeout: Duration, url: MqttUrl) {
    let mut tracker = Tracker::default();
    let mut deadline: Option<Instant> = None;
    let failure = loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break Failure::Retry(format!("no PUBACK within {timeout:?}"));
            }
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                tracker.written(pkid);
                deadline.get_or_insert_with(|| Instant::now() + timeout);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(through) = tracker.acked(ack.pkid) {
                    acks.advance(through);
                }
                deadline = (!tracker.pending.is_empty()).then(|| Instant::now() + timeout);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => break classify(e),
        }
    };
    acks.fail(failure.into_error(&url));
}

#[cfg(test)]
mod tests;
