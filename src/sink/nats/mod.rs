//! The NATS sink: publishes each event to a JetStream stream and acknowledges a batch only
//! when the stream has acknowledged (PubAck) every message in it.
//!
//! Each event is one message on its channel's subject (see [`subject`]), its body the event's
//! JSON, with the header `Nats-Msg-Id` set to the event's `meta.id`: the stream drops a message
//! whose id it stored within its `duplicate_window`, so events published again after a failure
//! or a restart are stored once.
//!
//! Publishing is pipelined: up to `max_inflight` messages await their PubAcks at once, all on
//! one connection, so the stream stores them in commit order. PubAcks are taken in publish
//! order, so a batch is acknowledged exactly when it and every batch before it are.
//!
//! A connection is used until it fails, never reconnected by the client library: commands it
//! held while disconnected would otherwise be sent after a reconnection, behind messages that
//! were lost, and the stream would store events out of order. On a lost connection, a PubAck
//! error or timeout, the delivery fails as retryable: the driver reconnects with backoff and
//! sends again every batch not yet acknowledged; the PubAcked start of the oldest batch is
//! not published twice.

pub mod subject;

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::{
    ContextBuilder, GetStreamByNameErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Auth, AuthError, Client, ConnectErrorKind, ConnectOptions, Event};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use subject::{DEFAULT_PREFIX, Subjects};

use super::{Batch, Delivery, Sink, SinkError};
use crate::checkpoint::Seq;
use crate::status::lock;

/// The sink's name in logs and errors.
pub const NAME: &str = "nats";
/// Messages awaiting their PubAcks at once.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;
/// How long a connection attempt, a JetStream request or a PubAck may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The stream's window for dropping messages whose `Nats-Msg-Id` it stored already (the
/// server's own default), when pglive creates the stream.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A server URL, without its credentials (those go to [`NatsAuth`]): shown as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// `nats://host:port` or `tls://host:port`.
    address: String,
}

/// The parts of a `nats://` URL: the address, and the user name and password in it.
pub struct ParsedUrl {
    pub url: NatsUrl,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl NatsUrl {
    /// Parses `nats://[user[:password]@]host[:port]` (or `tls://`); port 4222 by default.
    /// Errors never quote the URL (it may hold a password or token).
    pub fn parse(text: &str) -> Result<ParsedUrl, String> {
        let hint = crate::source::conninfo::percent_hint("password_file or token_file");
        let url = url::Url::parse(text)
            .map_err(|e| format!("not a valid nats:// or tls:// URL ({e}); {hint}"))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(format!(
                "scheme {:?} is not supported; use nats:// (or tls:// for TLS)",
                url.scheme()
            ));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("the URL has no host".into());
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "the URL has a path, query or fragment (not shown: it may be part of a password), \
                 which server URLs do not use; {hint}"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| format!("the URL's user or password is not UTF-8; {hint}"))
        };
        let user = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        let port = url.port().unwrap_or(4222);
        Ok(ParsedUrl {
            url: NatsUrl {
                address: format!("{}://{host}:{port}", url.scheme()),
            },
            user,
            password,
        })
    }

    fn tls(&self) -> bool {
        self.address.starts_with("tls://")
    }
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// How pglive authenticates to the server.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ********)"),
            NatsAuth::Token(_) => f.write_str("Token(********)"),
        }
    }
}

impl NatsAuth {
    fn to_auth(&self) -> Auth {
        let mut auth = Auth::new();
        match self {
            NatsAuth::None => {}
            NatsAuth::UserPassword { user, password } => {
                auth.username = Some(user.clone());
                auth.password = Some(password.clone());
            }
            NatsAuth::Token(token) => auth.token = Some(token.clone()),
        }
        auth
    }
}

/// A resolved `[[sinks]] type = "nats"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSinkConfig {
    pub url: NatsUrl,
    pub auth: NatsAuth,
    pub subjects: Subjects,
    /// The stream that must take the subjects (any stream may, when none is named).
    pub stream: Option<String>,
    /// Create the stream (or add the subjects and the duplicate window to it) at each
    /// connection.
    pub create_stream: bool,
    pub duplicate_window: Duration,
    pub max_inflight: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// Require TLS (also when the URL is `tls://`).
    pub tls: bool,
    /// PEM certificates to trust for TLS, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// Retrying cannot help (credentials, a missing stream, a certificate): stop the daemon.
    Fatal(String),
    /// The connection or the server failed; reconnect and publish again.
    Retry(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Failure::Fatal(m) | Failure::Retry(m) => m,
        }
    }
}

