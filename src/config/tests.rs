//! Configuration tests: TOML text in (`from_toml`, no environment), a resolved `Config` or the
//! list of issues out, each naming its key.

use super::*;

use std::path::PathBuf;

use crate::map::row::Columns;
use crate::sink::amqp::{self, AmqpSinkConfig, OnReject, RoutingKey};
use crate::sink::websocket::{self, Auth, WsSinkConfig};
use crate::source::conninfo::{Host, SslMode};

const URL: &str = "postgres://pglive:s3cret-pw@db.example:6543/app";

/// A minimal valid file, with `extra` appended.
fn minimal(extra: &str) -> String {
    format!(
        r#"
[postgres]
url = "{URL}"

[[tables]]
name = "products"

[[sinks]]
type = "stdout"
{extra}"#
    )
}

fn ok(text: &str) -> Config {
    match from_toml(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- for:\n{text}"),
    }
}

fn issues(text: &str) -> Vec<Issue> {
    match from_toml(text) {
        Ok(c) => panic!("expected issues, got a valid config: {c:?}\n--- for:\n{text}"),
        Err(e) => {
            assert!(!e.issues.is_empty(), "an error lists at least one issue");
            e.issues
        }
    }
}

fn keys(issues: &[Issue]) -> Vec<&str> {
    issues.iter().map(|i| i.key.as_str()).collect()
}

/// The single issue of `text`, which must concern `key`.
fn only_issue(text: &str, key: &str) -> Issue {
    let list = issues(text);
    assert_eq!(keys(&list), [key], "{list:#?}");
    list.into_iter().next().unwrap()
}

// ---- defaults and values ----

#[test]
fn minimal_config_resolves_with_the_documented_defaults() {
    let c = ok(&minimal(""));
    assert_eq!(c.postgres.slot, "pglive");
    assert_eq!(c.postgres.publication, "pglive");
    assert!(c.postgres.auto_setup);
    assert_eq!(c.postgres.status_interval, Duration::from_secs(10));
    assert_eq!(c.postgres.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.postgres.max_backoff, DEFAULT_MAX_BACKOFF);
    assert_eq!(c.postgres.max_message_bytes, 64 << 20);
    assert!(c.events.coalesce);
    assert_eq!(c.events.max_ids_per_event, 1000);

    assert_eq!(c.tables.len(), 1);
    let t = &c.tables[0];
    assert_eq!(t.schema, "public");
    assert_eq!(t.name, "products");
    assert_eq!(t.channel(), "resources/products");
    assert!(!t.ids_as_strings);
    assert_eq!(t.data_provider_name, None);

    assert_eq!(c.sinks, [SinkConfig::Stdout]);
    assert_eq!(c.sinks[0].name(), "stdout");

    let conn = &c.postgres.conn;
    assert_eq!(conn.host, Host::Tcp("db.example".into()));
    assert_eq!(conn.port, 6543);
    assert_eq!(conn.user, "pglive");
    assert_eq!(conn.password.as_deref(), Some("s3cret-pw"));
    assert_eq!(conn.dbname, "app");
    assert_eq!(conn.sslmode, SslMode::Prefer);
}

#[test]
fn every_key_set_is_honoured() {
    let c = ok(&format!(
        r#"
[postgres]
url = "{URL}?sslmode=require"
slot = "orders_slot_2"
publication = "Orders Pub"
auto_setup = false
status_interval = "250ms"
connect_timeout = 3
max_backoff = "5m"
max_message_bytes = 1048576

[events]
coalesce = false
max_ids_per_event = 50

[[tables]]
name = "sales.orders"

[[tables]]
name = "products"
channel = "catalog/items"
ids_as_strings = true
data_provider_name = "inventory"

[[sinks]]
type = "stdout"
"#
    ));
    assert_eq!(c.postgres.slot, "orders_slot_2");
    assert_eq!(c.postgres.publication, "Orders Pub");
    assert!(!c.postgres.auto_setup);
    assert_eq!(c.postgres.status_interval, Duration::from_millis(250));
    assert_eq!(c.postgres.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.postgres.max_backoff, Duration::from_secs(300));
    assert_eq!(c.postgres.max_message_bytes, 1_048_576);
    assert_eq!(c.postgres.conn.sslmode, SslMode::Require);
    assert!(!c.events.coalesce);
    assert_eq!(c.events.max_ids_per_event, 50);

    assert_eq!(c.tables.len(), 2);
    let orders = &c.tables[0];
    assert_eq!(
        (orders.schema.as_str(), orders.name.as_str()),
        ("sales", "orders")
    );
    // The default channel names the table, not the schema.
    assert_eq!(orders.channel(), "resources/orders");
    assert!(!orders.ids_as_strings);
    let products = &c.tables[1];
    assert_eq!(products.schema, "public");
    assert_eq!(products.channel(), "catalog/items");
    assert!(products.ids_as_strings);
    assert_eq!(products.data_provider_name.as_deref(), Some("inventory"));
}

#[test]
fn password_file_supplies_the_password_without_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\r\n").unwrap();
    let c = ok(&format!(
        r#"
[postgres]
url = "postgres://pglive@db/app"
password_file = "{}"

[[tables]]
name = "products"

[[sinks]]
type = "stdout"
"#,
        file.display()
    ));
    assert_eq!(c.postgres.conn.password.as_deref(), Some("from-file"));

    let missing = dir.path().join("nope");
    let issue = only_issue(
        &format!(
            r#"
[postgres]
url = "postgres://pglive@db/app"
password_file = "{}"

[[tables]]
name = "products"

[[sinks]]
type = "stdout"
"#,
            missing.display()
        ),
        "postgres.password_file",
    );
    assert!(issue.message.contains("nope"), "{issue}");
}

// ---- unknown keys ----

#[test]
fn an_unknown_top_level_key_is_rejected_by_name() {
    let issue = only_issue(
        &format!("loglevel = \"debug\"\n{}", minimal("")),
        "loglevel",
    );
    assert!(issue.message.contains("unknown"), "{issue}");
    // An unknown section too.
    let issue = only_issue(&minimal("\n[kafka]\nbrokers = \"k:9092\"\n"), "kafka");
    assert!(
        issue.message.contains("postgres"),
        "lists what is allowed: {issue}"
    );
}

fn postgres_with_typo() -> String {
    format!(
        r#"
[postgres]
url = "{URL}"
slto = "x"

[[tables]]
name = "products"

[[sinks]]
type = "stdout"
"#
    )
}

fn tables_with_typo() -> String {
    format!(
        r#"
[postgres]
url = "{URL}"

[[tables]]
name = "products"

[[tables]]
nmae = "orders"

[[sinks]]
type = "stdout"
"#
    )
}

/// Unknown keys inside sections are rejected, and the issue mentions the key and the keys
/// that are allowed (whatever the exact key path; see the ignored tests below for that).
#[test]
fn unknown_keys_inside_sections_are_rejected() {
    let cases = [
        (postgres_with_typo(), "slto", "status_interval"),
        (
            minimal("\n[events]\ncoalesced = true\n"),
            "coalesced",
            "max_ids_per_event",
        ),
        (tables_with_typo(), "nmae", "ids_as_strings"),
    ];
    for (text, typo, allowed) in cases {
        let list = issues(&text);
        let issue = list
            .iter()
            .find(|i| i.key.contains(typo))
            .unwrap_or_else(|| panic!("no issue names {typo}: {list:#?}"));
        assert!(issue.message.contains("unknown key"), "{issue}");
        assert!(issue.message.contains(allowed), "{issue}");
    }
}

