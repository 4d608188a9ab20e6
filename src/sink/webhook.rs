//! The webhook sink: HTTP POSTs of events to a URL, signed per the Standard Webhooks
//! specification, acknowledged only on a 2xx answer — or, with a `preset`, to a relay's
//! publish API (Ably, Centrifugo, Pusher Channels; see [`format`]): the same connection,
//! retries and resume-skip, another path, authentication and body.
//!
//! A batch goes out as requests of at most `batch_max_events` events and `batch_max_bytes`
//! of JSON each, one after another on one keep-alive connection: with one event per request
//! the body is the LiveEvent itself, otherwise a JSON array of them in commit order (a
//! preset plans its own requests: see `ably`, `centrifugo`, `pusher`). Each
//! request carries `webhook-id` (its event's `meta.id`, or `<first>..<last>` of a batch
//! with `:` as `.`: the same when the request is sent again, another when a batch is cut
//! differently), `webhook-timestamp` and `webhook-signature` (`v1,` and the base64
//! HMAC-SHA256 of `{id}.{timestamp}.{body}` with the secret's key).
//!
//! A connection error, a timeout, 408, 429 or a 5xx is retried (after the driver's backoff,
//! and at least as long as `Retry-After` asks); a batch sent again skips the requests the
//! receiver already acknowledged. 401 and 403 (refused credentials) stop pglive. Any other
//! answer (another 4xx, a redirect) is a rejection: pglive stops with the status and the
//! start of the body, or with `on_rejected = "skip"` logs it, counts it and goes on.

mod ably;
mod centrifugo;
mod format;
mod pusher;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sha2::Sha256;
use tokio_util::task::AbortOnDropHandle;

pub use ably::DEFAULT_URL as ABLY_URL;
pub use centrifugo::DEFAULT_SEPARATOR as CENTRIFUGO_SEPARATOR;
pub use format::{ChannelMap, Format, Key, Planned};
pub use pusher::{DEFAULT_SEPARATOR as PUSHER_SEPARATOR, MAX_BATCH as PUSHER_MAX_BATCH, Pusher};

use super::tls::client_config;
use super::{Batch, Delivery, Sink, SinkError, delivered};
use crate::checkpoint::Seq;
use crate::status::{SinkStatus, lock, metric};

pub const NAME: &str = "webhook";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 1;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1 << 20;
/// The longest `Retry-After` honoured: a receiver cannot park pglive for longer per attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// How much of an answer's body is read (and quoted, up to [`QUOTED_BODY`]): enough for a
/// Centrifugo batch's replies.
const MAX_ANSWER_BYTES: usize = 1 << 20;
const QUOTED_BODY: usize = 200;

/// What to do with a request the receiver rejects (a 4xx other than 408 and 429, a redirect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRejected {
    /// Stop pglive with the status and the start of the answer.
    Fail,
    /// Log it, count it (`pglive_sink_rejected_total`) and go on: its events are lost to this
    /// receiver, on purpose.
    Skip,
}

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>`; the key must be 24 to 64 bytes, as the specification says.
    /// Errors never quote the secret.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let b64 = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (a Standard Webhooks secret)")?;
        let key = BASE64
            .decode(b64)
            .map_err(|_| "the part after whsec_ is not base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; Standard Webhooks keys are 24 to 64 bytes",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// `v1,<signature>` of a request.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// An extra request header; its value is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ********", self.name)
    }
}

/// A resolved `[[sinks]] type = "webhook"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSinkConfig {
    /// `http://` or `https://`, without user info: the receiver, or a preset's API base.
    pub url: url::Url,
    /// What the requests look like and how they are authenticated.
    pub format: Format,
    /// The mapped channels (their LiveEvent names): `check` asks Ably about the first.
    pub channels: Vec<String>,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub on_rejected: OnRejected,
    pub max_backoff: Duration,
}

/// Why a request failed.
enum Failure {
    Retry(String, Option<Duration>),
    Rejected(String),
    Fatal(String),
}

pub struct WebhookSink {
    config: WebhookSinkConfig,
    /// For `https://`, built at the first connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    rejected: metrics::Counter,
    conn: Option<Connection>,
    /// Requests of which batch the receiver acknowledged: the oldest batch, sent again after
    /// a failure, skips those.
    progress: Arc<Mutex<(Seq, usize)>>,
    /// Connected, and no batch sent yet.
    resuming: bool,
    /// What the last retryable answer asked to wait.
    retry_after: Option<Duration>,
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDropHandle<()>,
}

impl WebhookSink {
    /// `status`: the sink's, for its metric label.
    pub fn new(config: WebhookSinkConfig, status: &SinkStatus) -> WebhookSink {
        WebhookSink {
            rejected: metrics::counter!(metric::SINK_REJECTED, "sink" => status.label.clone()),
            config,
            tls: None,
            conn: None,
            progress: Arc::new(Mutex::new((0, 0))),
            resuming: false,
            retry_after: None,
        }
    }

