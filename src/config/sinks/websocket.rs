//! `type = "websocket"`: the relay pglive serves, who may connect to it, and its limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::MAX_LEEWAY;
use crate::config::issues::{Issue, Issues};
use crate::config::raw::{RawDuration, at_least_one, duration, read_secret_file};
use crate::http::DEFAULT_HEADER_TIMEOUT;
use crate::map::TableRule;
use crate::sink::websocket::{
    self, Auth, DEFAULT_CLIENT_QUEUE, DEFAULT_HISTORY, DEFAULT_HISTORY_AGE,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_PING_INTERVAL, WsSinkConfig,
};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawWebsocket {
    listen: String,
    path: Option<String>,
    jwt_secret: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    jwt_public_key_file: Option<PathBuf>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    jwt_leeway: Option<RawDuration>,
    anonymous: Option<bool>,
    allowed_origins: Option<Vec<String>>,
    history: Option<u64>,
    history_age: Option<RawDuration>,
    client_queue: Option<u64>,
    max_connections: Option<u64>,
    max_subscriptions: Option<u64>,
    max_message_bytes: Option<u64>,
    ping_interval: Option<RawDuration>,
    header_timeout: Option<RawDuration>,
}

impl RawWebsocket {
    /// The relay of `sinks[index]`, serving the channels of the mapped tables; none when its
    /// address or authentication is unusable (reported).
    pub(super) fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let (listen, path) = self.endpoint(issues, key);
        let allowed_origins = self.allowed_origins.clone().unwrap_or_default();
        let auth = self.auth(issues, key, &allowed_origins);
        let [
            client_queue,
            max_connections,
            max_message_bytes,
            max_subscriptions,
        ] = [
            ("client_queue", self.client_queue, DEFAULT_CLIENT_QUEUE),
            (
                "max_connections",
                self.max_connections,
                DEFAULT_MAX_CONNECTIONS,
            ),
            (
                "max_message_bytes",
                self.max_message_bytes,
                DEFAULT_MAX_MESSAGE_BYTES,
            ),
            (
                "max_subscriptions",
                self.max_subscriptions,
                DEFAULT_MAX_SUBSCRIPTIONS,
            ),
        ]
        .map(|(k, value, default)| at_least_one(issues, &key(k), value, default));
        let history = self.history.map_or(DEFAULT_HISTORY, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
        let [history_age, ping_interval, header_timeout] = [
            ("history_age", &self.history_age, DEFAULT_HISTORY_AGE),
            ("ping_interval", &self.ping_interval, DEFAULT_PING_INTERVAL),
            (
                "header_timeout",
                &self.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            ),
        ]
        .map(|(k, raw, default)| duration(issues, &key(k), raw, default));
        Some(SinkConfig::WebSocket(Box::new(WsSinkConfig {
            listen: listen?,
            path,
            auth: auth?,
            allowed_origins,
            channels: channels(tables),
            history,
            history_age,
            client_queue,
            max_connections,
            max_subscriptions,
            max_message_bytes,
            ping_interval,
            header_timeout,
        })))
    }