/// Regression: figment puts the field into the error path itself; the key must read
/// `postgres.slto`, not a reversed or doubled path.
#[test]
fn an_unknown_key_in_postgres_is_rejected_with_its_path() {
    let issue = only_issue(&postgres_with_typo(), "postgres.slto");
    assert!(issue.message.contains("unknown"), "{issue}");
    let issue = only_issue(
        &minimal("\n[events]\ncoalesced = true\n"),
        "events.coalesced",
    );
    assert!(issue.message.contains("coalesce"), "{issue}");
}

/// Regression: the unknown field is named once (`tables[1].nmae`).
#[test]
fn an_unknown_key_in_a_table_entry_names_the_entry() {
    // The misspelt key, and the required key it was meant to be.
    let list = issues(&tables_with_typo());
    assert_eq!(
        keys(&list),
        ["tables[1].nmae", "tables[1].name"],
        "{list:#?}"
    );
    assert!(list[0].message.contains("unknown"), "{}", list[0]);
    assert!(list[0].message.contains("name"), "{}", list[0]);
    assert!(list[1].message.contains("missing"), "{}", list[1]);
}

/// Regression: wrong-typed values in a section are reported under `section.key`.
#[test]
fn a_value_of_the_wrong_type_in_a_section_names_its_key() {
    only_issue(
        &minimal("\n[events]\ncoalesce = \"yes\"\n"),
        "events.coalesce",
    );
    only_issue(
        &minimal("\n[events]\nmax_ids_per_event = -5\n"),
        "events.max_ids_per_event",
    );
    let list = issues(&with_postgres("max_backoff = -1"));
    assert!(
        list.iter().any(|i| i.key == "postgres.max_backoff"),
        "{list:#?}"
    );
}

/// Regression: a typo in [postgres] must not also report the (present) URL as missing.
#[test]
fn an_error_inside_postgres_does_not_invent_a_missing_url() {
    let list = issues(&postgres_with_typo());
    assert!(
        !list.iter().any(|i| i.key == "postgres.url"),
        "the URL is set, yet: {list:#?}"
    );
    let list = issues(&format!(
        "[postgres]\nurl = \"{URL}\"\nauto_setup = \"yes\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
    ));
    assert!(
        !list.iter().any(|i| i.key == "postgres.url"),
        "the URL is set, yet: {list:#?}"
    );
}

/// The stdout sink takes no keys besides `type`: the message says so rather than listing none.
#[test]
fn an_unknown_key_in_a_sink_says_the_sink_takes_no_keys_besides_type() {
    let issue = only_issue(
        &minimal("\n[[sinks]]\ntype = \"stdout\"\npretty = true\n"),
        "sinks[1].pretty",
    );
    assert!(!issue.message.trim_end().ends_with(':'), "{issue}");
}

#[test]
fn an_unknown_key_in_a_sink_entry_names_the_entry() {
    let issue = only_issue(
        &minimal("\n[[sinks]]\ntype = \"stdout\"\npretty = true\n"),
        "sinks[1].pretty",
    );
    assert!(issue.message.contains("unknown"), "{issue}");
}

#[test]
fn a_table_entry_without_a_name_is_reported() {
    let issue = only_issue(
        &minimal("\n[[tables]]\nchannel = \"resources/x\"\n"),
        "tables[1].name",
    );
    assert!(issue.message.contains("missing"), "{issue}");
}

// ---- several problems at once ----

#[test]
fn several_problems_are_all_reported_each_with_its_key() {
    let text = format!(
        r#"
[postgres]
url = "{URL}"
slot = "Bad-Slot"

[[tables]]
name = "a.b.c"

[[sinks]]
type = "kafka"
"#
    );
    let list = issues(&text);
    assert_eq!(list.len(), 3, "{list:#?}");
    let by_key = |key: &str| {
        list.iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no issue for {key}: {list:#?}"))
    };
    assert!(by_key("postgres.slot").message.contains("Bad-Slot"));
    assert!(by_key("tables[0].name").message.contains("a.b.c"));
    let sink = by_key("sinks[0].type");
    assert!(sink.message.contains("kafka"), "{sink}");
    assert!(sink.message.contains("stdout"), "lists known types: {sink}");
}

#[test]
fn an_unknown_sink_type_names_the_type_key() {
    let issue = only_issue(
        &format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"kafka\"\n"
        ),
        "sinks[0].type",
    );
    assert!(issue.message.contains("kafka"), "{issue}");
}

#[test]
fn a_sink_without_a_type_is_reported() {
    let list = issues(&format!(
        "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\n"
    ));
    assert_eq!(keys(&list), ["sinks[0].type"], "{list:#?}");
    assert!(list[0].message.contains("missing"), "{list:#?}");
}

#[test]
fn problems_in_different_sections_and_entries_are_all_reported() {
    let text = r#"
[postgres]
slot = ""
publication = ""
status_interval = "10 parsecs"
max_message_bytes = 10

[events]
max_ids_per_event = 0

[[tables]]
name = "products"
channel = ""

[[tables]]
name = "public.products"

[[tables]]
name = "x"
data_provider_name = ""

[[sinks]]
type = "stdout"

[[sinks]]
type = "stdout"
"#;
    let list = issues(text);
    let mut got = keys(&list);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "events.max_ids_per_event",
            "postgres.max_message_bytes",
            "postgres.publication",
            "postgres.slot",
            "postgres.status_interval",
            "postgres.url",
            "sinks[1].type",
            "tables[0].channel",
            "tables[1].name",
            "tables[2].data_provider_name",
        ],
        "{list:#?}"
    );
}

// ---- postgres.url ----

#[test]
fn a_missing_url_is_reported_as_postgres_url() {
    let text = "[[tables]]\nname = \"products\"\n[[sinks]]\ntype = \"stdout\"\n";
    let issue = only_issue(text, "postgres.url");
    assert!(issue.message.contains("missing"), "{issue}");
    assert!(
        issue.message.contains("PGLIVE_POSTGRES__URL"),
        "says how to set it: {issue}"
    );
    // An empty [postgres] section is the same.
    only_issue(&format!("[postgres]\n{text}"), "postgres.url");
}

const SECRET: &str = "hunter2-Zq9";

fn url_issue(url: &str) -> Issue {
    let text = format!(
        "[postgres]\nurl = \"{url}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
    );
    let err = from_toml(&text).expect_err(url);
    assert_eq!(keys(&err.issues), ["postgres.url"], "{err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(SECRET),
        "the error shows the password: {shown}"
    );
    err.issues.into_iter().next().unwrap()
}

#[test]
fn a_bad_url_is_reported_under_postgres_url_without_its_password() {
    for url in [
        format!("mysql://admin:{SECRET}@db/app"),
        format!("postgres://admin:{SECRET}@db:99999/app"),
        format!("postgres://admin:{SECRET}@db/app?sslmode=bogus"),
        format!("postgres://admin:{SECRET}@db/app?sslmode=allow"),
        format!("postgres://admin:{SECRET}@db/app?frobnicate=1"),
        format!("postgres://admin:{SECRET}@db/app?port=abc"),
        format!("postgres://:{SECRET}@db/app"),
        format!("postgres://admin:{SECRET}@db/app?sslmode=disable&channel_binding=require"),
        format!("postgres//admin:{SECRET}@db/app"),
        format!("postgres://admin:{SECRET}@[::1/app"),
    ] {
        let issue = url_issue(&url);
        assert!(!issue.message.is_empty(), "{url}");
    }
}

