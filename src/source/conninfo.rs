//! Connection parameters from a `postgres://` URL: where to connect, as whom, and how to
//! secure it (`sslmode`, `sslrootcert`, `channel_binding`). Shared by the replication
//! connection and the ordinary control connection. Its `Display` never shows the password.

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
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
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
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
    pub application_name: String,
    pub connect_timeout: Option<Duration>,
}

/// The URL could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConnInfoError(String);

/// Percent-decodes one URL component; `what` names it in errors (the value itself may be a
/// secret and is never repeated).
fn decode(part: &str, what: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnInfoError(format!("the {what} is not valid percent-encoded UTF-8")))
}

impl ConnInfo {
    /// Parses `postgres://user:password@host:port/dbname?param=value&…`.
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        let url = url::Url::parse(text).map_err(|e| {
            ConnInfoError(format!(
                "not a URL ({e}); expected postgres://user:password@host:port/database"
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConnInfoError(format!(
                "scheme {:?} is not postgres:// or postgresql://",
                url.scheme()
            )));
        }
        let mut info = ConnInfo {
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
            channel_binding: ChannelBindingMode::Prefer,
            application_name: "pglive".into(),
            connect_timeout: None,
        };
        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "sslmode" => info.sslmode = SslMode::parse(&value).map_err(ConnInfoError)?,
                "sslrootcert" => info.sslrootcert = Some(PathBuf::from(value)),
                "channel_binding" => {
                    info.channel_binding = match value.as_str() {
                        "disable" => ChannelBindingMode::Disable,
                        "prefer" => ChannelBindingMode::Prefer,
                        "require" => ChannelBindingMode::Require,
                        other => {
                            return Err(ConnInfoError(format!(
                                "unknown channel_binding {other:?}; use disable, prefer or require"
                            )));
                        }
                    }
                }
                "application_name" => info.application_name = value,
                "host" => {
                    info.host = if value.starts_with('/') {
                        Host::Unix(PathBuf::from(value))
                    } else {
                        Host::Tcp(value)
                    }
                }
                "port" => {
                    info.port = value
                        .parse()
                        .map_err(|_| ConnInfoError(format!("port {value:?} is not a number")))?
                }
                "user" => info.user = value,
                "password" => info.password = Some(value),
                "dbname" => info.dbname = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        ConnInfoError(format!(
                            "connect_timeout {value:?} is not a number of seconds"
                        ))
                    })?;
                    info.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
                }
                other => {
                    return Err(ConnInfoError(format!(
                        "unsupported URL parameter {other:?} (supported: sslmode, sslrootcert, \
                         channel_binding, application_name, host, port, user, password, dbname, \
                         connect_timeout)"
                    )));
                }
            }
        }
        if info.user.is_empty() {
            return Err(ConnInfoError(
                "no user name; write it as postgres://USER@host/database".into(),
            ));
        }
        if info.dbname.is_empty() {
            info.dbname = info.user.clone();
        }
        if matches!(info.host, Host::Unix(_)) && info.sslmode.verifies_certificate() {
            return Err(ConnInfoError(format!(
                "sslmode={} needs a TCP host, not a Unix socket",
                if info.sslmode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )));
        }
        if info.channel_binding == ChannelBindingMode::Require && info.sslmode == SslMode::Disable {
            return Err(ConnInfoError(
                "channel_binding=require needs TLS, but sslmode=disable".into(),
            ));
        }
        Ok(info)
    }

    /// Settings for an ordinary (non-replication) `tokio-postgres` connection.
    pub fn tokio_postgres_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            })
            .channel_binding(match self.channel_binding {
                ChannelBindingMode::Disable => tokio_postgres::config::ChannelBinding::Disable,
                ChannelBindingMode::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBindingMode::Require => tokio_postgres::config::ChannelBinding::Require,
            });
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
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
            (
                "postgres://u@h/d?bogus=1",
                "unsupported URL parameter \"bogus\"",
            ),
            ("postgres://u@h/d?port=x", "port"),
            (
                "postgres://u@h/d?sslmode=disable&channel_binding=require",
                "needs TLS",
            ),
            ("not a url", "not a URL"),
        ] {
            let err = ConnInfo::parse(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter2"));
        }
    }
}
