//! `pglive check`: verifies every prerequisite of `run` against the live server — wal_level,
//! the role's privileges, each mapped table and its key, the publication and the slot — and
//! says, for each problem, the setting or SQL that fixes it. For a relay node's file
//! ([`relay`]): its broker and stream, and its listeners.

use std::fmt;
use std::net::SocketAddr;

use tokio_postgres::Client;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::config::{Config, Issue, OnSlotLost, PostgresConfig, RelayConfig, SinkConfig};
use crate::map::row::Columns;
use crate::sink::amqp::{self, AmqpSinkConfig};
use crate::source::SourceError;
use crate::source::catalog::{self, SlotInfo};
use crate::source::row_filter;
use crate::source::sql::{quote_ident, quote_literal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One verified fact or problem.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag}  {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check. A connection failure is itself a finding (and ends the checks).
pub async fn run(config: &Config) -> Vec<Finding> {
    let pg = &config.postgres;
    let mut out = local(config).await;
    let client = match catalog::connect(&pg.conn, pg.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail(
                format!("cannot connect to {}: {e}", pg.conn),
                "check postgres.url, that the server is running and reachable, and pg_hba.conf",
            ));
            return out;
        }
    };
    out.push(Finding::ok(format!("connected to {}", pg.conn)));
    if let Err(e) = checks(config, &client, &mut out).await {
        out.push(Finding::fail(
            format!("a check query failed: {e}"),
            "make sure the role can read pg_catalog views",
        ));
    }
    out
}

/// `pglive check` of a relay node's file: its warnings, its listeners, and the broker with
/// its stream.
pub async fn relay(config: &RelayConfig) -> Vec<Finding> {
    let mut out = warned(&config.warnings);
    let stream = &config.stream;
    out.push(match crate::relay::probe(stream).await {
        Ok(()) => Finding::ok(format!(
            "relay: connected to {}; stream {:?} exists",
            stream.url, stream.stream
        )),
        Err(e) => Finding::fail(
            format!(
                "relay: cannot read stream {:?} at {}: {e}",
                stream.stream, stream.url
            ),
            "check relay.url (host, port, user, password, vhost) and relay.stream, and that \
             the source runs with an amqp sink that has the same `stream`",
        ),
    });
    out.push(
        sink(
            0,
            &SinkConfig::WebSocket(Box::new(config.websocket.clone())),
        )
        .await,
    );
    out.extend(config.ops.listen.map(ops_listener));
    out
}

/// What needs no PostgreSQL: what the configuration itself weakens (unverified server, secrets
/// others can read), each sink, and the ops listener.
async fn local(config: &Config) -> Vec<Finding> {
    let mut out = warned(&config.warnings);
    for (i, s) in config.sinks.iter().enumerate() {
        out.push(sink(i, s).await);
    }
    out.extend(config.ops.listen.map(ops_listener));
    out
}

/// What the configuration itself weakens, as findings.
fn warned(warnings: &[Issue]) -> Vec<Finding> {
    warnings
        .iter()
        .map(|w| Finding {
            level: Level::Warn,
            what: w.to_string(),
            fix: None,
        })
        .collect()
}

/// Whether the ops listener can listen on `listen`.
fn ops_listener(listen: SocketAddr) -> Finding {
    bind_probe(
        listen,
        "ops.listen",
        format!("ops endpoints can listen on {listen}"),
        format!("ops.listen {listen}"),
        "ops.listen",
    )
}

/// Whether a listener can bind `addr` now (the probe's socket is closed at once). `ok` is the
/// finding when it can; `in_use` names the address when something else holds it, `context`
/// leads any other failure; `key` is the setting that moves the listener.
fn bind_probe(addr: SocketAddr, key: &str, ok: String, in_use: String, context: &str) -> Finding {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Finding::ok(ok),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::warn(
            format!("{in_use} is in use (by a running pglive?)"),
            format!("stop what listens there, or change {key}"),
        ),
        Err(e) => Finding::fail(
            format!("{context}: cannot listen on {addr}: {e}"),
            format!("change {key}"),
        ),
    }
}

