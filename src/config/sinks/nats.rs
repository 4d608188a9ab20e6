//! `type = "nats"`: a NATS JetStream stream, the subjects each table's channel becomes, and how
//! many messages may await their PubAcks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::DEFAULT_MAX_BACKOFF;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, at_least_one, duration, read_secret_file};
use crate::map::TableRule;
use crate::sink::nats::subject::{check_prefix, subject};
use crate::sink::nats::{self, NatsAuth, NatsSinkConfig, NatsUrl, ParsedUrl, Subjects};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawNats {
    url: String,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    subject_prefix: Option<String>,
    stream: Option<String>,
    create_stream: Option<bool>,
    duplicate_window: Option<RawDuration>,
    max_inflight: Option<u64>,
    timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
}

impl RawNats {
    /// The sink of `sinks[index]`, whose subjects must suit every mapped table; none when its
    /// URL, credentials or subjects are unusable (reported).
    pub(super) fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let parsed = NatsUrl::parse(&self.url)
            .map_err(|e| issues.push(key("url"), e))
            .ok();
        let auth = parsed.as_ref().and_then(|p| self.auth(issues, &key, p));
        let subjects = subjects(issues, &key, self.subject_prefix.as_deref(), tables);
        let stream = self.stream(issues, &key);
        let mut positive =
            |k: &str, v: Option<u64>, default: usize| at_least_one(issues, &key(k), v, default);
        let max_inflight = positive(
            "max_inflight",
            self.max_inflight,
            nats::DEFAULT_MAX_INFLIGHT,
        );
        let mut time =
            |k: &str, raw: &Option<RawDuration>, default| duration(issues, &key(k), raw, default);
        let timeout = time("timeout", &self.timeout, nats::DEFAULT_TIMEOUT);
        let max_backoff = time("max_backoff", &self.max_backoff, DEFAULT_MAX_BACKOFF);
        let duplicate_window = time(
            "duplicate_window",
            &self.duplicate_window,
            nats::DEFAULT_DUPLICATE_WINDOW,
        );
        if let Some(ca) = self.ca_file.as_ref().filter(|p| !p.is_file()) {
            issues.push(
                key("ca_file"),
                format!("{} is not a readable file", ca.display()),
            );
        }
        Some(SinkConfig::Nats(Box::new(NatsSinkConfig {
            url: parsed?.url,
            auth: auth?,
            subjects: subjects?,
            stream,
            create_stream: self.create_stream.unwrap_or(false),
            duplicate_window,
            max_inflight,
            timeout,
            max_backoff,
            tls: self.tls.unwrap_or(false),
            ca_file: self.ca_file,
        })))
    }

    /// The credentials: the URL's user and password (a user alone is a token), the password
    /// from `password_file`, or the token from `token_file`.
    fn auth(
        &self,
        issues: &mut Issues,
        key: &dyn Fn(&str) -> String,
        url: &ParsedUrl,
    ) -> Option<NatsAuth> {
        let mut read = |k: &str, file: &Option<PathBuf>| {
            file.as_deref()
                .map(|f| read_secret_file(f).map_err(|e| issues.push(key(k), e)))
        };
        let password = read("password_file", &self.password_file);
        let token = read("token_file", &self.token_file);
        match (url.user.clone(), url.password.clone(), password, token) {
            (_, _, Some(Err(())), _) | (_, _, _, Some(Err(()))) => None,
            (None, None, None, None) => Some(NatsAuth::None),
            (None, None, None, Some(Ok(token))) => Some(NatsAuth::Token(token)),
            (Some(user), Some(password), None, None)
            | (Some(user), None, Some(Ok(password)), None) => {
                Some(NatsAuth::UserPassword { user, password })
            }
            (Some(token), None, None, None) => Some(NatsAuth::Token(token)),
            (None, Some(_), _, _) | (None, None, Some(_), _) => {
                issues.push(
                    key("url"),
                    "a password needs a user name in the URL (nats://user@host with password_file)",
                );
                None
            }
            _ => {
                issues.push(
                    key("token_file"),
                    "give either a token (token_file, or nats://token@host) or a user and \
                     password (in the URL, or password_file), not both",
                );
                None
            }
        }
    }

    /// The stream's name, checked; required by `create_stream`.
    fn stream(&self, issues: &mut Issues, key: &dyn Fn(&str) -> String) -> Option<String> {
        if let Some(name) = &self.stream
            && (name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\' | '\0')))
        {
            issues.push(
                key("stream"),
                format!(
                    "{name:?} is not a stream name: it must be non-empty, without whitespace, \
                     `.`, `*`, `>`, `/` or `\\`"
                ),
            );
        }
        if self.create_stream == Some(true) && self.stream.is_none() {
            issues.push(
                key("create_stream"),
                "needs stream, the name of the stream to create",
            );
        }
        self.stream.clone()
    }
}

