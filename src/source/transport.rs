//! Reaching the server, for both connections: a TCP or Unix socket, the SSLRequest and the TLS
//! handshake, and what the resulting link is worth — whether a man in the middle could read it
//! (no TLS, or a certificate nobody verified) and the channel-binding hash. The password rule
//! lives here too: no cleartext or MD5 password over a link a man in the middle could read.
//! The replication connection applies it in its own startup code; the control connection
//! (tokio-postgres, which cannot refuse an authentication method) reads through [`AuthGuard`],
//! which fails the read that would deliver such a request, and gets the finished TLS session
//! through [`Established`].

use std::fmt;
use std::future::{Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ConnInfo, Host, SslMode};
use super::error::SourceError;
use super::tls;

/// A connected byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What a man in the middle could do with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A local Unix socket: no network in between.
    Unix,
    /// Plain TCP: anyone on the path reads it.
    Plain,
    /// TLS, but the certificate was not verified: whoever answers is trusted.
    TlsUnverified,
    /// TLS with a certificate verified against the root certificates.
    TlsVerified,
}

impl Link {
    /// Whether a password sent in the clear (or as an MD5 response) reaches only the server.
    pub fn protects_passwords(self) -> bool {
        matches!(self, Link::Unix | Link::TlsVerified)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Link::TlsUnverified | Link::TlsVerified)
    }
}

/// A connected, possibly encrypted stream to the server, ready for the startup message.
pub struct Transport {
    pub io: Box<dyn Io>,
    pub link: Link,
    /// `tls-server-end-point` data for SCRAM-SHA-256-PLUS (TLS only).
    pub binding: Option<Vec<u8>>,
}

/// Connects to the server in `info` and negotiates TLS as its `sslmode` says.
pub async fn connect(info: &ConnInfo) -> Result<Transport, SourceError> {
    let io_err = |what: &'static str| move |e| SourceError::Io { what, source: e };
    let host = match &info.host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", info.port));
            let s = UnixStream::connect(&path)
                .await
                .map_err(io_err("connecting to the Unix socket"))?;
            return Ok(Transport {
                io: Box::new(s),
                link: Link::Unix,
                binding: None,
            });
        }
        Host::Tcp(host) => host,
    };
    let mut tcp = TcpStream::connect((host.as_str(), info.port))
        .await
        .map_err(io_err("connecting"))?;
    tcp.set_nodelay(true)
        .map_err(io_err("configuring the socket"))?;
    // As tokio-postgres and libpq do: a dead peer is eventually noticed even when idle.
    let _ = socket2::SockRef::from(&tcp).set_keepalive(true);
    let Some(setup) = tls::client_config(info)? else {
        return Ok(Transport {
            io: Box::new(tcp),
            link: Link::Plain,
            binding: None,
        });
    };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(io_err("requesting TLS"))?;
    // Exactly one byte: anything after it belongs to the TLS handshake.
    let answer = tcp.read_u8().await.map_err(io_err("requesting TLS"))?;
    match answer {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                SourceError::Config(
                    "the host in postgres.url is not a valid TLS server name".into(),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&setup.config))
                .connect(name, tcp)
                .await
                .map_err(tls_error)?;
            let binding = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls::server_end_point(c));
            Ok(Transport {
                io: Box::new(stream),
                link: if setup.verifies {
                    Link::TlsVerified
                } else {
                    Link::TlsUnverified
                },
                binding,
            })
        }
        b'N' if info.sslmode == SslMode::Prefer => Ok(Transport {
            io: Box::new(tcp),
            link: Link::Plain,
            binding: None,
        }),
        b'N' => Err(SourceError::Fatal(
            "the server does not support TLS, but sslmode requires it".into(),
        )),
        other => Err(SourceError::Protocol(format!(
            "unexpected answer {other:#x} to SSLRequest"
        ))),
    }
}

/// The kinds of password request that reveal the password (or something as good as it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordRequest {
    Cleartext,
    Md5,
}

/// The server asked for a cleartext or MD5 password over a link that does not protect it,
/// and pglive did not send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsecurePassword {
    pub request: PasswordRequest,
    pub link: Link,
}

impl fmt::Display for InsecurePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, risk) = match self.request {
            PasswordRequest::Cleartext => ("a cleartext password", "would read it"),
            PasswordRequest::Md5 => ("an MD5 password response", "could crack it offline"),
        };
        let link = match self.link {
            Link::Plain => "a connection that is not encrypted",
            _ => "a TLS connection whose certificate is not verified",
        };
        write!(
            f,
            "the server asked for {what} over {link}, so pglive did not send it: a man in the \
             middle {risk}. Fix one of: verify the server with sslmode=verify-full and \
             sslrootcert=<the CA's certificate file> in postgres.url; connect over the \
             server's Unix socket (host=/var/run/postgresql); have the server use SCRAM \
             (password_encryption = 'scram-sha-256', set the role's password again, and \
             scram-sha-256 in pg_hba.conf); or accept the risk with \
             postgres.allow_insecure_password = true"
        )
    }
}