    fn shown(&self) -> String {
        shown(&self.config.url)
    }

    fn error(&self, failure: Failure) -> SinkError {
        match failure {
            Failure::Retry(m, _) => SinkError::retryable(NAME, format!("{}: {m}", self.shown())),
            Failure::Rejected(m) | Failure::Fatal(m) => {
                SinkError::fatal(NAME, format!("{}: {m}", self.shown()))
            }
        }
    }

    /// Sends one request and judges the answer.
    async fn post(&mut self, planned: &Planned) -> Result<(), Failure> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(Failure::Retry("not connected".into(), None))?;
        let (target, headers) = self.config.format.authorize(planned, unix_now());
        let request = Call {
            method: hyper::Method::POST,
            target,
            headers,
            body: planned.body.clone(),
        };
        let (status, retry_after, body) =
            match exchange(conn, &self.config.url, request, self.config.timeout).await {
                Ok(answer) => answer,
                Err(failure) => {
                    self.conn = None;
                    return Err(failure);
                }
            };
        self.config
            .format
            .judge(status, retry_after, body.as_deref(), planned)
    }
}

/// One request, ready to go.
struct Call {
    method: hyper::Method,
    target: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// The status, `Retry-After` and body of an answer (`None`: longer than
/// [`MAX_ANSWER_BYTES`]).
type Answer = (hyper::StatusCode, Option<Duration>, Option<Bytes>);

/// Sends `call` on `conn` and reads the answer within `timeout`. A failure while reading
/// the body (a connection reset) is retried like one while sending.
async fn exchange(
    conn: &mut Connection,
    url: &url::Url,
    call: Call,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let mut request = hyper::Request::builder()
        .method(call.method)
        .uri(call.target)
        .header(hyper::header::HOST, host_header(url))
        .header(
            hyper::header::USER_AGENT,
            concat!("pglive/", env!("CARGO_PKG_VERSION")),
        );
    if !call.body.is_empty() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in call.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(call.body))
        .map_err(|e| Failure::Fatal(format!("cannot build the request: {e}")))?;
    let failed = |e: &dyn fmt::Display| Failure::Retry(format!("request failed: {e}"), None);
    let exchange = async {
        conn.sender.ready().await.map_err(|e| failed(&e))?;
        let answer = conn
            .sender
            .send_request(request)
            .await
            .map_err(|e| failed(&e))?;
        let status = answer.status();
        let retry_after = retry_after(answer.headers());
        let body = match Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
        {
            Ok(body) => Some(body.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => None,
            Err(e) => {
                let what = format!("reading the answer to a {status} failed: {e}");
                return Err(Failure::Retry(what, None));
            }
        };
        Ok((status, retry_after, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(Failure::Retry(
            format!("no answer within {timeout:?}"),
            None,
        )),
        Ok(answer) => answer,
    }
}

/// Logs the events of `planned` sent without their ids.
fn refetch_sent(planned: &Planned, preset: &str) {
    for id in &planned.refetch {
        tracing::info!(sink = NAME, event = %id, preset,
            "event over the relay's size limit sent without its ids (payload {{}}): subscribers refetch");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The start of an answer's body, for messages.
fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY)]).into_owned()
}

/// Sorts an answer: 2xx delivered; 408, 429 and 5xx worth retrying; 401 and 403 fatal;
/// anything else rejected.
fn judge(
    status: hyper::StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let quoted = quote(body);
    let what = format!("the receiver answered {status}: {quoted:?}");
    match status.as_u16() {
        408 | 429 | 500..=599 => Err(Failure::Retry(what, retry_after)),
        // Refused credentials would refuse every request: never skipped.
        401 | 403 => Err(Failure::Fatal(format!(
            "{what} (401 and 403 stop pglive whatever on_rejected says)"
        ))),
        _ => Err(Failure::Rejected(what)),
    }
}

/// `Retry-After` in seconds (an HTTP date is not honoured: the backoff applies).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The URL for messages and logs: its origin only, since receivers often take a token in
/// the path or query (`/services/T0/B0/<token>`), which must not reach a log.
pub fn shown(url: &url::Url) -> String {
    let rest = match (url.path(), url.query()) {
        ("/", None) => "",
        _ => "/…",
    };
    format!("{}{rest}", url.origin().ascii_serialization())
}

/// Opens a connection to the URL's host: TCP, TLS for `https://` (with `tls`, or settings
/// built here), then HTTP/1.1.
async fn open(
    config: &WebhookSinkConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Connection, Failure> {
    let url = &config.url;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let timeout = config.timeout;
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Failure::Retry(format!("no connection within {timeout:?}"), None))?
    .map_err(|e| Failure::Retry(format!("cannot connect: {e}"), None))?;
    let _ = tcp.set_nodelay(true);
    if url.scheme() == "https" {
        let tls = match tls {
            Some(tls) => tls,
            None => Arc::new(client_config(config.ca_file.as_deref()).map_err(Failure::Fatal)?),
        };
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|_| Failure::Fatal("the URL's host is not a valid TLS server name".into()))?;
        let stream = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| Failure::Retry(format!("no TLS handshake within {timeout:?}"), None))?
        .map_err(tls_failure)?;
        handshake(TokioIo::new(stream)).await
    } else {
        handshake(TokioIo::new(tcp)).await
    }
}

