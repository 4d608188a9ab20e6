//! Connection parameters from a `postgres://` URL: where to connect, as whom, and how to
//! secure it (`sslmode`, `sslrootcert`, `sslcert`/`sslkey`, `channel_binding`). Shared by the
//! replication connection and the ordinary control connection. Its `Display` never shows the
//! password, and no error quotes a value from the URL (an unencoded password can end up in
//! any part of it).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// How TLS is used, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, without verifying the certificate; plain otherwise.
    Prefer,
    /// TLS, without verifying the certificate.
    Require,
    /// TLS, certificate chain verified against the root certificates; host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported; use disable, prefer, require, verify-ca or verify-full"
                        .into(),
                );
            }
            _ => {
                return Err(
                    "unknown sslmode; use disable, prefer, require, verify-ca or verify-full"
                        .into(),
                );
            }
        })
    }

    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The name as written in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Whether SCRAM channel binding (`SCRAM-SHA-256-PLUS`) is used, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    Disable,
    /// Use it when TLS is on and the server offers it.
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

impl ChannelBindingMode {
    fn parse(text: &str) -> Result<ChannelBindingMode, ConnInfoError> {
        match text {
            "disable" => Ok(ChannelBindingMode::Disable),
            "prefer" => Ok(ChannelBindingMode::Prefer),
            "require" => Ok(ChannelBindingMode::Require),
            _ => Err(ConnInfoError(
                "unknown channel_binding; use disable, prefer or require".into(),
            )),
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// Parsed connection parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// Root certificates (PEM), or `system` for the system's store.
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate chain (PEM) and its private key; both or neither.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
    pub application_name: String,
    pub connect_timeout: Option<Duration>,
    /// Send a cleartext or MD5 password even over a connection a man in the middle could
    /// read (TCP without a verified certificate). Not a URL parameter: the
    /// `postgres.allow_insecure_password` setting.
    pub allow_insecure_password: bool,
}

/// The URL could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConnInfoError(String);

/// What to do when a password was written into the URL unencoded (its special characters end
/// the user-info part early, and the rest lands in the host, port, path or query), for URL
/// errors; `file_key` is the key that keeps it out of the URL.
pub fn percent_hint(file_key: &str) -> String {
    format!(
        "a password containing ?, #, /, @ or % must be percent-encoded (%3F, %23, %2F, %40, \
         %25), or kept out of the URL with {file_key}"
    )
}

/// libpq's connection parameters that pglive does not take: an error may name one of these,
/// and only these. Anything else in the query may be the tail of an unencoded password
/// (`postgres://u:1234?secretword=1@h/db`), so it is never shown.
const LIBPQ_PARAMETERS: &[&str] = &[
    "hostaddr",
    "passfile",
    "require_auth",
    "options",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslnegotiation",
    "sslcompression",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "client_encoding",
];

/// Percent-decodes one URL component; `what` names it in errors (the value itself may be a
/// secret and is never repeated).
fn decode(part: &str, what: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnInfoError(format!("the {what} is not valid percent-encoded UTF-8")))
}

/// Parses the URL and refuses what shows a password written unencoded (or no connection
/// URL at all).
fn parse_url(text: &str, hint: &str) -> Result<url::Url, ConnInfoError> {
    let url = url::Url::parse(text).map_err(|e| {
        ConnInfoError(format!(
            "not a URL ({e}); expected postgres://user:password@host:port/database; {hint}"
        ))
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(ConnInfoError(format!(
            "scheme {:?} is not postgres:// or postgresql://",
            url.scheme()
        )));
    }
    if url.fragment().is_some() {
        return Err(ConnInfoError(format!(
            "the URL has a #fragment, which connection URLs do not use; {hint}"
        )));
    }
    // A database name with `@` is legal but rare; an unencoded password holding `/` puts
    // its tail, host included, into the path.
    if url.path().contains('@') {
        return Err(ConnInfoError(format!(
            "the database name contains an unencoded @ (write a real one as %40); {hint}"
        )));
    }
    Ok(url)
}

/// The error for a query parameter pglive does not take. The name is shown only when it
/// cannot be a piece of a password.
fn unsupported_parameter(name: &str, hint: &str) -> ConnInfoError {
    const SUPPORTED: &str = "supported: sslmode, sslrootcert, sslcert, sslkey, \
         channel_binding, application_name, host, port, user, password, dbname, \
         connect_timeout";
    ConnInfoError(if LIBPQ_PARAMETERS.contains(&name) {
        format!("unsupported URL parameter {name:?} ({SUPPORTED})")
    } else {
        format!(
            "the URL has an unknown parameter (not shown: it may be part of a \
             password; {SUPPORTED}); {hint}"
        )
    })
}

impl ConnInfo {
    /// Parses `postgres://user:password@host:port/dbname?param=value&…`.
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        let hint = percent_hint("postgres.password_file");
        let url = parse_url(text, &hint)?;
        let mut info = ConnInfo::from_url(&url)?;
        let mut sslmode_set = false;
        for (key, value) in url.query_pairs() {
            info.set_parameter(&key, value.into_owned(), &hint)?;
            sslmode_set |= key == "sslmode";
        }
        info.complete(sslmode_set)?;
        info.check_tls()?;
        Ok(info)
    }

    /// What the URL's user info, host, port and path say; defaults for the rest.
    fn from_url(url: &url::Url) -> Result<ConnInfo, ConnInfoError> {
        Ok(ConnInfo {
            host: match url.host() {
                Some(url::Host::Ipv6(a)) => Host::Tcp(a.to_string()),
                Some(h) => Host::Tcp(h.to_string()),
                None => Host::Tcp("localhost".into()),
            },
            port: url.port().unwrap_or(5432),
            user: decode(url.username(), "user name")?,
            password: url.password().map(|p| decode(p, "password")).transpose()?,
            dbname: decode(url.path().trim_start_matches('/'), "database name")?,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBindingMode::Prefer,
            application_name: "pglive".into(),
            connect_timeout: None,
            allow_insecure_password: false,
        })
    }

    /// Applies one `key=value` of the URL's query; `hint` ends the error for a name that may
    /// be part of a password.
    fn set_parameter(&mut self, key: &str, value: String, hint: &str) -> Result<(), ConnInfoError> {
        match key {
            "sslmode" => self.sslmode = SslMode::parse(&value).map_err(ConnInfoError)?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "sslcert" => self.sslcert = Some(PathBuf::from(value)),
            "sslkey" => self.sslkey = Some(PathBuf::from(value)),
            "channel_binding" => self.channel_binding = ChannelBindingMode::parse(&value)?,
            "application_name" => self.application_name = value,
            "host" => {
                self.host = if value.starts_with('/') {
                    Host::Unix(PathBuf::from(value))
                } else {
                    Host::Tcp(value)
                }
            }
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| ConnInfoError("the port parameter is not a port number".into()))?
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = value,
            "connect_timeout" => {
                let secs: u64 = value.parse().map_err(|_| {
                    ConnInfoError("connect_timeout is not a number of seconds".into())
                })?;
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            other => return Err(unsupported_parameter(other, hint)),
        }
        Ok(())
    }

    /// Fills in what the URL left out (the database is named after the user; verify-full
    /// under the system's roots) and refuses what cannot work without it.
    fn complete(&mut self, sslmode_set: bool) -> Result<(), ConnInfoError> {
        if self.user.is_empty() {
            return Err(ConnInfoError(
                "no user name; write it as postgres://USER@host/database".into(),
            ));
        }
        if self.dbname.is_empty() {
            self.dbname = self.user.clone();
        }
        // As libpq 16: the system's roots trust any public CA, so only a host name check makes
        // a certificate mean something.
        if self.sslrootcert.as_deref() == Some(std::path::Path::new("system")) {
            if !sslmode_set {
                self.sslmode = SslMode::VerifyFull;
            } else if self.sslmode != SslMode::VerifyFull {
                return Err(ConnInfoError(format!(
                    "sslrootcert=system requires sslmode=verify-full, not sslmode={} (any public \
                     CA can sign a certificate for another host name)",
                    self.sslmode.name()
                )));
            }
        }
        Ok(())
    }

    /// Refuses TLS settings that contradict each other or the host.
    fn check_tls(&self) -> Result<(), ConnInfoError> {
        if matches!(self.host, Host::Unix(_)) && self.sslmode.verifies_certificate() {
            return Err(ConnInfoError(format!(
                "sslmode={} needs a TCP host, not a Unix socket",
                self.sslmode.name()
            )));
        }
        if self.channel_binding == ChannelBindingMode::Require && self.sslmode == SslMode::Disable {
            return Err(ConnInfoError(
                "channel_binding=require needs TLS, but sslmode=disable".into(),
            ));
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(_), None) | (None, Some(_)) => Err(ConnInfoError(
                "sslcert and sslkey go together: set both (the client certificate and its \
                 private key) or neither"
                    .into(),
            )),
            (Some(_), Some(_)) if self.sslmode == SslMode::Disable => Err(ConnInfoError(
                "sslcert needs TLS, but sslmode=disable".into(),
            )),
            (Some(_), Some(_)) if matches!(self.host, Host::Unix(_)) => Err(ConnInfoError(
                "sslcert needs a TCP host: a Unix socket does not use TLS".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Settings for an ordinary (non-replication) `tokio-postgres` session over a stream that
    /// is already connected and, when `tls`, already encrypted (see `transport`).
    pub fn tokio_postgres_config(&self, tls: bool) -> tokio_postgres::Config {
        use tokio_postgres::config::{ChannelBinding, SslMode as Ssl, SslNegotiation};
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            // The TLS session exists already: "direct" skips the SSLRequest, and the
            // connector only hands the session over (with its channel-binding data).
            .ssl_mode(if tls { Ssl::Require } else { Ssl::Disable })
            .ssl_negotiation(if tls {
                SslNegotiation::Direct
            } else {
                SslNegotiation::Postgres
            })
            .channel_binding(match self.channel_binding {
                ChannelBindingMode::Disable => ChannelBinding::Disable,
                ChannelBindingMode::Prefer => ChannelBinding::Prefer,
                ChannelBindingMode::Require => ChannelBinding::Require,
            });
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        c
    }
}

/// Shows where and as whom, never the password.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => {
                write!(f, "postgres://{}@[{h}]:{}", self.user, self.port)?
            }
            Host::Tcp(h) => write!(f, "postgres://{}@{h}:{}", self.user, self.port)?,
            Host::Unix(p) => write!(f, "postgres://{}@{}:{}", self.user, p.display(), self.port)?,
        }
        write!(f, "/{}", self.dbname)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("url", &format_args!("{self}"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c = ConnInfo::parse(
            "postgres://pg%20live:s%40cret@db.example:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "pg live");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.dbname, "app");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn defaults_and_unix_sockets() {
        let c = ConnInfo::parse("postgresql:///?user=bob&host=/var/run/postgresql").unwrap();
        assert_eq!(c.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(c.port, 5432);
        assert_eq!(c.dbname, "bob");
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn display_hides_the_password() {
        let c = ConnInfo::parse("postgres://u:hunter2@h/d").unwrap();
        assert_eq!(c.to_string(), "postgres://u@h:5432/d");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        for (url, want) in [
            ("mysql://u@h/d", "scheme"),
            ("postgres://h/d", "no user name"),
            ("postgres://u@h/d?sslmode=sometimes", "unknown sslmode"),
            ("postgres://u@h/d?sslmode=allow", "not supported"),
            ("postgres://u@h/d?bogus=1", "unknown parameter (not shown"),
            (
                "postgres://u@h/d?gssencmode=disable",
                "unsupported URL parameter \"gssencmode\"",
            ),
            ("postgres://u@h/d?sslmode=verify-ful", "unknown sslmode"),
            ("postgres://u@h/d?port=x", "port"),
            (
                "postgres://u@h/d?sslmode=disable&channel_binding=require",
                "needs TLS",
            ),
            ("not a url", "not a URL"),
            ("postgres://u@h/d?sslcert=/c.pem", "go together"),
            ("postgres://u@h/d?sslkey=/k.pem", "go together"),
            (
                "postgres://u@h/d?sslcert=/c&sslkey=/k&sslmode=disable",
                "sslcert needs TLS",
            ),
            (
                "postgres://u@h/d?sslcert=/c&sslkey=/k&host=/run/pg",
                "needs a TCP host",
            ),
        ] {
            let err = ConnInfo::parse(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter2"));
        }
    }

    #[test]
    fn no_error_echoes_a_value_from_the_url() {
        for url in [
            // Unencoded passwords: the rest lands in the query, fragment, path or port.
            "postgres://u:1234?SECRET@h/db",
            "postgres://u:1234?SECRET=x@h/db",
            "postgres://u:1234#SECRET@h/db",
            "postgres://u:12/SECRET@h/db",
            "postgres://u:ab?SECRET@h/db",
            "postgres://u:1234?SECRET&x@h/db",
            // Bad values of known parameters.
            "postgres://u@h/d?sslmode=SECRET",
            "postgres://u@h/d?channel_binding=SECRET",
            "postgres://u@h/d?port=SECRET",
            "postgres://u@h/d?connect_timeout=SECRET",
        ] {
            let err = ConnInfo::parse(url).expect_err(url).to_string();
            assert!(!err.contains("SECRET"), "{url}: {err}");
        }
        let err = ConnInfo::parse("postgres://u:1234?SECRET@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("percent-encoded"), "{err}");
        assert!(err.contains("unknown parameter"), "{err}");
        // Encoded, the same password is fine.
        let c = ConnInfo::parse("postgres://u:1234%3FSECRET@h/db").unwrap();
        assert_eq!(c.password.as_deref(), Some("1234?SECRET"));
        assert_eq!(c.host, Host::Tcp("h".into()));
    }

    #[test]
    fn only_libpq_parameter_names_are_shown() {
        let err = ConnInfo::parse("postgres://u@h/d?target_session_attrs=any")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"target_session_attrs\""), "{err}");
        // An unencoded password whose tail looks like a parameter name.
        let err = ConnInfo::parse("postgres://u:1234?mysecretword=1@h/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("mysecretword"), "{err}");
        assert!(
            err.contains("not shown") && err.contains("percent-encoded"),
            "{err}"
        );
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        let c = ConnInfo::parse("postgres://u@h/d?sslrootcert=system").unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        let c = ConnInfo::parse("postgres://u@h/d?sslrootcert=system&sslmode=verify-full").unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        for mode in ["disable", "prefer", "require", "verify-ca"] {
            let err = ConnInfo::parse(&format!(
                "postgres://u@h/d?sslmode={mode}&sslrootcert=system"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("sslrootcert=system requires sslmode=verify-full")
                    && err.contains(&format!("sslmode={mode}")),
                "{mode}: {err}"
            );
        }
    }

    #[test]
    fn client_certificates_are_taken_in_pairs() {
        let c = ConnInfo::parse("postgres://u@h/d?sslcert=/c.pem&sslkey=/k.pem").unwrap();
        assert_eq!(c.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/k.pem")));
        assert!(!c.allow_insecure_password);
    }
}