impl std::error::Error for InsecurePassword {}

/// Whether `request` may be answered over `link`: `Err` unless the link protects passwords or
/// the configuration accepts the risk.
pub fn check_password_request(
    info: &ConnInfo,
    link: Link,
    request: PasswordRequest,
) -> Result<(), InsecurePassword> {
    if link.protects_passwords() || info.allow_insecure_password {
        Ok(())
    } else {
        Err(InsecurePassword { request, link })
    }
}

/// The server asked for a password, and the URL has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPassword {
    pub user: String,
}

impl fmt::Display for NoPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server asks user {:?} for a password, but the URL has none (set it in \
             postgres.url or postgres.password_file)",
            self.user
        )
    }
}

impl std::error::Error for NoPassword {}

/// The refusal ([`InsecurePassword`], [`NoPassword`]) an error of the control connection
/// carries, as a message; such an error is final.
pub fn refusal_in(e: &tokio_postgres::Error) -> Option<String> {
    let io = std::error::Error::source(e)?.downcast_ref::<io::Error>()?;
    let inner = io.get_ref()?;
    inner
        .downcast_ref::<InsecurePassword>()
        .map(ToString::to_string)
        .or_else(|| inner.downcast_ref::<NoPassword>().map(ToString::to_string))
}

/// Reads a session's startup messages as they pass and fails the read that would deliver an
/// `AuthenticationCleartextPassword` (`R`, code 3) or `AuthenticationMD5Password` (code 5)
/// over a link where the policy forbids answering it: the client library never sees the
/// request, so it never sends the password. Without a password, any password request
/// (SASL, code 10, included) fails the same way, with a message saying so. After
/// `AuthenticationOk` (code 0) no request can come, and bytes pass untouched.
pub struct AuthGuard<S> {
    inner: S,
    link: Link,
    /// The user, when the URL has no password.
    no_password: Option<String>,
    /// Scanning ended: passwords may be sent, or authentication is over.
    done: bool,
    /// The current message's tag and length, as far as read.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body not read yet.
    body_left: usize,
    /// An `R` message's code, as far as read.
    code: [u8; 4],
    code_len: usize,
}

impl<S> AuthGuard<S> {
    pub fn new(inner: S, info: &ConnInfo, link: Link) -> AuthGuard<S> {
        let no_password = info.password.is_none().then(|| info.user.clone());
        let allowed = check_password_request(info, link, PasswordRequest::Cleartext).is_ok();
        AuthGuard {
            inner,
            link,
            done: allowed && no_password.is_none(),
            no_password,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            code: [0; 4],
            code_len: 0,
        }
    }

