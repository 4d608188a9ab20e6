//! The commands: exit codes, configuration errors naming their keys, `check`, `setup`,
//! `teardown`.

use crate::support::{TestDb, pglive};

#[test]
fn bad_config_exits_2_naming_every_key() {
    let config = "[postgres]\nurl = \"postgres://u:hunter2@127.0.0.1:1/d?sslmode=bogus\"\nslot = \"Bad-Slot\"\nsloth = 1\n\
                  [[tables]]\nname = \"a.b.c\"\n[[sinks]]\ntype = \"carrier-pigeon\"\n";
    let (code, out, err) = pglive(&["check"], config);
    assert_eq!(code, 2, "{out}{err}");
    for key in [
        "postgres.sloth",
        "postgres.url",
        "tables[0].name",
        "sinks[0]",
    ] {
        assert!(err.contains(key), "error names {key}: {err}");
    }
    assert!(!err.contains("hunter2"), "secrets never printed: {err}");

    let (code, _, err) = pglive(&["run"], "[postgres]\nslot = \"x\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("postgres.url") && err.contains("tables") && err.contains("sinks"),
        "{err}"
    );
}

#[test]
fn missing_config_file_and_usage_errors_exit_2() {
    let out = std::process::Command::new(crate::support::BIN)
        .args(["run", "--config", "/nonexistent/pglive.toml"])
        .env_remove("PGLIVE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = std::process::Command::new(crate::support::BIN)
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn environment_overrides_the_file_and_is_named_in_errors() {
    let db = TestDb::new("envcfg");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        db.config(&["name = \"t\""], "")
            .replace(&db.url(), "postgres://nobody@127.0.0.1:1/x"),
    )
    .unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut c = std::process::Command::new(crate::support::BIN);
        c.arg("setup")
            .arg("-c")
            .arg(file.path())
            .env_remove("PGLIVE_CONFIG");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[("PGLIVE_POSTGRES__URL", &db.url())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Text settings are taken as written: `007` stays `007`, not the number 7.
    let out = std::process::Command::new(crate::support::BIN)
        .args(["check", "-c"])
        .arg(file.path())
        .env_remove("PGLIVE_CONFIG")
        .env("PGLIVE_POSTGRES__URL", db.url())
        .env("PGLIVE_POSTGRES__SLOT", "007")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("replication slot 007 does not exist"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[("PGLIVE_POSTGRES__SLOT", "No Good")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postgres.slot") && err.contains("PGLIVE_POSTGRES__SLOT"),
        "{err}"
    );
}

#[test]
fn check_explains_a_table_without_a_key() {
    let db = TestDb::new("nokey");
    db.sql("CREATE TABLE loose (a int, b text); CREATE TABLE fine (id int PRIMARY KEY);");
    let config = db.config(&["name = \"loose\"", "name = \"fine\""], "");
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  table public.loose has no primary key"),
        "{out}"
    );
    assert!(
        out.contains("ALTER TABLE \"public\".\"loose\" ADD PRIMARY KEY"),
        "{out}"
    );
    assert!(out.contains("ok    table public.fine"), "{out}");
    // setup refuses to publish it: that would break UPDATE/DELETE on the table.
    let (code, out, err) = pglive(&["setup"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("public.loose") && err.contains("ADD PRIMARY KEY"),
        "{err}"
    );
}

#[test]
fn setup_is_idempotent_check_passes_teardown_removes() {
    let db = TestDb::new("lifecycle");
    db.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);");
    // Managed by hand (auto_setup = false): what is missing fails the check.
    let config = db.config(&["name = \"t\""], "auto_setup = false");
    let (code, out, _) = pglive(&["check"], &config);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  publication pglive does not exist") && out.contains("pglive setup"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FAIL  replication slot {} does not exist",
            db.slot
        )),
        "{out}"
    );
    // With auto_setup (the default), `run` would create them: warnings, and check passes.
    let (code, out, _) = pglive(&["check"], &db.config(&["name = \"t\""], ""));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warn  publication pglive does not exist: `pglive run` will create it"),
        "{out}"
    );

    let (code, out, err) = pglive(&["setup"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("created publication") && out.contains("created replication slot"),
        "{out}"
    );
    let (code, out, _) = pglive(&["setup"], &config);
    assert_eq!(code, 0);
    assert!(out.contains("already in place"), "{out}");
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all checks passed"), "{out}");

    // A newly mapped table is reported, then added by setup.
    let wider = db.config(&["name = \"t\"", "name = \"u\""], "auto_setup = false");
    let (code, out, _) = pglive(&["check"], &wider);
    assert_eq!(code, 1);
    assert!(
        out.contains("ALTER PUBLICATION \"pglive\" ADD TABLE \"public\".\"u\""),
        "{out}"
    );
    // `run` refuses to start rather than stream t and silently drop u.
    let (code, out, err) = pglive(&["run"], &wider);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("publication pglive does not include public.u")
            && err.contains("ALTER PUBLICATION \"pglive\" ADD TABLE \"public\".\"u\";"),
        "{err}"
    );
    let (code, out, _) = pglive(&["setup"], &wider);
    assert_eq!(code, 0);
    assert!(out.contains("added \"public\".\"u\""), "{out}");

    let (code, out, err) = pglive(&["teardown"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("dropped replication slot") && out.contains("dropped publication"),
        "{out}"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        )),
        "0"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication"), "0");
}

