//! `[postgres]`: the server to replicate from, the slot and publication pglive uses there, and
//! how it keeps the replication connection alive.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::issues::Issues;
use super::raw::{RawDuration, duration, read_secret_file};
use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PUBLICATION,
    DEFAULT_SLOT, DEFAULT_STATUS_INTERVAL, ENV_PREFIX,
};
use crate::source::conninfo::ConnInfo;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub conn: ConnInfo,
    pub slot: String,
    pub publication: String,
    /// `run` creates a missing publication and slot, and adds mapped tables to the publication.
    pub auto_setup: bool,
    pub status_interval: Duration,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
    /// Write a `pg_logical_emit_message` this often, so that a server whose only writes are
    /// invisible to the slot's database still lets the slot advance; none when absent.
    pub heartbeat_interval: Option<Duration>,
    /// What `run` does when PostgreSQL has invalidated the slot (`wal_status = 'lost'`).
    pub on_slot_lost: OnSlotLost,
}

/// `postgres.on_slot_lost`: what to do with a slot PostgreSQL invalidated because it held
/// more WAL than `max_slot_wal_keep_size` (the changes since its position are gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSlotLost {
    /// Exit 1 naming the cause and the fix: losing changes is the operator's call.
    #[default]
    Fail,
    /// Drop the slot, create it again, and send every mapped channel a `*` event (refetch)
    /// before any new event.
    Recreate,
}

impl std::str::FromStr for OnSlotLost {
    type Err = String;
    fn from_str(s: &str) -> Result<OnSlotLost, String> {
        match s {
            "fail" => Ok(OnSlotLost::Fail),
            "recreate" => Ok(OnSlotLost::Recreate),
            other => Err(format!(
                "{other:?} is not a policy: use \"fail\" or \"recreate\""
            )),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    url: Option<String>,
    password_file: Option<PathBuf>,
    slot: Option<String>,
    publication: Option<String>,
    auto_setup: Option<bool>,
    status_interval: Option<RawDuration>,
    connect_timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
    max_message_bytes: Option<u64>,
    heartbeat_interval: Option<RawDuration>,
    allow_insecure_password: Option<bool>,
    on_slot_lost: Option<String>,
}

/// `[postgres]` resolved, with what the warnings need to know of how it was written.
pub(super) struct Postgres {
    /// None when there is no usable connection string (reported).
    pub config: Option<PostgresConfig>,
    /// Whether `url` itself holds a password: a secret written inline.
    pub url_has_password: bool,
    pub password_file: Option<PathBuf>,
}

/// Resolves `[postgres]`; `removed` are the keys set aside as invalid (already reported).
pub(super) fn resolve_postgres(
    issues: &mut Issues,
    raw: RawPostgres,
    removed: &[String],
) -> Postgres {
    let (conn, url_has_password) = resolve_conn(issues, &raw, removed);
    let (slot, publication) = resolve_names(issues, &raw);
    let status_interval = duration(
        issues,
        "postgres.status_interval",
        &raw.status_interval,
        DEFAULT_STATUS_INTERVAL,
    );
    let connect_timeout = duration(
        issues,
        "postgres.connect_timeout",
        &raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let max_backoff = duration(
        issues,
        "postgres.max_backoff",
        &raw.max_backoff,
        DEFAULT_MAX_BACKOFF,
    );
    let max_message_bytes = match raw.max_message_bytes {
        None => DEFAULT_MAX_MESSAGE_BYTES,
        Some(n) if n >= 1024 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(_) => {
            issues.push("postgres.max_message_bytes", "must be at least 1024");
            DEFAULT_MAX_MESSAGE_BYTES
        }
    };
    let heartbeat_interval = raw.heartbeat_interval.as_ref().map(|_| {
        duration(
            issues,
            "postgres.heartbeat_interval",
            &raw.heartbeat_interval,
            DEFAULT_STATUS_INTERVAL,
        )
    });
    let on_slot_lost = match raw.on_slot_lost.as_deref().map(str::parse) {
        None => OnSlotLost::default(),
        Some(Ok(policy)) => policy,
        Some(Err(e)) => {
            issues.push("postgres.on_slot_lost", e);
            OnSlotLost::default()
        }
    };
    let config = conn.map(|conn| PostgresConfig {
        conn,
        slot,
        publication,
        auto_setup: raw.auto_setup.unwrap_or(true),
        status_interval,
        connect_timeout,
        max_backoff,
        max_message_bytes,
        heartbeat_interval,
        on_slot_lost,
    });
    Postgres {
        config,
        url_has_password,
        password_file: raw.password_file,
    }
}

/// The connection string, with the password from `password_file` when set; and whether the
/// URL held a password of its own.
fn resolve_conn(
    issues: &mut Issues,
    raw: &RawPostgres,
    removed: &[String],
) -> (Option<ConnInfo>, bool) {
    let mut url_has_password = false;
    let conn = match &raw.url {
        None if removed.iter().any(|k| k == "url") => None,
        None => {
            issues.push(
                "postgres.url",
                format!("missing; set it in the file or with {ENV_PREFIX}POSTGRES__URL"),
            );
            None
        }
        Some(url) => match ConnInfo::parse(url) {
            Ok(mut c) => {
                url_has_password = c.password.is_some();
                c.allow_insecure_password = raw.allow_insecure_password.unwrap_or(false);
                if let Some(file) = &raw.password_file {
                    match read_secret_file(file) {
                        Ok(pw) => c.password = Some(pw),
                        Err(e) => issues.push("postgres.password_file", e),
                    }
                }
                if c.sslmode.verifies_certificate() && !crate::source::tls::has_root_cert(&c) {
                    issues.push(
                        "postgres.url",
                        crate::source::tls::TlsSetupError::NoRootCert(c.sslmode.name()).to_string(),
                    );
                }
                Some(c)
            }
            Err(e) => {
                issues.push("postgres.url", e.to_string());
                None
            }
        },
    };
    (conn, url_has_password)
}

/// The slot's and the publication's names.
fn resolve_names(issues: &mut Issues, raw: &RawPostgres) -> (String, String) {
    let slot = raw.slot.clone().unwrap_or_else(|| DEFAULT_SLOT.into());
    if !valid_slot_name(&slot) {
        issues.push(
            "postgres.slot",
            format!("{slot:?} is not a valid slot name: use 1 to 63 lower-case letters, digits and underscores"),
        );
    }
    let publication = raw
        .publication
        .clone()
        .unwrap_or_else(|| DEFAULT_PUBLICATION.into());
    if publication.is_empty() || publication.len() > 63 || publication.contains('\0') {
        issues.push(
            "postgres.publication",
            format!("{publication:?} is not a valid publication name (1 to 63 bytes)"),
        );
    }
    (slot, publication)
}

fn valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