/// Whether the broker of AMQP sink `index` takes the connection, and the exchange is usable.
async fn broker(index: usize, config: &AmqpSinkConfig) -> Finding {
    let exchange = &config.exchange;
    match amqp::probe(config).await {
        Ok(true) => Finding::ok(format!(
            "sinks[{index}]: connected to {}; exchange {exchange:?} exists",
            config.url
        )),
        Ok(false) if config.declare => Finding::ok(format!(
            "sinks[{index}]: connected to {}; exchange {exchange:?} will be declared at start",
            config.url
        )),
        Ok(false) => Finding::fail(
            format!(
                "sinks[{index}]: exchange {exchange:?} does not exist on {}",
                config.url
            ),
            format!("create it (a durable topic exchange), or set sinks[{index}].declare = true"),
        ),
        Err(e) => Finding::fail(
            format!(
                "sinks[{index}]: cannot use the broker at {}: {e}",
                config.url
            ),
            format!(
                "check sinks[{index}].url (host, port, user, password, vhost) and that the broker is running"
            ),
        ),
    }
}

/// Whether sink `index` can take events (without sending any).
async fn sink(index: usize, sink: &SinkConfig) -> Finding {
    match sink {
        SinkConfig::Stdout => Finding::ok(format!("sinks[{index}]: stdout")),
        SinkConfig::Amqp(amqp) => broker(index, amqp).await,
        SinkConfig::WebSocket(ws) => bind_probe(
            ws.listen,
            &format!("sinks[{index}].listen"),
            format!(
                "sinks[{index}]: the WebSocket relay can listen on {}",
                ws.listen
            ),
            format!("sinks[{index}]: {}", ws.listen),
            &format!("sinks[{index}]"),
        ),
        SinkConfig::File { path, .. } => file(index, path),
        SinkConfig::Webhook(hook) => receiver(index, hook).await,
        SinkConfig::Mqtt(mqtt) => mqtt_broker(index, mqtt).await,
        SinkConfig::Redis(redis) => redis_server(index, redis).await,
        SinkConfig::Nats(nats) => nats_server(index, nats).await,
    }
}

/// Whether Redis sink `index` connects and authenticates, and what it can tell of the key or
/// the Socket.IO servers (without writing or publishing anything).
async fn redis_server(index: usize, config: &crate::sink::redis::RedisSinkConfig) -> Finding {
    let at = format!(
        "sinks[{index}]: Redis at {} ({} mode)",
        config.url,
        config.mode.name()
    );
    match crate::sink::redis::probe(config).await {
        Ok((found, None)) => Finding::ok(format!("{at}: {found}")),
        Ok((found, Some(warning))) => Finding::warn(format!("{at}: {found}"), warning),
        Err(e) => Finding::fail(
            format!("{at}: {e}"),
            format!(
                "check sinks[{index}].url (host, port, user, password, database), sinks[{index}].password_file and that Redis is running"
            ),
        ),
    }
}

/// Whether the broker of MQTT sink `index` accepts the connection and its credentials
/// (CONNACK accepted), without publishing.
async fn mqtt_broker(index: usize, config: &crate::sink::mqtt::MqttSinkConfig) -> Finding {
    match crate::sink::mqtt::probe(config).await {
        Ok(()) => Finding::ok(format!(
            "sinks[{index}]: connected to {} and authenticated",
            config.url
        )),
        Err(e) => Finding::fail(
            format!("sinks[{index}]: cannot use the broker: {e}"),
            format!(
                "check sinks[{index}].url (host, port, user, password), sinks[{index}].password_file and that the broker is running"
            ),
        ),
    }
}

/// Whether webhook sink `index` reaches its receiver (TCP, and TLS for `https://`) and, with
/// a preset, whether the relay accepts the credentials (a request that publishes nothing).
/// Whether a Standard Webhooks receiver accepts the signature shows only with a real
/// request, which `check` does not send.
async fn receiver(index: usize, hook: &crate::sink::webhook::WebhookSinkConfig) -> Finding {
    let shown = crate::sink::webhook::shown(&hook.url);
    match crate::sink::webhook::probe(hook).await {
        Ok(what) => Finding::ok(format!("sinks[{index}]: {what}")),
        Err(e) => Finding::fail(
            format!("sinks[{index}]: cannot reach the receiver at {shown}: {e}"),
            format!(
                "check sinks[{index}].url, its credentials, sinks[{index}].ca_file and that the receiver is running"
            ),
        ),
    }
}