#[test]
fn check_reports_wal_level_and_privileges() {
    // The harness cluster is logical; a role without REPLICATION shows the privilege fix.
    let db = TestDb::new("privs");
    db.sql("CREATE TABLE t (id int PRIMARY KEY); DROP ROLE IF EXISTS plain_user; CREATE ROLE plain_user LOGIN;");
    let config = db
        .config(&["name = \"t\""], "")
        .replace("postgres://postgres@", "postgres://plain_user@");
    let (code, out, _) = pglive(&["check"], &config);
    db.sql("DROP ROLE plain_user");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    wal_level is logical"), "{out}");
    assert!(
        out.contains("lacks the REPLICATION privilege")
            && out.contains("ALTER ROLE \"plain_user\" WITH REPLICATION"),
        "{out}"
    );
}

#[test]
fn the_example_configuration_is_valid_and_documents_every_key() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    // Parsed without the environment, so the test does not depend on the caller's PGLIVE_*.
    let text = std::fs::read_to_string(&path).unwrap();
    let config = pglive::config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.postgres.slot, pglive::config::DEFAULT_SLOT);
    assert_eq!(config.tables[0].channel(), "resources/products");
    for key in [
        "url",
        "password_file",
        "slot",
        "publication",
        "auto_setup",
        "status_interval",
        "connect_timeout",
        "max_backoff",
        "max_message_bytes",
        "heartbeat_interval",
        "allow_insecure_password",
        "on_slot_lost",
        "shutdown_timeout",
        "log_format",
        "log_level",
        "lag_warning_bytes",
        "lag_warning_age",
        "coalesce",
        "max_ids_per_event",
        "name",
        "channel",
        "ids_as_strings",
        "data_provider_name",
        "type",
        // file
        "path",
        "fsync",
        // amqp
        "exchange",
        "declare",
        "routing_key",
        "mandatory",
        "on_reject",
        "max_inflight",
        "max_inflight_bytes",
        "ca_file",
        // websocket
        "listen",
        "jwt_secret",
        "jwt_secret_file",
        "jwt_public_key_file",
        "anonymous",
        "allowed_origins",
        "history",
        "history_age",
        "client_queue",
        "max_connections",
        "ping_interval",
        "jwt_audience",
        "jwt_issuer",
        "jwt_leeway",
        "header_timeout",
        "max_subscriptions",
        // webhook
        "secret",
        "secret_file",
        "headers",
        "header_files",
        "timeout",
        "batch_max_events",
        "batch_max_bytes",
        "on_rejected",
        // webhook presets
        "preset",
        "key",
        "key_file",
        "app_id",
        "cluster",
        "channel_prefix",
        "channel_separator",
        // mqtt
        "client_id",
        "topic_prefix",
        "keep_alive",
        "max_packet_size",
        // redis
        "mode",
        "max_len",
        "namespace",
        "room_prefix",
        "event",
        "require_subscribers",
        // nats
        "token_file",
        "subject_prefix",
        "stream",
        "create_stream",
        "stream_max_age",
        "stream_max_bytes",
        "duplicate_window",
        "tls",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "config.toml.example documents {key}"
        );
    }
}

#[test]
fn the_relay_example_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml.example");
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt");
    std::fs::write(&secret, "a-secret-of-at-least-thirty-two-bytes").unwrap();
    // The example's secret file exists on a server, not here.
    let text = text.replace(
        "/run/secrets/pglive-jwt-secret",
        &secret.display().to_string(),
    );
    let config = pglive::config::relay_from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.stream.stream, pglive::relay::DEFAULT_STREAM);
    assert_eq!(config.tables[0].channel(), "resources/products");
    assert_eq!(config.websocket.listen.port(), 8080);
    // The source's example is not a relay node's configuration, and the other way round.
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example"),
    )
    .unwrap();
    let err = pglive::config::relay_from_toml(&source)
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres") && err.contains("relay"), "{err}");
    let err = pglive::config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("pglive relay"), "{err}");
}

#[test]
fn check_on_a_relay_file_looks_for_the_stream() {
    let mq = crate::support::broker::Vhost::new("check_relay");
    let config = |stream: &str| {
        format!(
            "[relay]\nurl = \"{}\"\nstream = \"{stream}\"\n\
             [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:0\"\nanonymous = true\n\
             allowed_origins = [\"http://localhost\"]\n[[tables]]\nname = \"t\"\n",
            mq.url()
        )
    };
    let (code, out, err) = pglive(&["check"], &config("missing.live"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  relay: cannot read stream \"missing.live\"")
            && out.contains("does not exist")
            && out.contains("amqp sink"),
        "{out}"
    );
    mq.queue_with("checks", "present.live", "#", {
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("stream".into()),
        );
        args
    });
    let (code, out, err) = pglive(&["check"], &config("present.live"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    relay: connected to") && out.contains("stream \"present.live\" exists"),
        "{out}"
    );
}

#[test]
fn check_reports_on_each_sink() {
    let db = TestDb::new("checksinks");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[[sinks]]\ntype = \"file\"\npath = \"{}/events.jsonl\"\n",
        db.config(&["name = \"t\""], ""),
        dir.path().display()
    );
    crate::support::setup(&config);
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    sinks[0]: stdout"), "{out}");
    assert!(
        out.contains("ok    sinks[1]:") && out.contains("can be created"),
        "{out}"
    );
    assert!(
        !dir.path().join("events.jsonl").exists(),
        "check creates nothing"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "its probe is removed"
    );
}