fn sink_error(url: &NatsUrl, failure: Failure) -> SinkError {
    match failure {
        Failure::Fatal(m) => SinkError::fatal(NAME, format!("{url}: {m}")),
        Failure::Retry(m) => SinkError::retryable(NAME, format!("{url}: {m}")),
    }
}

/// Publishes each batch's events and delivers the batch once the stream has acknowledged
/// them all.
pub struct NatsSink {
    config: Arc<NatsSinkConfig>,
    session: Option<Session>,
    /// Places for messages awaiting their PubAcks, across every pending delivery.
    window: Arc<Semaphore>,
    /// How many events of which batch the stream has acknowledged, as the deliveries see
    /// them: the oldest batch, sent again after a failure, skips those.
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Connected, and no batch sent yet.
    resuming: bool,
}

impl NatsSink {
    pub fn new(config: NatsSinkConfig) -> NatsSink {
        NatsSink {
            window: Arc::new(Semaphore::new(config.max_inflight)),
            config: Arc::new(config),
            session: None,
            progress: Arc::new(Mutex::new((0, 0))),
            resuming: false,
        }
    }

    /// Takes a place in the window for the next message, waiting for `publishing`'s oldest
    /// PubAck (or, when it has none pending, for other deliveries) while there is none.
    async fn place(&self, publishing: &mut Publishing) -> Result<OwnedSemaphorePermit, Failure> {
        loop {
            if let Ok(permit) = self.window.clone().try_acquire_owned() {
                return Ok(permit);
            }
            if publishing.pending.is_empty() {
                return self
                    .window
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Failure::Fatal("the publishing window closed".into()));
            }
            publishing.ack_oldest().await?;
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        // A failed session's connection goes; its unacknowledged messages are published again.
        self.session = None;
        let session = Session::open(&self.config)
            .await
            .map_err(|f| sink_error(&self.config.url, f))?;
        tracing::info!(
            server = %self.config.url,
            subjects = %self.config.subjects.wildcard(),
            "publishing to NATS JetStream"
        );
        self.session = Some(session);
        self.resuming = true;
        Ok(())
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        let Some(js) = self.session.as_ref().map(|s| s.js.clone()) else {
            return Err(SinkError::retryable(NAME, "not connected"));
        };
        let acked = match std::mem::take(&mut self.resuming) {
            true => {
                let p = lock(&self.progress);
                if p.0 == batch.seq { p.1 } else { 0 }
            }
            false => 0,
        };
        let mut publishing = Publishing {
            batch: batch.clone(),
            progress: self.progress.clone(),
            acked,
            pending: VecDeque::new(),
        };
        let url = &self.config.url;
        for i in acked..batch.events.len() {
            let permit = self
                .place(&mut publishing)
                .await
                .map_err(|f| sink_error(url, f))?;
            let event = &batch.events[i];
            let subject = self
                .config
                .subjects
                .get(&event.channel)
                .map_err(|m| SinkError::fatal(NAME, m))?;
            let ack = publish(&js, subject.clone(), &batch, i)
                .await
                .map_err(|e| sink_error(url, judge(&e, &subject, &event.id.to_string())))?;
            publishing.pending.push_back((permit, subject, ack));
        }
        let url = self.config.url.clone();
        Ok(Box::pin(async move {
            while !publishing.pending.is_empty() {
                publishing
                    .ack_oldest()
                    .await
                    .map_err(|f| sink_error(&url, f))?;
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
        "NATS publishing interrupted; will publish unacknowledged messages again"
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.session = None;
        Ok(())
    }
}

/// A message's PubAck, once published.
pub type PubAck = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// The body of event `i` of a batch, without copying it.
struct Body(Arc<Batch>, usize);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.0.events[self.1].json
    }
}

/// Publishes event `i` of `batch` to `subject`, with its `meta.id` as `Nats-Msg-Id`; returns
/// once the client has taken the message, with its PubAck to await.
pub async fn publish(
    js: &jetstream::Context,
    subject: async_nats::Subject,
    batch: &Arc<Batch>,
    i: usize,
) -> Result<PubAck, PublishError> {
    let message = PublishMessage::build()
        .payload(Bytes::from_owner(Body(batch.clone(), i)))
        .message_id(batch.events[i].id.to_string());
    Ok(js.send_publish(subject, message).await?.into_future())
}

/// Sorts a publishing error (for the message `id` to `subject`) into "fix it" and "try again".
fn judge(e: &PublishError, subject: &str, id: &str) -> Failure {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Failure::Retry(format!(
            "no JetStream stream takes subject {subject:?} (no responders); create one whose \
             subjects include it, or set stream and create_stream = true"
        )),
        PublishErrorKind::TimedOut => {
            Failure::Retry(format!("no PubAck for message {id} on {subject:?} in time"))
        }
        PublishErrorKind::BrokenPipe => Failure::Retry("the connection was lost".into()),
        PublishErrorKind::MaxPayloadExceeded => Failure::Fatal(format!(
            "message {id} on {subject:?} is larger than the server's max_payload; raise \
             max_payload in the server's configuration"
        )),
        _ => Failure::Retry(format!("message {id} on {subject:?} was not stored: {e}")),
    }
}

/// One batch's published messages awaiting their PubAcks, oldest first.
struct Publishing {
    batch: Arc<Batch>,
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Events of the batch acknowledged so far.
    acked: usize,
    /// Each message's place in the window, subject and PubAck.
    pending: VecDeque<(OwnedSemaphorePermit, async_nats::Subject, PubAck)>,
}

impl Publishing {
    /// Waits for the oldest pending message's PubAck and judges it. A duplicate (the stream
    /// had the message already) counts as acknowledged.
    async fn ack_oldest(&mut self) -> Result<(), Failure> {
        let Some((_, _, ack)) = self.pending.front_mut() else {
            return Ok(());
        };
        let result = ack.as_mut().await;
        // Its place in the window is free from here.
        let Some((_, subject, _)) = self.pending.pop_front() else {
            return Ok(());
        };
        if let Err(e) = result {
            let id = self.batch.events[self.acked].id.to_string();
            return Err(judge(&e, &subject, &id));
        }
        self.acked += 1;
        *lock(&self.progress) = (self.batch.seq, self.acked);
        Ok(())
    }
}

/// One connection and its JetStream context.
struct Session {
    js: jetstream::Context,
}

impl Session {
    async fn open(config: &NatsSinkConfig) -> Result<Session, Failure> {
        let client = connect(config).await?;
        let js = ContextBuilder::new()
            .timeout(config.timeout)
            .ack_timeout(config.timeout)
            // The sink's window bounds what awaits PubAcks: the context's never holds it up.
            .max_ack_inflight(config.max_inflight.saturating_add(1))
            .build(client);
        if config.create_stream {
            ensure_stream(&js, config).await?;
        }
        check_subjects(&js, config).await?;
        Ok(Session { js })
    }
}

/// Connects and authenticates: one connection, which the client library does not reconnect
/// (see the module's comment).
async fn connect(config: &NatsSinkConfig) -> Result<Client, Failure> {
    let auth = config.auth.clone();
    let connected = Arc::new(AtomicBool::new(false));
    let first = connected.clone();
    let mut options = ConnectOptions::with_auth_callback(move |_nonce| {
        // The first connection authenticates; a reconnection is refused here, which ends the
        // client (one attempt at most) and fails every pending PubAck at once.
        let auth = auth.to_auth();
        let again = first.swap(true, Ordering::SeqCst);
        async move {
            match again {
                false => Ok(auth),
                true => Err(AuthError::new("pglive reconnects by itself")),
            }
        }
    })
    .max_reconnects(1)
    .name(format!("pglive {}", env!("CARGO_PKG_VERSION")))
    .connection_timeout(config.timeout)
    .request_timeout(Some(config.timeout))
    .ignore_discovered_servers()
    .event_callback(|event| async move {
        if let Event::ServerError(e) = event {
            tracing::warn!(sink = NAME, "the NATS server reported: {e}");
        }
    })
    .require_tls(config.tls || config.url.tls());
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let connecting = options.connect(config.url.address.as_str());
    match tokio::time::timeout(config.timeout + Duration::from_secs(1), connecting).await {
        Err(_) => Err(Failure::Retry(format!(
            "no connection within {:?}",
            config.timeout
        ))),
        Ok(Err(e)) => Err(connect_failure(&e)),
        Ok(Ok(client)) => Ok(client),
    }
}

fn connect_failure(e: &async_nats::ConnectError) -> Failure {
    let what = format!("cannot connect: {e}");
    match e.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            Failure::Fatal(format!(
                "{what} — check the user name and password, or the token, for the server"
            ))
        }
        _ if certificate_refused(e) => Failure::Fatal(format!(
            "{what} — the server's certificate is not trusted: set ca_file to the CA that \
             signed it, and make sure the URL's host is a name in the certificate"
        )),
        ConnectErrorKind::ServerParse => Failure::Fatal(what),
        _ => Failure::Retry(what),
    }
}