    /// Follows the message boundaries through `bytes`.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), io::Error> {
        let refuse = |e: Box<dyn std::error::Error + Send + Sync>| {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, e))
        };
        while !bytes.is_empty() && !self.done {
            if self.header_len < 5 {
                let n = (5 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 5 {
                    let len = i32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]);
                    // A malformed length is the client library's to report.
                    self.body_left = usize::try_from(len).unwrap_or(4).saturating_sub(4);
                    self.code_len = 0;
                }
            } else if self.header[0] == b'R' && self.code_len < 4 {
                let n = (4 - self.code_len).min(bytes.len()).min(self.body_left);
                self.code[self.code_len..self.code_len + n].copy_from_slice(&bytes[..n]);
                self.code_len += n;
                self.body_left -= n;
                bytes = &bytes[n..];
                if self.code_len == 4 {
                    let code = u32::from_be_bytes(self.code);
                    if let (Some(user), 3 | 5 | 10) = (&self.no_password, code) {
                        return refuse(Box::new(NoPassword { user: user.clone() }));
                    }
                    let request = match code {
                        0 => {
                            self.done = true;
                            None
                        }
                        3 => Some(PasswordRequest::Cleartext),
                        5 => Some(PasswordRequest::Md5),
                        _ => None,
                    };
                    if let Some(request) = request
                        && self.no_password.is_none()
                    {
                        return refuse(Box::new(InsecurePassword {
                            request,
                            link: self.link,
                        }));
                    }
                }
            } else {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
            }
            if self.header_len == 5 && self.body_left == 0 {
                // The message is complete (a malformed `R` too short for its code included).
                self.header_len = 0;
                self.code_len = 0;
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && !this.done
            && let Err(refused) = this.scan(&buf.filled()[before..])
        {
            // Not one byte of the request reaches the reader.
            buf.set_filled(before);
            return Poll::Ready(Err(refused));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A tokio-postgres "TLS connector" for a stream whose TLS session [`connect`] already
/// established: it hands the stream over with the session's channel-binding data, so that
/// SCRAM-SHA-256-PLUS and `channel_binding=require` work as with the library's own TLS.
pub struct Established {
    pub binding: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsConnect<S> for Established {
    type Stream = Bound<S>;
    type Error = io::Error;
    type Future = Ready<Result<Bound<S>, io::Error>>;

    fn connect(self, stream: S) -> Self::Future {
        ready(Ok(Bound {
            inner: stream,
            binding: self.binding,
        }))
    }
}

/// A stream that is TLS underneath, with its channel-binding data.
pub struct Bound<S> {
    inner: S,
    binding: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Bound<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match &self.binding {
            Some(data) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(data.clone()),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A failed handshake, noting whether the server's certificate is what failed.
fn tls_error(e: std::io::Error) -> SourceError {
    let certificate = super::tls::certificate_refused(&e);
    SourceError::Tls {
        message: e.to_string(),
        certificate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(url: &str, allow: bool) -> ConnInfo {
        let mut i = ConnInfo::parse(url).unwrap();
        i.allow_insecure_password = allow;
        i
    }

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as i32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn other(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Scans `stream` in pieces of `step` bytes; the first refusal, if any.
    fn scan_in_steps(
        guard: &mut AuthGuard<()>,
        stream: &[u8],
        step: usize,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for piece in stream.chunks(step) {
            guard
                .scan(piece)
                .map_err(|e| e.into_inner().expect("a refusal"))?;
        }
        Ok(())
    }

    #[test]
    fn the_guard_refuses_cleartext_and_md5_requests_over_an_unprotected_link() {
        let i = info("postgres://u:pw@h/d", false);
        for (request, code, extra) in [
            (PasswordRequest::Cleartext, 3, &b""[..]),
            (PasswordRequest::Md5, 5, &b"salt"[..]),
        ] {
            // A notice first, so that message boundaries are followed.
            let mut stream = other(b'N', b"SNOTICE\0Mhello\0\0");
            stream.extend(auth(code, extra));
            for step in [1, 2, 3, 5, 7, stream.len()] {
                for link in [Link::Plain, Link::TlsUnverified] {
                    let mut g = AuthGuard::new((), &i, link);
                    let err = scan_in_steps(&mut g, &stream, step).unwrap_err();
                    let err = err.downcast_ref::<InsecurePassword>().unwrap();
                    assert_eq!(*err, InsecurePassword { request, link }, "step {step}");
                    let text = err.to_string();
                    assert!(
                        text.contains("verify-full") && text.contains("allow_insecure_password")
                    );
                    assert!(!text.contains("pw@"), "{text}");
                }
                for link in [Link::Unix, Link::TlsVerified] {
                    let mut g = AuthGuard::new((), &i, link);
                    scan_in_steps(&mut g, &stream, step).unwrap();
                }
            }
        }
    }

    #[test]
    fn the_guard_lets_scram_pass_and_stops_looking_after_authentication_ok() {
        let i = info("postgres://u:pw@h/d", false);
        let mut stream = auth(10, b"SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=abc,s=xyz,i=4096"));
        stream.extend(auth(12, b"v=sig"));
        stream.extend(auth(0, b""));
        // After AuthenticationOk, anything: even bytes that look like a cleartext request.
        stream.extend(auth(3, b""));
        for step in [1, 4, 9, stream.len()] {
            let mut g = AuthGuard::new((), &i, Link::Plain);
            scan_in_steps(&mut g, &stream, step).unwrap();
            assert!(g.done);
        }
    }

    #[test]
    fn the_guard_is_off_when_allowed() {
        let stream = auth(3, b"");
        let mut g = AuthGuard::new((), &info("postgres://u:pw@h/d", true), Link::Plain);
        assert!(g.done);
        g.scan(&stream).unwrap();
    }

    #[test]
    fn without_a_password_any_password_request_is_refused_saying_so() {
        for (code, extra) in [(3, &b""[..]), (5, b"salt"), (10, b"SCRAM-SHA-256\0\0")] {
            for link in [Link::Plain, Link::Unix] {
                let mut g = AuthGuard::new((), &info("postgres://bob@h/d", true), link);
                let err = scan_in_steps(&mut g, &auth(code, extra), 3).unwrap_err();
                assert_eq!(
                    err.downcast_ref::<NoPassword>(),
                    Some(&NoPassword { user: "bob".into() })
                );
            }
        }
        let mut g = AuthGuard::new((), &info("postgres://bob@h/d", false), Link::Plain);
        scan_in_steps(&mut g, &auth(0, b""), 1).unwrap();
        assert!(g.done, "trust needs no password");
    }
}