/// Whether NATS sink `index` connects and authenticates, and a stream takes its subjects (or
/// will be created).
async fn nats_server(index: usize, config: &crate::sink::nats::NatsSinkConfig) -> Finding {
    let url = &config.url;
    match crate::sink::nats::probe(config).await {
        Ok(found) => Finding::ok(format!("sinks[{index}]: connected to {url}; {found}")),
        Err(e) => Finding::fail(
            format!("sinks[{index}]: cannot use the NATS server at {url}: {e}"),
            format!(
                "check sinks[{index}].url, its credentials, sinks[{index}].stream and that nats-server runs with JetStream (-js)"
            ),
        ),
    }
}

/// Whether file sink `index` can append to `path` (or create it), without writing to it.
fn file(index: usize, path: &Path) -> Finding {
    let shown = path.display();
    let fix = format!("make {shown} writable by this user, or change sinks[{index}].path");
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_fifo() => Finding::ok(format!(
            "sinks[{index}]: {shown} is a named pipe (events flow once a reader opens it)"
        )),
        Ok(_) => match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => Finding::ok(format!("sinks[{index}]: {shown} is writable")),
            Err(e) => Finding::fail(format!("sinks[{index}]: cannot write {shown}: {e}"), fix),
        },
        Err(_) => {
            // Not there yet: probe the directory with a file of our own.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let probe = dir.join(format!(".pglive-check-{}", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    Finding::ok(format!("sinks[{index}]: {shown} can be created"))
                }
                Err(e) => Finding::fail(
                    format!(
                        "sinks[{index}]: cannot create files in {}: {e}",
                        dir.display()
                    ),
                    fix,
                ),
            }
        }
    }
}

/// The checks against the server, in order: its settings, the role, each mapped table, the
/// publication, the slot, and what bounds the WAL the slot holds.
async fn checks(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    server_settings(client, out).await?;
    role(client, out).await?;
    tables(config, client, out).await?;
    publication(config, client, out).await?;
    row_filters(config, client, out).await?;
    slot(&config.postgres, client, out).await?;
    wal_retention(client, out).await
}

/// The value of the server setting `name`.
async fn setting(client: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map(|r| r.get::<_, String>(0))
}

/// Logical decoding is on, and the server allows replication connections and slots.
async fn server_settings(client: &Client, out: &mut Vec<Finding>) -> Result<(), SourceError> {
    let wal_level = setting(client, "wal_level").await?;
    out.push(if wal_level == "logical" {
        Finding::ok("wal_level is logical")
    } else {
        Finding::fail(
            format!("wal_level is {wal_level}, logical decoding needs logical"),
            "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL",
        )
    });
    for name in ["max_wal_senders", "max_replication_slots"] {
        let value = setting(client, name).await?;
        if value.parse::<i64>().unwrap_or(0) < 1 {
            out.push(Finding::fail(
                format!("{name} is {value}"),
                format!("ALTER SYSTEM SET {name} = 10;  -- then restart PostgreSQL"),
            ));
        }
    }
    Ok(())
}

/// The role may replicate.
async fn role(client: &Client, out: &mut Vec<Finding>) -> Result<(), SourceError> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    out.push(if can_replicate {
        Finding::ok(format!("role {user} may replicate"))
    } else {
        Finding::fail(
            format!("role {user} lacks the REPLICATION privilege"),
            format!("ALTER ROLE {} WITH REPLICATION;", quote_ident(&user)),
        )
    });
    Ok(())
}