#[test]
fn a_bad_url_message_says_what_is_wrong() {
    let issue = url_issue(&format!("mysql://admin:{SECRET}@db/app"));
    assert!(issue.message.contains("mysql"), "{issue}");
    // The value of a parameter is never quoted: it could be a piece of a password.
    let issue = url_issue(&format!("postgres://admin:{SECRET}@db/app?sslmode=bogus"));
    assert!(issue.message.contains("unknown sslmode"), "{issue}");
    assert!(!issue.message.contains("bogus"), "{issue}");
}

/// Regression: an unencoded password was echoed as an "unsupported URL parameter".
#[test]
fn an_unencoded_password_is_not_echoed_and_the_fix_is_named() {
    for url in [
        format!("postgres://admin:1234?{SECRET}@db/app"),
        format!("postgres://admin:1234#{SECRET}@db/app"),
        format!("postgres://admin:1234/{SECRET}@db/app"),
    ] {
        let issue = url_issue(&url);
        assert!(issue.message.contains("percent-encoded"), "{issue}");
    }
    // The AMQP sink's URL too.
    let list = issues(&amqp(&format!("url = \"amqp://admin:1234?{SECRET}@mq/\"")));
    assert_eq!(keys(&list), ["sinks[1].url"], "{list:?}");
    assert!(!list[0].message.contains(SECRET), "{}", list[0]);
    assert!(list[0].message.contains("percent-encoded"), "{}", list[0]);
}

/// Regression: figment's type errors quoted the value (`found unsigned int `1234567``).
#[test]
fn a_value_of_the_wrong_type_is_never_quoted() {
    for (text, key) in [
        (
            "[postgres]\nurl = 987654321\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
                .to_owned(),
            "postgres.url",
        ),
        (ws("jwt_secret = 987654321"), "sinks[1].jwt_secret"),
        (ws("jwt_secret = [\"hunter2-Zq9\"]"), "sinks[1].jwt_secret"),
        (amqp("url = { secret = \"hunter2-Zq9\" }"), "sinks[1].url"),
        (
            with_postgres("password_file = 987654321"),
            "postgres.password_file",
        ),
        (
            with_postgres("auto_setup = \"hunter2-Zq9\""),
            "postgres.auto_setup",
        ),
        (
            minimal("\n[events]\nmax_ids_per_event = -987654321\n"),
            "events.max_ids_per_event",
        ),
    ] {
        let list = issues(&text);
        // A sink entry's type errors name the entry (its type decides its keys).
        let issue = list
            .iter()
            .find(|i| key.starts_with(&i.key))
            .unwrap_or_else(|| panic!("{key}: {list:#?}"));
        assert!(issue.message.contains("invalid"), "{issue}");
        let shown = format!("{list:?}");
        assert!(
            !shown.contains("987654321") && !shown.contains(SECRET),
            "{shown}"
        );
    }
    let issue = only_issue(
        "[postgres]\nurl = 987654321\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n",
        "postgres.url",
    );
    assert!(
        issue
            .message
            .contains("found an integer, expected a string"),
        "{issue}"
    );
}

/// Regression: a password that is not valid percent-encoded UTF-8 is never echoed.
#[test]
fn an_undecodable_password_is_not_echoed() {
    url_issue(&format!("postgres://admin:{SECRET}%FF@db/app"));
}

/// Regression: `url = 5432` is one issue, under `postgres.url`.
#[test]
fn a_url_of_the_wrong_type_is_reported_under_postgres_url() {
    let issue = only_issue(
        "[postgres]\nurl = 5432\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n",
        "postgres.url",
    );
    assert!(issue.message.contains("string"), "{issue}");
}

#[test]
fn duplicate_tables_are_rejected() {
    let text = format!(
        r#"
[postgres]
url = "{URL}"

[[tables]]
name = "products"

[[tables]]
name = "orders"

[[tables]]
name = "public.products"

[[sinks]]
type = "stdout"
"#
    );
    let issue = only_issue(&text, "tables[2].name");
    assert!(issue.message.contains("public.products"), "{issue}");
    assert!(issue.message.contains("more than once"), "{issue}");
}

#[test]
fn the_same_table_name_in_two_schemas_is_not_a_duplicate() {
    let c = ok(&minimal("\n[[tables]]\nname = \"archive.products\"\n"));
    assert_eq!(c.tables.len(), 2);
    assert_eq!(c.tables[1].schema, "archive");
    assert_eq!(c.tables[1].channel(), "resources/products");
}

#[test]
fn bad_table_names_are_rejected() {
    let long = "x".repeat(64);
    for name in ["", "a.b.c", ".products", "public.", "a..b", long.as_str()] {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"{name}\"\n[[sinks]]\ntype = \"stdout\"\n"
        );
        only_issue(&text, "tables[0].name");
    }
    // 63 bytes is the limit, mixed case and spaces are taken literally.
    let ok63 = "y".repeat(63);
    for name in [ok63.as_str(), "Mixed Case", "s.T"] {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"{name}\"\n[[sinks]]\ntype = \"stdout\"\n"
        );
        ok(&text);
    }
}