/// Whether the connection failed because the server's certificate was not trusted.
fn certificate_refused(e: &async_nats::ConnectError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && crate::source::tls::certificate_refused(io)
        {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(_)) = s.downcast_ref::<rustls::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Creates the configured stream with the subjects `<prefix>.>`, file storage and the
/// duplicate window, or adds the subjects and the window to the stream as it is.
async fn ensure_stream(js: &jetstream::Context, config: &NatsSinkConfig) -> Result<(), Failure> {
    let Some(name) = config.stream.as_deref() else {
        return Ok(());
    };
    let wildcard = config.subjects.wildcard();
    let refused = |e: &dyn fmt::Display| {
        Failure::Fatal(format!("cannot create or update stream {name:?}: {e}"))
    };
    match js.get_stream(name).await {
        Ok(stream) => {
            let mut wanted = stream.cached_info().config.clone();
            if !wanted.subjects.contains(&wildcard) {
                wanted.subjects.push(wildcard);
            }
            wanted.duplicate_window = config.duplicate_window;
            if wanted != stream.cached_info().config {
                js.update_stream(&wanted).await.map_err(|e| refused(&e))?;
            }
            Ok(())
        }
        Err(e) if stream_missing(&e) => {
            let created = StreamConfig {
                name: name.to_owned(),
                subjects: vec![wildcard],
                storage: StorageType::File,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            };
            js.create_stream(created).await.map_err(|e| refused(&e))?;
            tracing::info!(sink = NAME, stream = name, "created the JetStream stream");
            Ok(())
        }
        Err(e) => Err(request_failure(&e, &format!("look up stream {name:?}"))),
    }
}

fn stream_missing(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A failed JetStream API request: JetStream not enabled is fatal, the rest is retried.
fn request_failure(e: &dyn std::error::Error, doing: &str) -> Failure {
    let text = error_chain(e);
    if text.contains("no responders") || text.contains("not enabled") {
        Failure::Fatal(format!(
            "cannot {doing}: JetStream is not enabled for this account on the server ({text}); \
             start nats-server with -js (or enable JetStream for the account)"
        ))
    } else {
        Failure::Retry(format!("cannot {doing}: {text}"))
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Checks that a stream (the configured one, when named) takes every configured subject.
async fn check_subjects(js: &jetstream::Context, config: &NatsSinkConfig) -> Result<(), Failure> {
    for subject in config.subjects.all() {
        let holder = match js.stream_by_subject(subject).await {
            Ok(name) => name,
            Err(e) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => {
                return Err(Failure::Fatal(format!(
                    "no JetStream stream takes subject {subject:?}; create one whose subjects \
                     include {:?}, or set stream and create_stream = true",
                    config.subjects.wildcard()
                )));
            }
            Err(e) => {
                return Err(request_failure(
                    &e,
                    &format!("find the stream of subject {subject:?}"),
                ));
            }
        };
        if let Some(stream) = config.stream.as_deref()
            && holder != stream
        {
            return Err(Failure::Fatal(format!(
                "subject {subject:?} is taken by stream {holder:?}, not by the configured \
                 stream {stream:?}"
            )));
        }
    }
    Ok(())
}

/// Connects, authenticates and checks the stream, without publishing: what `pglive check`
/// asks of the server. Returns what it found.
pub async fn probe(config: &NatsSinkConfig) -> Result<String, String> {
    let client = connect(config).await.map_err(Failure::message)?;
    let js = jetstream::new(client);
    if config.create_stream
        && let Some(name) = config.stream.as_deref()
    {
        return match js.get_stream(name).await {
            Ok(_) => Ok(format!(
                "stream {name:?} exists (its subjects and duplicate window are set at start)"
            )),
            Err(e) if stream_missing(&e) => Ok(format!("stream {name:?} will be created at start")),
            Err(e) => Err(request_failure(&e, &format!("look up stream {name:?}")).message()),
        };
    }
    check_subjects(&js, config)
        .await
        .map_err(Failure::message)?;
    let streams = match config.stream.as_deref() {
        Some(name) => format!("stream {name:?}"),
        None => "a stream".to_owned(),
    };
    Ok(format!("{streams} takes every subject"))
}

#[cfg(test)]
mod tests;