/// Each mapped table exists, and its changes can name their rows.
async fn tables(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let pg = &config.postgres;
    for (i, t) in config.tables.iter().enumerate() {
        let name = t.qualified();
        let quoted = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        out.push(match catalog::table_identity(client, &t.schema, &t.name).await? {
            None => Finding::fail(
                format!(
                    "table {name} (tables[{i}]) does not exist (looked up: table {:?} in schema {:?})",
                    t.name, t.schema
                ),
                format!("create the table, or correct tables[{i}].name"),
            ),
            Some(id) if !id.usable() => Finding::fail(
                format!(
                    "table {name} has no primary key or usable REPLICA IDENTITY: \
                     UPDATE and DELETE on it fail once it is published, and events could not name rows"
                ),
                id.fix(&t.schema, &t.name),
            ),
            Some(id) if id.partitioned && catalog::publication_via_root(client, &pg.publication).await? == Some(false) => Finding::fail(
                format!("table {name} is partitioned, but publication {} publishes partitions under their own names, so its changes would be missed", pg.publication),
                format!("ALTER PUBLICATION {} SET (publish_via_partition_root = true);", quote_ident(&pg.publication)),
            ),
            Some(id) if !id.unroutable_columns(t).is_empty() => Finding::fail(
                catalog::unroutable(t, &id),
                format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL;"),
            ),
            Some(id) if !id.has_ids() => Finding::warn(
                format!("table {name} has REPLICA IDENTITY FULL but no primary key: its events carry no ids, so clients refetch everything"),
                format!("ALTER TABLE {quoted} ADD PRIMARY KEY (<key columns>);"),
            ),
            Some(id) => Finding::ok(format!(
                "table {name} → {} (key: {})",
                t.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
                if id.primary_key.is_empty() { "replica identity index".to_owned() } else { id.primary_key.join(", ") }
            )),
        });
    }
    Ok(())
}

/// Something `run` needs is missing: with auto_setup, `run` creates it, so this is a warning
/// (and `check` before `run`, systemd's ExecStartPre, lets the first start go ahead).
fn missing(pg: &PostgresConfig, what: String, fix: String) -> Finding {
    if pg.auto_setup {
        Finding::warn(
            format!("{what}: `pglive run` will create it (postgres.auto_setup)"),
            fix,
        )
    } else {
        Finding::fail(what, fix)
    }
}