/// A name holding a dot (or a quote) is written in double quotes, part by part; quoting the
/// whole `schema.table` makes it one table name.
#[test]
fn quoted_table_names_may_hold_dots_and_quotes() {
    let table = |name: &str| {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = '{name}'\n[[sinks]]\ntype = \"stdout\"\n"
        );
        let c = ok(&text);
        let t = &c.tables[0];
        (t.schema.clone(), t.name.clone(), t.qualified())
    };
    let s = |a: &str, b: &str, q: &str| (a.to_owned(), b.to_owned(), q.to_owned());
    assert_eq!(
        table(r#""edge_b.dotted""#),
        s("public", "edge_b.dotted", r#"public."edge_b.dotted""#)
    );
    assert_eq!(
        table("edge_b.dotted"),
        s("edge_b", "dotted", "edge_b.dotted")
    );
    assert_eq!(
        table(r#""My Schema"."a ""b"".c""#),
        s("My Schema", "a \"b\".c", r#""My Schema"."a ""b"".c""#)
    );
    assert_eq!(table(r#"s."T""#), s("s", "T", r#"s."T""#));
    for bad in [r#""open"#, r#""a"b"#, r#"a"b"#, r#""a"."b"."c""#, r#""""#] {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = '{bad}'\n[[sinks]]\ntype = \"stdout\"\n"
        );
        let issue = only_issue(&text, "tables[0].name");
        assert!(issue.message.contains(bad), "{bad}: {issue}");
    }
}

#[test]
fn no_tables_is_an_error() {
    let issue = only_issue(
        &format!("[postgres]\nurl = \"{URL}\"\n[[sinks]]\ntype = \"stdout\"\n"),
        "tables",
    );
    assert!(issue.message.contains("[[tables]]"), "{issue}");
    // An explicitly empty list too.
    only_issue(
        &format!("tables = []\n[postgres]\nurl = \"{URL}\"\n[[sinks]]\ntype = \"stdout\"\n"),
        "tables",
    );
    // And a value that is not a list of tables.
    only_issue(
        &format!(
            "tables = \"products\"\n[postgres]\nurl = \"{URL}\"\n[[sinks]]\ntype = \"stdout\"\n"
        ),
        "tables",
    );
}

// ---- sinks ----

#[test]
fn no_sinks_is_an_error() {
    let issue = only_issue(
        &format!("[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\n"),
        "sinks",
    );
    assert!(issue.message.contains("[[sinks]]"), "{issue}");
    only_issue(
        &format!("sinks = []\n[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\n"),
        "sinks",
    );
}

#[test]
fn only_one_stdout_sink_is_allowed() {
    let issue = only_issue(
        &minimal("\n[[sinks]]\ntype = \"stdout\"\n"),
        "sinks[1].type",
    );
    assert!(issue.message.contains("stdout"), "{issue}");
}

// ---- slot, publication, limits ----

#[test]
fn slot_names_follow_postgres_rules() {
    let long = "a".repeat(64);
    for slot in ["", "Upper", "has-dash", "has space", "é", long.as_str()] {
        let issue = only_issue(
            &with_postgres(&format!("slot = \"{slot}\"")),
            "postgres.slot",
        );
        assert!(issue.message.contains("slot"), "{issue}");
    }
}

#[test]
fn valid_slot_names_are_accepted() {
    let max = "z".repeat(63);
    for slot in ["a", "pglive_2", "0", max.as_str()] {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\nslot = \"{slot}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
        );
        assert_eq!(ok(&text).postgres.slot, slot);
    }
}

#[test]
fn publication_names_are_one_to_63_bytes() {
    let long = "p".repeat(64);
    for publication in ["", long.as_str()] {
        let text = format!(
            "[postgres]\nurl = \"{URL}\"\npublication = \"{publication}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
        );
        only_issue(&text, "postgres.publication");
    }
}

#[test]
fn max_ids_per_event_of_zero_is_rejected() {
    let issue = only_issue(
        &minimal("\n[events]\nmax_ids_per_event = 0\n"),
        "events.max_ids_per_event",
    );
    assert!(issue.message.contains("at least 1"), "{issue}");
    assert_eq!(
        ok(&minimal("\n[events]\nmax_ids_per_event = 1\n"))
            .events
            .max_ids_per_event,
        1
    );
}

#[test]
fn a_value_of_the_wrong_type_is_rejected() {
    for (text, field) in [
        (minimal("\n[events]\ncoalesce = \"yes\"\n"), "coalesce"),
        (
            minimal("\n[events]\nmax_ids_per_event = -5\n"),
            "max_ids_per_event",
        ),
        (with_postgres("auto_setup = 1"), "auto_setup"),
        (with_postgres("max_backoff = -1"), "max_backoff"),
        (with_postgres("max_backoff = true"), "max_backoff"),
    ] {
        let list = issues(&text);
        assert!(
            list.iter().any(|i| i.key.contains(field)),
            "{field}: {list:#?}"
        );
    }
    // In an array entry the path is right.
    let issue = only_issue(
        &minimal("\n[[tables]]\nname = \"x\"\nids_as_strings = \"no\"\n"),
        "tables[1].ids_as_strings",
    );
    assert!(issue.message.contains("boolean"), "{issue}");
}

#[test]
fn max_message_bytes_has_a_floor() {
    let text = |n: i64| {
        format!(
            "[postgres]\nurl = \"{URL}\"\nmax_message_bytes = {n}\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
        )
    };
    only_issue(&text(1023), "postgres.max_message_bytes");
    assert_eq!(ok(&text(1024)).postgres.max_message_bytes, 1024);
}

// ---- durations ----

fn with_postgres(lines: &str) -> String {
    format!(
        "[postgres]\nurl = \"{URL}\"\n{lines}\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
    )
}

#[test]
fn a_bad_duration_is_reported_with_its_key_and_value() {
    let issue = only_issue(
        &with_postgres("status_interval = \"10 parsecs\""),
        "postgres.status_interval",
    );
    assert!(issue.message.contains("10 parsecs"), "{issue}");
    let issue = only_issue(
        &with_postgres("connect_timeout = \"soon\""),
        "postgres.connect_timeout",
    );
    assert!(issue.message.contains("soon"), "{issue}");
    only_issue(
        &with_postgres("max_backoff = \"1.5s\""),
        "postgres.max_backoff",
    );
}

#[test]
fn a_zero_duration_is_rejected() {
    for value in ["0", "\"0s\"", "\"0ms\""] {
        let issue = only_issue(
            &with_postgres(&format!("status_interval = {value}")),
            "postgres.status_interval",
        );
        assert!(issue.message.contains("greater than zero"), "{issue}");
    }
}

#[test]
fn all_duration_problems_are_reported_together() {
    let list = issues(&with_postgres(
        "status_interval = \"x\"\nconnect_timeout = \"0s\"\nmax_backoff = \"3 fortnights\"",
    ));
    assert_eq!(
        keys(&list),
        [
            "postgres.status_interval",
            "postgres.connect_timeout",
            "postgres.max_backoff"
        ],
        "{list:#?}"
    );
}

#[test]
fn parse_duration_accepts_the_documented_forms() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration(" 7s "), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("7 s"), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    // Huge values saturate rather than overflow.
    assert!(parse_duration("18446744073709551615h").is_ok());
}

#[test]
fn parse_duration_rejects_everything_else_naming_the_input() {
    for bad in [
        "",
        "s",
        "ms",
        "10 parsecs",
        "1.5s",
        "-1s",
        "10sec",
        "10S",
        "1h30m",
        "ten",
        "1e3",
    ] {
        let err = parse_duration(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
}

// ---- the error as a whole ----

#[test]
fn the_error_lists_every_problem_with_its_key() {
    let err = from_toml(&format!(
        "[postgres]\nurl = \"{URL}\"\nslot = \"Bad\"\n[events]\nmax_ids_per_event = 0\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
    ))
    .unwrap_err();
    assert_eq!(err.issues.len(), 2);
    let shown = err.to_string();
    assert!(
        shown.starts_with("invalid configuration (2 problems):"),
        "{shown}"
    );
    assert!(shown.contains("\n  - postgres.slot: "), "{shown}");
    assert!(
        shown.contains("\n  - events.max_ids_per_event: "),
        "{shown}"
    );
    assert!(!shown.contains("s3cret-pw"), "{shown}");

    let one = from_toml(&with_postgres("slot = \"Bad\"")).unwrap_err();
    assert!(
        one.to_string()
            .starts_with("invalid configuration (1 problem):"),
        "{one}"
    );
}

#[test]
fn invalid_toml_is_an_error_not_a_panic() {
    let list = issues("[postgres\nurl = ");
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(!list[0].message.is_empty());
}

#[test]
fn issue_display_omits_an_empty_key() {
    let whole = Issue {
        key: String::new(),
        message: "file missing".into(),
    };
    assert_eq!(whole.to_string(), "file missing");
    let keyed = Issue {
        key: "postgres.url".into(),
        message: "missing".into(),
    };
    assert_eq!(keyed.to_string(), "postgres.url: missing");
}

// ---- the amqp sink ----

fn amqp(sink: &str) -> String {
    minimal(&format!("\n[[sinks]]\ntype = \"amqp\"\n{sink}\n"))
}

fn amqp_config(sink: &str) -> AmqpSinkConfig {
    match ok(&amqp(sink)).sinks.pop() {
        Some(SinkConfig::Amqp(c)) => *c,
        other => panic!("expected an amqp sink, got {other:?}"),
    }
}

#[test]
fn an_amqp_sink_takes_the_documented_defaults() {
    let c = amqp_config("url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"");
    assert_eq!(c.exchange, "pglive");
    assert!(c.declare && c.mandatory);
    assert_eq!(c.on_reject, OnReject::Retry);
    assert_eq!(c.routing_key, RoutingKey::parse("{channel}").unwrap());
    assert_eq!(c.max_inflight, amqp::DEFAULT_MAX_INFLIGHT);
    assert_eq!(c.max_inflight_bytes, amqp::DEFAULT_MAX_INFLIGHT_BYTES);
    assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.max_backoff, DEFAULT_MAX_BACKOFF);
    assert_eq!(c.ca_file, None);
    assert_eq!(
        c.url.to_string(),
        "amqp://guest:********@127.0.0.1:5672/%2f"
    );
}

#[test]
fn every_amqp_key_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "pem").unwrap();
    let c = amqp_config(&format!(
        r#"url = "amqps://app@mq.example/prod?heartbeat=20"
password_file = "{}"
exchange = "events"
declare = false
routing_key = "cdc.{{table}}.{{type}}"
mandatory = false
on_reject = "skip"
max_inflight = 10
max_inflight_bytes = 2048
connect_timeout = "3s"
max_backoff = "5s"
ca_file = "{}""#,
        pw.display(),
        ca.display()
    ));
    assert_eq!(c.exchange, "events");
    assert!(!c.declare && !c.mandatory);
    assert_eq!(c.on_reject, OnReject::Skip);
    assert_eq!(
        c.routing_key,
        RoutingKey::parse("cdc.{table}.{type}").unwrap()
    );
    assert_eq!((c.max_inflight, c.max_inflight_bytes), (10, 2048));
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.max_backoff, Duration::from_secs(5));
    assert_eq!(c.ca_file.as_deref(), Some(ca.as_path()));
    // The password comes from the file and is shown masked.
    assert_eq!(
        c.url.to_string(),
        "amqps://app:********@mq.example/prod?heartbeat=20"
    );
    assert!(!format!("{c:?}").contains("from-file"));
}

#[test]
fn bad_amqp_values_are_all_reported_by_key_without_the_password() {
    let found = issues(&amqp(
        r#"url = "http://guest:hunter2@127.0.0.1/"
routing_key = "{chanel}"
on_reject = "drop"
max_inflight = 0
max_backoff = "soon"
ca_file = "/nonexistent/ca.pem""#,
    ));
    assert_eq!(
        keys(&found),
        [
            "sinks[1].url",
            "sinks[1].routing_key",
            "sinks[1].max_inflight",
            "sinks[1].max_backoff",
            "sinks[1].ca_file",
            "sinks[1].on_reject"
        ]
    );
    let text = format!("{found:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("amqp:// or amqps://"), "{text}");
}

#[test]
fn an_amqp_url_is_required_and_its_query_checked() {
    let issue = only_issue(&amqp(""), "sinks[1].url");
    assert!(issue.message.contains("missing"), "{issue}");
    let issue = only_issue(&amqp("url = \"amqp://h/?heartbeat=soon\""), "sinks[1].url");
    assert!(issue.message.contains("query"), "{issue}");
}

#[test]
fn a_routing_key_too_long_for_a_mapped_table_names_the_table() {
    let long = "x".repeat(250);
    let issue = only_issue(
        &amqp(&format!(
            "url = \"amqp://h/\"\nrouting_key = \"{long}.{{table}}\""
        )),
        "sinks[1].routing_key",
    );
    assert!(issue.message.contains("public.products"), "{issue}");
}

// ---- the websocket sink ----

fn ws(sink: &str) -> String {
    minimal(&format!(
        "\n[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:8080\"\n{sink}\n"
    ))
}

fn ws_config(sink: &str) -> WsSinkConfig {
    match ok(&ws(sink)).sinks.pop() {
        Some(SinkConfig::WebSocket(c)) => *c,
        other => panic!("expected a websocket sink, got {other:?}"),
    }
}

#[test]
fn a_websocket_sink_takes_the_documented_defaults() {
    let c = ws_config("jwt_secret = \"0123456789abcdef0123456789abcdef\"");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.path, "/live");
    assert!(matches!(c.auth, Auth::Jwt { .. }));
    assert!(c.allowed_origins.is_empty());
    assert_eq!(c.history, websocket::DEFAULT_HISTORY);
    assert_eq!(c.history_age, websocket::DEFAULT_HISTORY_AGE);
    assert_eq!(c.client_queue, websocket::DEFAULT_CLIENT_QUEUE);
    assert_eq!(c.max_connections, websocket::DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.max_message_bytes, websocket::DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(c.ping_interval, websocket::DEFAULT_PING_INTERVAL);
    assert_eq!(c.max_subscriptions, websocket::DEFAULT_MAX_SUBSCRIPTIONS);
    assert_eq!(c.header_timeout, crate::http::DEFAULT_HEADER_TIMEOUT);
    assert_eq!(c.channels, ["resources/products"]);
    match &c.auth {
        Auth::Jwt {
            audience,
            issuer,
            leeway,
            ..
        } => {
            assert_eq!((audience, issuer), (&None, &None));
            assert_eq!(*leeway, websocket::auth::DEFAULT_LEEWAY);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{c:?}").contains("0123456789abcdef"),
        "the secret is never shown"
    );
}

#[test]
fn the_websocket_secret_can_come_from_a_file_and_anonymous_stands_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let c = ws_config(&format!("jwt_secret_file = \"{}\"", file.display()));
    assert!(matches!(c.auth, Auth::Jwt { .. }));
    let c =
        ws_config("anonymous = true\nallowed_origins = [\"http://localhost:5173\"]\nhistory = 0");
    assert_eq!(c.auth, Auth::Anonymous);
    assert_eq!(c.allowed_origins, ["http://localhost:5173"]);
    assert_eq!(c.history, 0);
}

#[test]
fn websocket_auth_must_be_chosen_once() {
    let issue = only_issue(&ws(""), "sinks[1].jwt_secret");
    assert!(issue.message.contains("anonymous = true"), "{issue}");
    let issue = only_issue(
        &ws("jwt_secret = \"0123456789abcdef0123456789abcdef\"\nanonymous = true"),
        "sinks[1].anonymous",
    );
    assert!(issue.message.contains("no jwt_* key"), "{issue}");
    let issue = only_issue(&ws("jwt_secret = \"short\""), "sinks[1].jwt_secret");
    assert!(issue.message.contains("32 bytes"), "{issue}");
    assert!(
        !issue.message.contains("short"),
        "the secret is never shown: {issue}"
    );
    let issue = only_issue(
        &ws("jwt_public_key_file = \"/nonexistent/key.pem\""),
        "sinks[1].jwt_public_key_file",
    );
    assert!(issue.message.contains("cannot read"), "{issue}");
}

#[test]
fn anonymous_access_needs_allowed_origins_and_claims_need_a_key() {
    let issue = only_issue(&ws("anonymous = true"), "sinks[1].allowed_origins");
    assert!(
        issue
            .message
            .contains("anonymous = true requires allowed_origins"),
        "{issue}"
    );
    let found = issues(&ws(
        "anonymous = true\nallowed_origins = [\"http://a\"]\njwt_audience = \"x\"\njwt_issuer = \"\"",
    ));
    assert_eq!(
        keys(&found),
        [
            "sinks[1].jwt_audience",
            "sinks[1].jwt_issuer",
            "sinks[1].jwt_issuer"
        ]
    );
    let issue = only_issue(
        &ws("jwt_secret = \"0123456789abcdef0123456789abcdef\"\njwt_leeway = \"10m\""),
        "sinks[1].jwt_leeway",
    );
    assert!(issue.message.contains("at most 5m"), "{issue}");
}

#[test]
fn audience_issuer_and_leeway_are_configurable() {
    let c = ws_config(
        "jwt_secret = \"0123456789abcdef0123456789abcdef\"\njwt_audience = \"pglive\"\n\
         jwt_issuer = \"https://auth.example\"\njwt_leeway = \"0s\"\nmax_subscriptions = 3\nheader_timeout = \"2s\"",
    );
    match &c.auth {
        Auth::Jwt {
            audience,
            issuer,
            leeway,
            ..
        } => {
            assert_eq!(audience.as_deref(), Some("pglive"));
            assert_eq!(issuer.as_deref(), Some("https://auth.example"));
            assert_eq!(*leeway, std::time::Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.max_subscriptions, 3);
    assert_eq!(c.header_timeout, std::time::Duration::from_secs(2));
}

#[test]
fn a_channel_name_has_a_length_limit() {
    let long = "c".repeat(websocket::MAX_CHANNEL_BYTES + 1);
    let issue = only_issue(
        &format!(
            "[postgres]\nurl = \"postgres://u@h/d\"\n[[tables]]\nname = \"t\"\nchannel = \"{long}\"\n[[sinks]]\ntype = \"stdout\"\n"
        ),
        "tables[0].channel",
    );
    assert!(issue.message.contains("at most 255 bytes"), "{issue}");
}

#[test]
fn the_relay_is_told_every_mapped_channel_once() {
    let c = ok(
        "[postgres]\nurl = \"postgres://u@h/d\"\n[[tables]]\nname = \"a\"\n[[tables]]\nname = \"b\"\nchannel = \"resources/a\"\n\
         [[tables]]\nname = \"c\"\n[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:8080\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n",
    );
    match &c.sinks[0] {
        SinkConfig::WebSocket(ws) => assert_eq!(ws.channels, ["resources/a", "resources/c"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_websocket_values_are_reported_by_key() {
    let found = issues(&minimal(
        "\n[[sinks]]\ntype = \"websocket\"\nlisten = \"localhost\"\npath = \"live\"\nanonymous = true\nallowed_origins = [\"http://a\"]\nclient_queue = 0\nping_interval = \"0s\"\nheader_timeout = \"0s\"\nmax_subscriptions = 0\n\
         [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:9\"\nanonymous = true\n\
         [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:9\"\nanonymous = true\nallowed_origins = [\"http://a\"]\n",
    ));
    assert_eq!(
        keys(&found),
        [
            "sinks[1].listen",
            "sinks[1].path",
            "sinks[1].client_queue",
            "sinks[1].max_subscriptions",
            "sinks[1].ping_interval",
            "sinks[1].header_timeout",
            "sinks[2].allowed_origins",
            "sinks[3].type"
        ]
    );
}

// ---- [ops] ----

#[test]
fn ops_defaults_and_values() {
    let c = ok(&minimal(""));
    assert_eq!(c.ops, OpsConfig::default());
    assert_eq!(c.ops.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.postgres.heartbeat_interval, None);
    let c = ok(&minimal(
        r#"
[ops]
listen = "0.0.0.0:9187"
shutdown_timeout = "5s"
log_format = "json"
log_level = "warn,pglive=debug"
lag_warning_bytes = 1000
lag_warning_age = "1m"
"#,
    )
    .replace("[postgres]", "[postgres]\nheartbeat_interval = \"15s\""));
    assert_eq!(c.ops.listen, Some("0.0.0.0:9187".parse().unwrap()));
    assert_eq!(c.ops.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.ops.log_format, LogFormat::Json);
    assert_eq!(c.ops.log_level.as_deref(), Some("warn,pglive=debug"));
    assert_eq!(c.ops.lag_warning_bytes, 1000);
    assert_eq!(c.ops.lag_warning_age, Duration::from_secs(60));
    assert_eq!(c.postgres.heartbeat_interval, Some(Duration::from_secs(15)));
}

#[test]
fn bad_ops_values_are_each_reported_by_key() {
    let list = issues(&minimal(
        r#"
[ops]
listen = "localhost"
shutdown_timeout = "0s"
log_format = "xml"
log_level = "pglive=loud"
lag_warning_bytes = 0
lag_warning_age = "soon"
"#,
    ));
    assert_eq!(
        keys(&list),
        [
            "ops.listen",
            "ops.log_format",
            "ops.log_level",
            "ops.lag_warning_bytes",
            "ops.shutdown_timeout",
            "ops.lag_warning_age"
        ],
        "{list:#?}"
    );
    let issue = only_issue(&minimal("[ops]\nport = 1\n"), "ops.port");
    assert!(issue.message.contains("expected one of: listen"), "{issue}");
    let issue = only_issue(
        &minimal("").replace("[postgres]", "[postgres]\nheartbeat_interval = \"0s\""),
        "postgres.heartbeat_interval",
    );
    assert!(issue.message.contains("greater than zero"), "{issue}");
}

#[test]
fn the_ops_listener_and_a_relay_cannot_share_a_port() {
    let issue = only_issue(
        &minimal(
            "[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:9187\"\nanonymous = true\nallowed_origins = [\"http://a\"]\n[ops]\nlisten = \"127.0.0.1:9187\"\n",
        ),
        "sinks[1].listen",
    );
    assert!(issue.message.contains("ops.listen"), "{issue}");
}

// ---- connection security and secret files ----

#[test]
fn allow_insecure_password_is_off_by_default() {
    assert!(!ok(&minimal("")).postgres.conn.allow_insecure_password);
    let c = ok(&with_postgres("allow_insecure_password = true"));
    assert!(c.postgres.conn.allow_insecure_password);
}

fn with_url(url: &str, lines: &str) -> Config {
    ok(&format!(
        "[postgres]\nurl = \"{url}\"\n{lines}\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
    ))
}

fn warnings_for(c: &Config, key: &str) -> Vec<String> {
    c.warnings
        .iter()
        .filter(|w| w.key == key)
        .map(|w| w.message.clone())
        .collect()
}

#[test]
fn an_unverified_server_certificate_is_a_warning() {
    for (params, what) in [
        ("sslmode=disable", "not encrypted"),
        ("", "sslmode=prefer"),
        ("sslmode=prefer", "sslmode=prefer"),
        ("sslmode=require", "sslmode=require"),
    ] {
        let c = with_url(&format!("postgres://u@db.example/app?{params}"), "");
        let w = warnings_for(&c, "postgres.url");
        assert_eq!(w.len(), 1, "{params}: {w:?}");
        assert!(w[0].contains(what) && w[0].contains("verify-full"), "{w:?}");
        assert!(!w[0].contains("allow_insecure_password"), "{w:?}");
    }
    // Opting in to insecure passwords says so.
    let c = with_url(
        "postgres://u@db.example/app?sslmode=require",
        "allow_insecure_password = true",
    );
    assert!(warnings_for(&c, "postgres.url")[0].contains("allow_insecure_password"));
    // Verified, or no network: nothing to warn about.
    for url in [
        "postgres://u@db.example/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
        "postgres://u@db.example/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt",
        "postgres://u@db.example/app?sslmode=require&sslrootcert=/nonexistent/ca.crt",
        "postgres://u@db.example/app?sslrootcert=system",
        "postgresql:///app?user=u&host=/var/run/postgresql",
    ] {
        assert_eq!(with_url(url, "").warnings, [], "{url}");
    }
}

fn secret_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid() == 0
}

#[test]
fn secret_files_readable_by_others_are_warned_about_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let open = secret_file(dir.path(), "pw", 0o644);
    let private = secret_file(dir.path(), "private", 0o600);
    let group = secret_file(dir.path(), "group", 0o640);
    let url = "postgres://u@db.example/app?sslmode=verify-full&sslrootcert=/ca";
    let warned = |c: &Config, key: &str| warnings_for(c, key);

    let c = with_url(
        url,
        &format!("password_file = {:?}", open.display().to_string()),
    );
    let w = warned(&c, "postgres.password_file");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("chmod 600 {}", open.display())) && w[0].contains("0644"),
        "{w:?}"
    );
    assert!(!w[0].contains("0123456789"), "never the secret: {w:?}");
    let c = with_url(
        url,
        &format!("password_file = {:?}", private.display().to_string()),
    );
    assert_eq!(c.warnings, []);
    // As libpq's rule for key files: group-readable is fine only when root owns the file.
    let c = with_url(
        url,
        &format!("password_file = {:?}", group.display().to_string()),
    );
    assert_eq!(
        warned(&c, "postgres.password_file").len(),
        usize::from(!is_root())
    );
    if is_root() {
        std::os::unix::fs::chown(&group, Some(65534), None).unwrap();
        let c = with_url(
            url,
            &format!("password_file = {:?}", group.display().to_string()),
        );
        assert_eq!(warned(&c, "postgres.password_file").len(), 1);
    }
    // A file that does not exist is an error, not a warning.
    let missing = dir.path().join("missing");
    let list = issues(&format!(
        "[postgres]\nurl = \"{url}\"\npassword_file = {:?}\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n",
        missing.display().to_string()
    ));
    assert_eq!(keys(&list), ["postgres.password_file"]);

    // The client key, the relay's secret and the broker's password.
    let cert = secret_file(dir.path(), "client.crt", 0o644);
    let c = with_url(
        &format!("{url}&sslcert={}&sslkey={}", cert.display(), open.display()),
        "",
    );
    let w = warned(&c, "postgres.url");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("chmod 600 {}", open.display())),
        "{w:?}"
    );
    let c = ok(&ws(&format!(
        "jwt_secret_file = {:?}",
        open.display().to_string()
    )));
    assert_eq!(
        warned(&c, "sinks[1].jwt_secret_file").len(),
        1,
        "{:?}",
        c.warnings
    );
    let c = ok(&amqp(&format!(
        "url = \"amqp://u@mq/\"\npassword_file = {:?}",
        open.display().to_string()
    )));
    assert_eq!(
        warned(&c, "sinks[1].password_file").len(),
        1,
        "{:?}",
        c.warnings
    );
}

fn load_file(dir: &Path, text: &str, mode: u32) -> (PathBuf, Config) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("pglive.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    (path, config)
}

#[test]
fn a_config_file_holding_secrets_inline_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[postgres]\nurl = \"postgres://u:{SECRET}@db.example/app?sslmode=verify-full&sslrootcert=/ca\"\n\
         [[tables]]\nname = \"t\"\n\
         [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:8080\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n\
         allowed_origins = [\"https://app.example\"]\n\
         [[sinks]]\ntype = \"amqp\"\nurl = \"amqp://u:{SECRET}@mq/\"\n"
    );
    let (path, c) = load_file(dir.path(), &text, 0o644);
    let w = warnings_for(&c, "");
    assert_eq!(w.len(), 1, "one warning per file: {:?}", c.warnings);
    assert!(
        w[0].contains(&path.display().to_string())
            && w[0].contains("postgres.url, sinks[0].jwt_secret, sinks[1].url")
            && w[0].contains(&format!("chmod 600 {}", path.display())),
        "{w:?}"
    );
    assert!(!format!("{:?}", c.warnings).contains(SECRET));
    let (_, c) = load_file(dir.path(), &text, 0o600);
    assert_eq!(c.warnings, []);
    // No secret inline: nothing to protect.
    let text = "[postgres]\nurl = \"postgres://u@db.example/app?sslmode=verify-full&sslrootcert=/ca\"\n\
         [[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"amqp\"\nurl = \"amqp://u@mq/\"\n";
    let (_, c) = load_file(dir.path(), text, 0o644);
    assert_eq!(c.warnings, []);
}