    /// The address to listen on (none when unusable, reported) and the path to serve.
    fn endpoint(
        &self,
        issues: &mut Issues,
        key: impl Fn(&str) -> String,
    ) -> (Option<SocketAddr>, String) {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                issues.push(
                    key("listen"),
                    format!(
                        "{:?} is not an address like \"127.0.0.1:8080\"",
                        self.listen
                    ),
                )
            })
            .ok();
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| websocket::DEFAULT_PATH.into());
        if !path.starts_with('/') || path.contains(['?', '#']) {
            issues.push(
                key("path"),
                format!("{path:?} must be a path starting with /"),
            );
        }
        (listen, path)
    }

    /// Who may connect (at `key(..)`): a JWT key with its claims, or anonymous clients from
    /// `allowed_origins` only.
    fn auth(
        &self,
        issues: &mut Issues,
        key: impl Fn(&str) -> String,
        allowed_origins: &[String],
    ) -> Option<Auth> {
        let anonymous = self.anonymous.unwrap_or(false);
        let auth = ws_auth(
            anonymous,
            self.jwt_secret.as_deref(),
            self.jwt_secret_file.as_deref(),
            self.jwt_public_key_file.as_deref(),
        )
        .map_err(|(k, e)| issues.push(key(k), e))
        .ok();
        if matches!(auth, Some(Auth::Anonymous)) && allowed_origins.is_empty() {
            issues.push(
                key("allowed_origins"),
                "anonymous = true requires allowed_origins: the origins of the web \
                 applications whose pages may connect, e.g. [\"https://app.example.com\"] \
                 (otherwise any web page could read every channel through its visitors' browsers)",
            );
        }
        for (k, value) in [
            ("jwt_audience", &self.jwt_audience),
            ("jwt_issuer", &self.jwt_issuer),
        ] {
            if value.as_deref() == Some("") {
                issues.push(key(k), "must not be empty");
            }
            if anonymous && value.is_some() {
                issues.push(key(k), "needs a JWT key; anonymous = true checks no token");
            }
        }
        let leeway = match self.jwt_leeway.as_ref().map(RawDuration::resolve) {
            None => websocket::auth::DEFAULT_LEEWAY,
            Some(Ok(d)) if d <= MAX_LEEWAY => d,
            Some(Ok(_)) => {
                issues.push(key("jwt_leeway"), "must be at most 5m");
                websocket::auth::DEFAULT_LEEWAY
            }
            Some(Err(e)) => {
                issues.push(key("jwt_leeway"), e);
                websocket::auth::DEFAULT_LEEWAY
            }
        };
        auth.map(|a| a.with_claims(self.jwt_audience.clone(), self.jwt_issuer.clone(), leeway))
    }
}

/// Each distinct channel of the mapped tables once, in configuration order: the only ones a
/// client may subscribe to.
fn channels(tables: &[TableRule]) -> Vec<String> {
    let mut channels: Vec<String> = Vec::new();
    for c in tables.iter().flat_map(|t| &t.channels) {
        if !channels.iter().any(|x| x == c.as_str()) {
            channels.push(c.as_str().to_owned());
        }
    }
    channels
}

/// A warning for a relay that accepts any browser `Origin`: a page on any web site could then
/// use a token its visitor's browser holds (anonymous relays must list origins).
pub(super) fn warning(index: usize, ws: &WsSinkConfig) -> Option<Issue> {
    ws.allowed_origins.is_empty().then(|| Issue {
        key: format!("sinks[{index}].allowed_origins"),
        message: "empty: a page on any web site may open connections to the relay \
                  from its visitors' browsers; list your application's origins"
            .into(),
    })
}

/// The relay's authentication from its keys: anonymous (alone), or exactly one JWT key.
/// An error names the key it concerns.
fn ws_auth(
    anonymous: bool,
    secret: Option<&str>,
    secret_file: Option<&Path>,
    public_key_file: Option<&Path>,
) -> Result<Auth, (&'static str, String)> {
    match (anonymous, secret, secret_file, public_key_file) {
        (true, None, None, None) => Ok(Auth::Anonymous),
        (true, ..) => Err((
            "anonymous",
            "anonymous = true takes no jwt_* key; remove one or the other".into(),
        )),
        (false, Some(s), None, None) => Auth::secret(s.as_bytes()).map_err(|e| ("jwt_secret", e)),
        (false, None, Some(f), None) => read_secret_file(f)
            .and_then(|secret| Auth::secret(secret.as_bytes()))
            .map_err(|e| ("jwt_secret_file", e)),
        (false, None, None, Some(f)) => std::fs::read(f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))
            .and_then(|pem| Auth::public_key(&pem))
            .map_err(|e| ("jwt_public_key_file", e)),
        (false, None, None, None) => Err((
            "jwt_secret",
            "set jwt_secret, jwt_secret_file or jwt_public_key_file (or anonymous = true, for development only)".into(),
        )),
        (false, ..) => Err((
            "jwt_secret",
            "set only one of jwt_secret, jwt_secret_file and jwt_public_key_file".into(),
        )),
    }
}