/// A certificate that does not verify will not verify next time either.
fn tls_failure(e: std::io::Error) -> Failure {
    let what = format!("TLS: {e}");
    match crate::source::tls::certificate_refused(&e) {
        true => Failure::Fatal(format!(
            "{what} — the receiver's certificate is not trusted: set ca_file to the CA that signed it, and make sure the URL's host is a name in the certificate"
        )),
        false => Failure::Retry(what, None),
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<Connection, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Retry(format!("HTTP handshake failed: {e}"), None))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection {
        sender,
        _driver: AbortOnDropHandle::new(driver),
    })
}

/// What `pglive check` can tell without publishing: whether the receiver is reachable (and,
/// for `https://`, its certificate trusted), and for a preset whether the relay accepts the
/// credentials. Ok: what was verified.
pub async fn probe(config: &WebhookSinkConfig) -> Result<String, String> {
    let message = |f: Failure| match f {
        Failure::Retry(m, _) | Failure::Rejected(m) | Failure::Fatal(m) => m,
    };
    let mut conn = open(config, None).await.map_err(message)?;
    let shown = shown(&config.url);
    let channel = config.channels.first().map(String::as_str);
    let Some(probe) = config.format.probe(&config.url, channel, unix_now()) else {
        return Ok(format!("reached the receiver at {shown}"));
    };
    let call = Call {
        method: probe.method,
        target: probe.target,
        headers: probe.headers,
        body: probe.body,
    };
    let (status, _, body) = exchange(&mut conn, &config.url, call, config.timeout)
        .await
        .map_err(message)?;
    config
        .format
        .probe_verdict(status, body.as_deref().unwrap_or_default())
        .map(|ok| format!("{ok} at {shown}"))
}

impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        if let Some(wait) = self.retry_after.take() {
            tracing::info!(sink = NAME, wait = ?wait, "waiting as the receiver's Retry-After asks");
            tokio::time::sleep(wait).await;
        }
        self.conn = None;
        if self.config.url.scheme() == "https" && self.tls.is_none() {
            let tls = client_config(self.config.ca_file.as_deref())
                .map_err(|e| self.error(Failure::Fatal(e)))?;
            self.tls = Some(Arc::new(tls));
        }
        let conn = open(&self.config, self.tls.clone())
            .await
            .map_err(|f| self.error(f))?;
        self.conn = Some(conn);
        self.resuming = true;
        Ok(())
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        let requests = self.config.format.plan(
            &self.config.url,
            &batch.events,
            self.config.batch_max_events,
            self.config.batch_max_bytes,
        );
        let done = match std::mem::take(&mut self.resuming) {
            true => {
                let p = lock(&self.progress);
                if p.0 == batch.seq { p.1 } else { 0 }
            }
            false => 0,
        };
        for (i, planned) in requests.iter().enumerate().skip(done) {
            let id = &planned.id;
            if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
                // The receiver closed the connection after an answer (or while idle): open
                // another.
                let conn = open(&self.config, self.tls.clone()).await;
                self.conn = Some(conn.map_err(|f| self.error(f))?);
            }
            let outcome = match &planned.refused {
                Some(why) => Err(Failure::Rejected(why.clone())),
                None => self.post(planned).await,
            };
            match outcome {
                Ok(()) if planned.refetch.is_empty() => {}
                Ok(()) => refetch_sent(planned, self.config.format.preset()),
                Err(Failure::Rejected(why)) if self.config.on_rejected == OnRejected::Skip => {
                    self.rejected.increment(1);
                    tracing::error!(sink = NAME, webhook_id = %id, url = %self.shown(),
                        "request rejected, {why}; skipped (on_rejected = \"skip\")");
                }
                Err(Failure::Rejected(why)) => {
                    return Err(self.error(Failure::Rejected(format!(
                        "request {id} rejected, {why} (on_rejected = \"skip\" would skip it)"
                    ))));
                }
                Err(Failure::Retry(why, wait)) => {
                    self.retry_after = wait;
                    return Err(self.error(Failure::Retry(why, None)));
                }
                Err(f @ Failure::Fatal(_)) => return Err(self.error(f)),
            }
            *lock(&self.progress) = (batch.seq, i + 1);
        }
        Ok(delivered())
    }

    fn max_backoff(&self) -> Duration {
        self.config.max_backoff
    }
}

#[cfg(test)]
mod tests;