#[test]
fn a_relay_open_to_every_origin_is_warned_about() {
    let secret = "jwt_secret = \"0123456789abcdef0123456789abcdef\"";
    let c = ok(&ws(secret));
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert!(warned.contains(&"sinks[1].allowed_origins"), "{warned:?}");
    let c = ok(&ws(&format!(
        "{secret}\nallowed_origins = [\"https://app.example\"]"
    )));
    assert!(
        c.warnings
            .iter()
            .all(|w| !w.key.contains("allowed_origins")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn on_slot_lost_defaults_to_fail_and_a_bad_policy_names_the_key() {
    assert_eq!(ok(&minimal("")).postgres.on_slot_lost, OnSlotLost::Fail);
    let with =
        |v: &str| minimal("").replace("[postgres]", &format!("[postgres]\non_slot_lost = {v}"));
    assert_eq!(
        ok(&with("\"recreate\"")).postgres.on_slot_lost,
        OnSlotLost::Recreate
    );
    assert_eq!(
        ok(&with("\"fail\"")).postgres.on_slot_lost,
        OnSlotLost::Fail
    );
    let issue = only_issue(&with("\"drop\""), "postgres.on_slot_lost");
    assert!(
        issue.message.contains("\"fail\" or \"recreate\""),
        "{issue}"
    );
    only_issue(&with("true"), "postgres.on_slot_lost");
}

#[test]
fn verifying_the_server_needs_its_ca() {
    // As in libpq: no sslrootcert (and no ~/.postgresql/root.crt) is an error, not the system
    // store, which with verify-ca would take any certificate a public CA signed.
    for mode in ["verify-ca", "verify-full"] {
        let text = format!(
            "[postgres]\nurl = \"postgres://u@db.example/app?sslmode={mode}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n"
        );
        let home = std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
            .filter(|p| p.exists());
        if home.is_some() {
            continue; // libpq's default root file stands in for sslrootcert
        }
        let issue = only_issue(&text, "postgres.url");
        assert!(
            issue.message.contains(&format!("sslmode={mode}"))
                && issue.message.contains("sslrootcert"),
            "{issue}"
        );
    }
}

// ---- webhook sinks ----

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn standard_headers(
    c: &crate::sink::webhook::WebhookSinkConfig,
) -> &[crate::sink::webhook::Header] {
    match &c.format {
        crate::sink::webhook::Format::Standard { headers, .. } => headers,
        other => panic!("expected Standard Webhooks, got {other:?}"),
    }
}

fn hook(sink: &str) -> String {
    minimal(&format!("\n[[sinks]]\ntype = \"webhook\"\n{sink}\n"))
}

#[test]
fn a_webhook_sink_takes_the_documented_defaults_and_every_key() {
    let c = match ok(&hook(&format!(
        "url = \"https://hooks.example.com/in\"\nsecret = \"{WHSEC}\""
    )))
    .sinks
    .pop()
    {
        Some(SinkConfig::Webhook(c)) => *c,
        other => panic!("expected a webhook sink, got {other:?}"),
    };
    assert_eq!(c.timeout, crate::sink::webhook::DEFAULT_TIMEOUT);
    assert_eq!(c.batch_max_events, 1);
    assert_eq!(c.batch_max_bytes, 1 << 20);
    assert_eq!(c.on_rejected, crate::sink::webhook::OnRejected::Fail);
    assert!(standard_headers(&c).is_empty() && c.ca_file.is_none());

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer from-file\n").unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{WHSEC}\n")).unwrap();
    let c = match ok(&hook(&format!(
        "url = \"http://127.0.0.1:9/in\"\nsecret_file = \"{}\"\nheaders = {{ \"X-Team\" = \"a\" }}\n\
         header_files = {{ Authorization = \"{}\" }}\ntimeout = \"2s\"\nbatch_max_events = 50\n\
         batch_max_bytes = 4096\non_rejected = \"skip\"\nmax_backoff = \"5s\"",
        secret.display(),
        token.display()
    )))
    .sinks
    .pop()
    {
        Some(SinkConfig::Webhook(c)) => *c,
        other => panic!("expected a webhook sink, got {other:?}"),
    };
    let headers: Vec<(String, String)> = standard_headers(&c)
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_str().unwrap().to_owned()))
        .collect();
    assert!(headers.contains(&("authorization".into(), "Bearer from-file".into())));
    assert!(headers.contains(&("x-team".into(), "a".into())));
    assert_eq!(c.timeout, Duration::from_secs(2));
    assert_eq!((c.batch_max_events, c.batch_max_bytes), (50, 4096));
    assert_eq!(c.on_rejected, crate::sink::webhook::OnRejected::Skip);
    assert!(
        !format!("{c:?}").contains("from-file"),
        "header values are not shown"
    );
}