/// The subjects of every mapped table's channel under the prefix; each table whose channel
/// cannot become a subject is reported.
fn subjects(
    issues: &mut Issues,
    key: &dyn Fn(&str) -> String,
    prefix: Option<&str>,
    tables: &[TableRule],
) -> Option<Subjects> {
    let prefix = prefix.unwrap_or(nats::DEFAULT_PREFIX);
    if let Err(e) = check_prefix(prefix) {
        issues.push(key("subject_prefix"), e);
        return None;
    }
    let mut ok = true;
    for rule in tables {
        for channel in rule.channel_samples() {
            if let Err(e) = subject(prefix, &channel) {
                issues.push(
                    key("type"),
                    format!(
                        "table {}.{}: {e}; set the table's channel to one without it",
                        rule.schema, rule.name
                    ),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    // The fixed channels' subjects are made once, and a sample of each template's (so that
    // `check` and the start-up look for a stream that takes them); a template's others per
    // event.
    let samples: Vec<String> = tables.iter().flat_map(|t| t.channel_samples()).collect();
    Subjects::new(prefix, samples.iter().map(String::as_str))
        .map_err(|e| issues.push(key("subject_prefix"), e))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{SinkConfig, from_toml};
    use crate::sink::nats::{self, NatsAuth, NatsSinkConfig};

    /// A file with table `posts` (channel `channel`) and one nats sink with `keys`.
    fn config_text(channel: &str, keys: &str) -> String {
        format!(
            "[postgres]\nurl = \"postgres://u:pw@h/db\"\n\n[[tables]]\nname = \"posts\"\n\
             channel = \"{channel}\"\n\n[[sinks]]\ntype = \"nats\"\n{keys}\n"
        )
    }

    fn resolved(text: &str) -> NatsSinkConfig {
        match from_toml(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .sinks
            .pop()
        {
            Some(SinkConfig::Nats(c)) => *c,
            other => panic!("expected a nats sink, got {other:?}"),
        }
    }

    fn problems(text: &str) -> String {
        from_toml(text).expect_err("invalid").to_string()
    }

    #[test]
    fn the_config_takes_defaults_credentials_and_every_key() {
        let c = resolved(&config_text(
            "resources/posts",
            "url = \"nats://127.0.0.1\"",
        ));
        assert_eq!(c.subjects.all(), ["pglive.resources.posts"]);
        assert_eq!(c.auth, NatsAuth::None);
        assert_eq!((c.stream, c.create_stream), (None, false));
        assert_eq!(c.max_inflight, nats::DEFAULT_MAX_INFLIGHT);
        assert_eq!(c.timeout, nats::DEFAULT_TIMEOUT);
        assert_eq!(c.duplicate_window, nats::DEFAULT_DUPLICATE_WINDOW);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = resolved(&config_text(
            "live/posts",
            &format!(
                "url = \"nats://pglive@h:4333\"\npassword_file = \"{}\"\nsubject_prefix = \"app.cdc\"\n\
                 stream = \"CDC\"\ncreate_stream = true\nduplicate_window = \"10m\"\nmax_inflight = 64\n\
                 timeout = \"3s\"\nmax_backoff = \"7s\"\ntls = true\nca_file = \"{}\"",
                file.display(),
                file.display()
            ),
        ));
        assert_eq!(
            c.auth,
            NatsAuth::UserPassword {
                user: "pglive".into(),
                password: "from-file".into()
            }
        );
        assert!(!format!("{c:?}").contains("from-file"), "{c:?}");
        assert_eq!(c.subjects.all(), ["app.cdc.live.posts"]);
        assert_eq!(c.stream.as_deref(), Some("CDC"));
        assert!(c.create_stream && c.tls);
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        assert_eq!((c.max_inflight, c.timeout), (64, Duration::from_secs(3)));
        assert_eq!(c.max_backoff, Duration::from_secs(7));

        let c = resolved(&config_text(
            "resources/posts",
            &format!("url = \"nats://h\"\ntoken_file = \"{}\"", file.display()),
        ));
        assert_eq!(c.auth, NatsAuth::Token("from-file".into()));
        let c = resolved(&config_text("resources/posts", "url = \"nats://tok@h\""));
        assert_eq!(c.auth, NatsAuth::Token("tok".into()));
    }

    #[test]
    fn config_errors_name_the_key_and_the_table() {
        let err = problems(&config_text("resources/my posts", "url = \"nats://h\""));
        assert!(
            err.contains("sinks[0].type")
                && err.contains("table public.posts")
                && err.contains("whitespace"),
            "{err}"
        );
        let err = problems(&config_text(
            "resources/posts",
            "url = \"nats://u:SECRET@h\"\nsubject_prefix = \"$SYS\"\nstream = \"a.b\"\nmax_inflight = 0",
        ));
        for key in [
            "sinks[0].subject_prefix",
            "sinks[0].stream",
            "sinks[0].max_inflight",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        assert!(!err.contains("SECRET"), "{err}");
        let err = problems(&config_text(
            "resources/posts",
            "url = \"nats://h\"\ncreate_stream = true",
        ));
        assert!(err.contains("sinks[0].create_stream"), "{err}");
        let err = problems(&config_text(
            "resources/posts",
            "url = \"nats://u:pw@h\"\ntoken_file = \"/dev/null\"",
        ));
        assert!(err.contains("not both"), "{err}");
    }
}
