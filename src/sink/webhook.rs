//! The webhook sink: HTTP POSTs of events to a URL, signed per the Standard Webhooks
//! specification, acknowledged only on a 2xx answer.
//!
//! A batch goes out as requests of at most `batch_max_events` events and `batch_max_bytes`
//! of JSON each, one after another on one keep-alive connection: with one event per request
//! the body is the LiveEvent itself, otherwise a JSON array of them in commit order. Each
//! request carries `webhook-id` (the `meta.id` of its first event: the same when the request
//! is sent again), `webhook-timestamp` and `webhook-signature` (`v1,` and the base64
//! HMAC-SHA256 of `{id}.{timestamp}.{body}` with the secret's key).
//!
//! A connection error, a timeout, 408, 429 or a 5xx is retried (after the driver's backoff,
//! and at least as long as `Retry-After` asks); a batch sent again skips the requests the
//! receiver already acknowledged. Any other answer (another 4xx, a redirect) is a rejection:
//! pglive stops with the status and the start of the body, or with `on_rejected = "skip"`
//! logs it, counts it and goes on.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Sha256;
use tokio_util::task::AbortOnDropHandle;

use super::{Batch, Delivery, Sink, SinkError, delivered};
use crate::checkpoint::Seq;
use crate::event::LiveEvent;
use crate::status::{SinkStatus, lock, metric};

pub const NAME: &str = "webhook";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 1;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1 << 20;
/// The longest `Retry-After` honoured: a receiver cannot park pglive for longer per attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// How much of an answer's body is read (and quoted, up to [`QUOTED_BODY`]).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
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
    /// `http://` or `https://`, without user info.
    pub url: url::Url,
    pub secret: Secret,
    pub headers: Vec<Header>,
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
    async fn post(&mut self, id: &str, body: Bytes) -> Result<(), Failure> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(Failure::Retry("not connected".into(), None))?;
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = &self.config.url[url::Position::BeforePath..];
        let mut request = hyper::Request::post(target)
            .header(hyper::header::HOST, host_header(&self.config.url))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("pglive/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                self.config.secret.sign(id, timestamp, &body),
            );
        for h in &self.config.headers {
            request = request.header(h.name.clone(), h.value.clone());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Failure::Fatal(format!("cannot build the request: {e}")))?;
        let exchange = async {
            conn.sender.ready().await?;
            let answer = conn.sender.send_request(request).await?;
            let status = answer.status();
            let retry_after = retry_after(answer.headers());
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper::Error>((status, retry_after, body))
        };
        let timeout = self.config.timeout;
        let (status, retry_after, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                self.conn = None;
                return Err(Failure::Retry(
                    format!("no answer within {timeout:?}"),
                    None,
                ));
            }
            Ok(Err(e)) => {
                self.conn = None;
                return Err(Failure::Retry(format!("request failed: {e}"), None));
            }
            Ok(Ok(answer)) => answer,
        };
        judge(status, retry_after, &body)
    }
}

/// Sorts an answer: 2xx delivered; 408, 429 and 5xx worth retrying; anything else rejected.
fn judge(
    status: hyper::StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let quoted = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY)]).into_owned();
    let what = format!("the receiver answered {status}: {quoted:?}");
    match status.as_u16() {
        408 | 429 | 500..=599 => Err(Failure::Retry(what, retry_after)),
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

/// The requests of a batch: (webhook-id, body) for runs of at most `max_events` events and
/// about `max_bytes` of JSON (a single larger event goes alone).
fn requests(events: &[LiveEvent], max_events: usize, max_bytes: usize) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        let mut bytes = events[start].json.len() + 2;
        while end < events.len()
            && end - start < max_events
            && bytes + events[end].json.len() < max_bytes
        {
            bytes += events[end].json.len() + 1;
            end += 1;
        }
        let run = &events[start..end];
        let body = if max_events == 1 {
            Bytes::copy_from_slice(&run[0].json)
        } else {
            let mut body = Vec::with_capacity(bytes);
            body.push(b'[');
            for (i, e) in run.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&e.json);
            }
            body.push(b']');
            Bytes::from(body)
        };
        out.push((run[0].id.to_string(), body));
        start = end;
    }
    out
}

/// The TLS settings for `https://`: the system's roots and `ca_file`'s.
pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let err = |e: String| format!("cannot read ca_file {}: {e}", path.display());
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
            None => Arc::new(tls_config(config.ca_file.as_deref()).map_err(Failure::Fatal)?),
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

/// Connects, as `pglive check` asks: whether the receiver is reachable (and, for `https://`,
/// its certificate trusted).
pub async fn probe(config: &WebhookSinkConfig) -> Result<(), String> {
    match open(config, None).await {
        Ok(_) => Ok(()),
        Err(Failure::Retry(m, _) | Failure::Rejected(m) | Failure::Fatal(m)) => Err(m),
    }
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
            let tls = tls_config(self.config.ca_file.as_deref())
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
        let requests = requests(
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
        for (i, (id, body)) in requests.into_iter().enumerate().skip(done) {
            if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
                // The receiver closed the connection after an answer (or while idle): open
                // another.
                let conn = open(&self.config, self.tls.clone()).await;
                self.conn = Some(conn.map_err(|f| self.error(f))?);
            }
            match self.post(&id, body).await {
                Ok(()) => {}
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