#[test]
fn webhook_problems_name_their_keys_and_never_quote_secrets() {
    let issue = only_issue(&hook("url = \"https://h/in\""), "sinks[1].secret");
    assert!(issue.message.contains("whsec_"), "{issue}");
    let issue = only_issue(
        &hook("url = \"https://h/in\"\nsecret = \"whsec_notbase64!!SECRETPART\""),
        "sinks[1].secret",
    );
    assert!(!issue.message.contains("SECRETPART"), "{issue}");
    let issue = only_issue(
        &hook(&format!(
            "url = \"https://user:PASSWORD@h/in\"\nsecret = \"{WHSEC}\""
        )),
        "sinks[1].url",
    );
    assert!(!issue.message.contains("PASSWORD"), "{issue}");
    let list = issues(&hook(&format!(
        "url = \"ftp://h/\"\nsecret = \"{WHSEC}\"\nheaders = {{ \"webhook-id\" = \"x\", \"bad name\" = \"y\" }}\n\
         on_rejected = \"ignore\"\nbatch_max_events = 0"
    )));
    assert_eq!(
        keys(&list),
        [
            "sinks[1].url",
            "sinks[1].headers.bad name",
            "sinks[1].headers.webhook-id",
            "sinks[1].batch_max_events",
            "sinks[1].on_rejected"
        ],
        "{list:#?}"
    );
}