/// Each table's row filter: the configured ones are in the publication (and let UPDATE and
/// DELETE work: the filter's columns must be in the replica identity), and the publication
/// filters no other mapped table behind the configuration's back.
async fn row_filters(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let pg = &config.postgres;
    let publication = quote_ident(&pg.publication);
    for (i, t) in config.tables.iter().enumerate() {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let name = t.qualified();
        if t.row_filter.is_some() || t.columns != Columns::All {
            match row_filter::require_server(client, i, t).await {
                Ok(()) => {}
                Err(SourceError::Fatal(why)) => {
                    out.push(Finding::fail(
                        why,
                        format!("remove tables[{i}].where, or upgrade the server"),
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        match (row_filter::current(client, &pg.publication, t).await?, &t.row_filter) {
            // Not in the publication (reported with it), or nothing to say.
            (None, _) | (Some(None), None) => {}
            (Some(None), Some(filter)) => out.push(missing(
                pg,
                format!("publication {} publishes every row of {name}, but tables[{i}].where filters them", pg.publication),
                format!("pglive setup --config <file>   (or: ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table} WHERE ({filter});)"),
            )),
            (Some(Some(now)), configured) => out.push(match row_filter::breaks_writes(client, t).await? {
                Some(why) => Finding::fail(
                    format!("UPDATE and DELETE on {name} fail under its publication row filter {now}: {why}"),
                    format!("filter on columns of the replica identity (tables[{i}].where), or ALTER TABLE {table} REPLICA IDENTITY FULL;"),
                ),
                None if configured.is_none() => Finding::warn(
                    format!("publication {} filters the rows of {name} by {now}, which tables[{i}] does not say: only those rows give events", pg.publication),
                    format!("set tables[{i}].where, or ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table};"),
                ),
                None => Finding::ok(format!("table {name}: publication row filter {now}")),
            }),
        }
        if t.columns == Columns::All {
            let left_out = row_filter::unconfigured_column_list(client, &pg.publication, t).await?;
            if !left_out.is_empty() {
                out.push(Finding::warn(
                    format!(
                        "publication {} leaves column(s) {} of {name} out by a column list that tables[{i}] does not set: row payloads lack them",
                        pg.publication,
                        left_out.join(", ")
                    ),
                    format!("set tables[{i}].columns or exclude_columns, or ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table};"),
                ));
            }
            continue;
        }
        let setting = match t.columns {
            Columns::Only(_) => "columns",
            _ => "exclude_columns",
        };
        match row_filter::leaked_columns(client, &pg.publication, i, t).await {
            Ok(leaked) if leaked.is_empty() => out.push(Finding::ok(format!(
                "table {name}: the publication sends only the columns tables[{i}].{setting} allows"
            ))),
            Ok(leaked) => {
                let columns = row_filter::column_list(client, i, t).await?;
                let what = format!(
                    "publication {} sends column(s) {} of {name}, which tables[{i}].{setting} leaves out: their values leave the server",
                    pg.publication,
                    leaked.join(", ")
                );
                let fix = format!(
                    "pglive setup --config <file>   (or: ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {};)",
                    row_filter::table_spec(t, columns.as_deref())
                );
                out.push(if pg.auto_setup {
                    Finding::warn(
                        format!(
                            "{what}, until `pglive run` sets the column list (postgres.auto_setup)"
                        ),
                        fix,
                    )
                } else {
                    Finding::fail(what, fix)
                });
            }
            Err(SourceError::Fatal(why)) => out.push(Finding::fail(
                why,
                format!("name columns table {name} has in tables[{i}].{setting}"),
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The publication exists, covers every mapped table, and publishes every kind of change.
async fn publication(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let pg = &config.postgres;
    let table_list = config
        .tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let publication = quote_ident(&pg.publication);
    match catalog::publication_tables(client, &pg.publication).await? {
        None => out.push(missing(
            pg,
            format!("publication {} does not exist", pg.publication),
            format!("pglive setup --config <file>   (or: CREATE PUBLICATION {publication} FOR TABLE {table_list};)"),
        )),
        Some(present) => {
            let absent: Vec<String> = config
                .tables
                .iter()
                .filter(|t| !present.iter().any(|(s, n)| *s == t.schema && *n == t.name))
                .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
                .collect();
            out.push(if absent.is_empty() {
                Finding::ok(format!("publication {} covers every mapped table", pg.publication))
            } else if pg.auto_setup {
                Finding::warn(
                    format!("publication {} does not include {}: `pglive run` will add them (postgres.auto_setup)", pg.publication, absent.join(", ")),
                    format!("ALTER PUBLICATION {publication} ADD TABLE {};", absent.join(", ")),
                )
            } else {
                Finding::fail(
                    format!("publication {} does not include {}", pg.publication, absent.join(", ")),
                    format!("ALTER PUBLICATION {publication} ADD TABLE {};", absent.join(", ")),
                )
            });
            let row = client
                .query_one(
                    "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
                    &[&pg.publication],
                )
                .await?;
            let ops = ["insert", "update", "delete", "truncate"];
            let off: Vec<&str> = (0..4).filter(|&i| !row.get::<_, bool>(i)).map(|i| ops[i]).collect();
            if !off.is_empty() {
                out.push(Finding::warn(
                    format!("publication {} does not publish {}", pg.publication, off.join(", ")),
                    format!("ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate');"),
                ));
            }
        }
    }
    Ok(())
}

/// The slot exists, is a pgoutput slot of this database, and is usable.
async fn slot(
    pg: &PostgresConfig,
    client: &Client,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let Some(slot) = catalog::slot(client, &pg.slot).await? else {
        let slot_lit = quote_literal(&pg.slot);
        out.push(missing(
            pg,
            format!("replication slot {} does not exist", pg.slot),
            format!("pglive setup --config <file>   (or: SELECT pg_create_logical_replication_slot({slot_lit}, 'pgoutput');)"),
        ));
        return Ok(());
    };
    let db = client
        .query_one("SELECT current_database()::text", &[])
        .await?;
    out.push(slot_state(pg, &slot, &db.get::<_, String>(0)));
    out.extend(slot_wal_status(pg, &slot));
    Ok(())
}

/// Whether `slot` is one `run` can stream from: a pgoutput slot of database `db`, not
/// invalidated, not in use.
fn slot_state(pg: &PostgresConfig, slot: &SlotInfo, db: &str) -> Finding {
    let slot_lit = quote_literal(&pg.slot);
    if slot.slot_type != "logical" || slot.plugin.as_deref() != Some("pgoutput") {
        Finding::fail(
            format!(
                "replication slot {} is a {} slot with plugin {}, not a pgoutput logical slot",
                pg.slot,
                slot.slot_type,
                slot.plugin.as_deref().unwrap_or("none")
            ),
            format!(
                "use another postgres.slot, or drop it: SELECT pg_drop_replication_slot({slot_lit});"
            ),
        )
    } else if slot.database.as_deref() != Some(db) {
        Finding::fail(
            format!(
                "replication slot {} belongs to database {}, not {db}",
                pg.slot,
                slot.database.as_deref().unwrap_or("?")
            ),
            "use another postgres.slot for this database".to_owned(),
        )
    } else if slot.is_lost() {
        let what = format!(
            "replication slot {} was invalidated (wal_status lost): PostgreSQL removed WAL it still needed because it held more than max_slot_wal_keep_size, so the changes committed after its confirmed position {} are lost",
            pg.slot,
            slot.confirmed_flush
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        );
        match pg.on_slot_lost {
            OnSlotLost::Fail => Finding::fail(
                what,
                "`pglive teardown` then `pglive setup` (clients keep stale data until they refetch), or set postgres.on_slot_lost = \"recreate\": `pglive run` then recreates the slot and sends every mapped channel an event of type \"*\" so that clients refetch",
            ),
            OnSlotLost::Recreate => Finding::warn(
                what,
                "nothing: with postgres.on_slot_lost = \"recreate\", `pglive run` recreates the slot and sends every mapped channel an event of type \"*\" so that clients refetch",
            ),
        }
    } else if let Some(pid) = slot.active_pid {
        Finding::warn(
            format!(
                "replication slot {} is in use by process {pid}: `pglive run` will stand by until it is released",
                pg.slot
            ),
            format!(
                "nothing, if that is another pglive (this one is its standby); otherwise stop that consumer: SELECT pg_terminate_backend({pid});"
            ),
        )
    } else {
        Finding::ok(format!(
            "replication slot {} (pgoutput) is ready at {}",
            pg.slot,
            slot.confirmed_flush
                .map(|l| l.to_string())
                .unwrap_or_default()
        ))
    }
}

/// A warning when the slot holds more WAL than it should.
fn slot_wal_status(pg: &PostgresConfig, slot: &SlotInfo) -> Option<Finding> {
    match slot.wal_status.as_deref() {
        Some("extended") => Some(Finding::warn(
            format!(
                "replication slot {} holds more WAL than max_wal_size (wal_status extended): its consumer is behind",
                pg.slot
            ),
            "let pglive catch up (see pglive_replication_lag_bytes); make sure the disk has room for the WAL it holds",
        )),
        Some("unreserved") => Some(Finding::warn(
            format!(
                "replication slot {} is about to lose WAL it needs (wal_status unreserved): changes will be lost at the next checkpoint",
                pg.slot
            ),
            "start pglive now so that it catches up, or raise max_slot_wal_keep_size",
        )),
        _ => None,
    }
}

/// What bounds the WAL the slot holds, and how soon a standby can take it over.
async fn wal_retention(client: &Client, out: &mut Vec<Finding>) -> Result<(), SourceError> {
    // Without a cap, a slot nobody reads keeps WAL until the disk is full.
    let keep = setting(client, "max_slot_wal_keep_size").await?;
    out.push(if keep == "-1" {
        Finding::warn(
            "max_slot_wal_keep_size is unlimited: if pglive stops for long, the slot keeps WAL until the disk fills and PostgreSQL stops",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB';  -- sized to the disk; then SELECT pg_reload_conf();  (past it the slot is invalidated instead, and clients must refetch)",
        )
    } else {
        Finding::ok(format!("max_slot_wal_keep_size is {keep}"))
    });
    // A consumer whose host vanished keeps the slot until this timeout ends its session: only
    // then can a standby take over.
    if setting(client, "wal_sender_timeout").await? == "0" {
        out.push(Finding::warn(
            "wal_sender_timeout is 0: if the machine running pglive dies, PostgreSQL keeps its session, and the slot, until TCP gives up (hours), so a standby cannot take over",
            "ALTER SYSTEM SET wal_sender_timeout = '60s';  -- then SELECT pg_reload_conf();",
        ));
    }
    Ok(())
}