mod presets;
mod redis;
mod relay;

#[test]
fn a_row_filter_is_kept_as_written_and_an_empty_one_is_refused() {
    let text = |filter: &str| {
        format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\nwhere = \"{filter}\"\n[[sinks]]\ntype = \"stdout\"\n"
        )
    };
    let c = ok(&text("org = 42 AND v <> 'a;b'"));
    assert_eq!(
        c.tables[0].row_filter.as_deref(),
        Some("org = 42 AND v <> 'a;b'")
    );
    let issue = only_issue(&text("  "), "tables[0].where");
    assert!(issue.message.contains("leave `where` out"), "{issue}");
}

#[test]
fn row_payload_settings_are_read_and_mistakes_named() {
    let text = |table: &str, events: &str| {
        format!(
            "[postgres]\nurl = \"{URL}\"\n{events}\n[[tables]]\nname = \"t\"\n{table}\n[[sinks]]\ntype = \"stdout\"\n"
        )
    };
    let c = ok(&text(
        "payload = \"row\"\nexclude_columns = [\"secret\"]\nnumeric_as_number = true",
        "[events]\nmax_event_bytes = 65536",
    ));
    let t = &c.tables[0];
    assert!(t.row_payload && t.numeric_as_number);
    assert_eq!(t.columns, Columns::Except(vec!["secret".into()]));
    assert_eq!(c.events.max_event_bytes, 65536);
    let c = ok(&text("columns = [\"id\", \"title\"]", ""));
    assert!(!c.tables[0].row_payload);
    assert_eq!(
        c.tables[0].columns,
        Columns::Only(vec!["id".into(), "title".into()])
    );
    assert_eq!(c.events.max_event_bytes, 1 << 20);

    for (table, events, key, says) in [
        ("payload = \"rows\"", "", "tables[0].payload", "\"ids\""),
        (
            "columns = [\"a\"]\nexclude_columns = [\"b\"]",
            "",
            "tables[0].exclude_columns",
            "not both",
        ),
        ("columns = []", "", "tables[0].columns", "at least one"),
        (
            "columns = [\"a\", \"a\"]",
            "",
            "tables[0].columns[1]",
            "named twice",
        ),
        (
            "exclude_columns = [\"\"]",
            "",
            "tables[0].exclude_columns[0]",
            "1 to 63",
        ),
        (
            "numeric_as_number = true",
            "",
            "tables[0].numeric_as_number",
            "payload = \"row\"",
        ),
        (
            "",
            "[events]\nmax_event_bytes = 10",
            "events.max_event_bytes",
            "from 1024",
        ),
    ] {
        let issue = only_issue(&text(table, events), key);
        assert!(issue.message.contains(says), "{key}: {issue}");
    }
}

#[test]
fn channel_templates_are_read_and_mistakes_named() {
    let text = |table: &str| {
        format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\n{table}\n[[sinks]]\ntype = \"stdout\"\n"
        )
    };
    let c = ok(&text(
        "channels = [\"tenants/{org_id}/resources/t\", \"resources/t\"]",
    ));
    let t = &c.tables[0];
    assert_eq!(t.channel(), "tenants/{org_id}/resources/t");
    assert_eq!(t.template_columns(), ["org_id"]);
    assert!(t.channels[1].is_fixed());
    for (table, key, says) in [
        (
            "channel = \"a\"\nchannels = [\"b\"]",
            "tables[0].channels",
            "not both",
        ),
        ("channels = []", "tables[0].channels", "at least one"),
        (
            "channels = [\"a/{x}\", \"a/{x}\"]",
            "tables[0].channels[1]",
            "named twice",
        ),
        (
            "channel = \"org-{id}/t\"",
            "tables[0].channel",
            "whole segment",
        ),
        (
            "channel = \"t/{secret}\"\nexclude_columns = [\"secret\"]",
            "tables[0].channels[0]",
            "publish `secret`",
        ),
    ] {
        let issue = only_issue(&text(table), key);
        assert!(issue.message.contains(says), "{key}: {issue}");
    }
}

#[test]
fn a_fixed_channel_a_template_renders_and_a_colliding_separator_are_refused() {
    let text = format!(
        "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"t\"\nchannel = \"tenants/{{org}}/t\"\n[[tables]]\nname = \"u\"\nchannel = \"tenants/admin/t\"\n[[sinks]]\ntype = \"stdout\"\n"
    );
    let issue = only_issue(&text, "tables[1].channel");
    assert!(
        issue.message.contains("template `tenants/{org}/t`"),
        "{issue}"
    );
}
