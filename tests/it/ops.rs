//! Operating pglive as a service: the ops endpoints and metrics during a real stream, graceful
//! shutdown within `ops.shutdown_timeout`, systemd notifications, a standby taking over from a
//! killed instance, the heartbeat, lag warnings, `check` warnings, and `teardown` of a held slot.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::free_port;
use crate::support::{Daemon, TestDb, all_ids, http_get, metric, pglive, wait_until};

fn ops_section(port: u16, extra: &str) -> String {
    format!("[ops]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n")
}

/// Waits until `GET path` answers `code`; returns the body.
#[track_caller]
fn wait_http(port: u16, path: &str, code: u16) -> String {
    let mut last = None;
    let mut body = String::new();
    wait_until(&format!("GET {path} → {code} (last: {last:?})"), || {
        last = http_get(port, path);
        match &last {
            Some((c, b)) if *c == code => {
                body = b.clone();
                true
            }
            _ => false,
        }
    });
    body
}

/// Waits until `/readyz` answers 503 with a reason containing `needle`; returns the reason.
#[track_caller]
fn wait_unready(port: u16, needle: &str) -> String {
    let mut body = String::new();
    wait_until(
        &format!("/readyz → 503 mentioning {needle:?}"),
        || match http_get(port, "/readyz") {
            Some((503, b)) if b.contains(needle) => {
                body = b;
                true
            }
            _ => false,
        },
    );
    body
}

fn scrape(port: u16) -> String {
    let (code, page) = http_get(port, "/metrics").expect("the ops listener answers");
    assert_eq!(code, 200);
    page
}

#[track_caller]
fn value(page: &str, series: &str) -> f64 {
    metric(page, series).unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

fn ids(events: &[Value]) -> BTreeSet<i64> {
    all_ids(events).iter().filter_map(Value::as_i64).collect()
}

#[test]
fn metrics_and_readiness_follow_a_real_stream() {
    let db = TestDb::new("ops_metrics");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let port = free_port();
    let config = db.config(
        &["name = \"t\""],
        &format!("[events]\ncoalesce = false\n{}", ops_section(port, "")),
    );
    let d = Daemon::run(&config);
    assert_eq!(wait_http(port, "/healthz", 200), "ok\n");
    assert_eq!(wait_http(port, "/readyz", 200), "ready\n");

    db.sql("INSERT INTO t SELECT generate_series(1, 5); UPDATE t SET id = id WHERE id <= 2; DELETE FROM t WHERE id = 5;");
    d.wait_events("8 events", |e| e.len() >= 8);
    let mut page = String::new();
    wait_until("the counters to show the 8 events", || {
        page = scrape(port);
        metric(
            &page,
            r#"pglive_events_published_total{sink="stdout",type="deleted"}"#,
        ) == Some(1.0)
    });
    assert_eq!(
        value(
            &page,
            r#"pglive_events_published_total{sink="stdout",type="created"}"#
        ),
        5.0
    );
    assert_eq!(
        value(
            &page,
            r#"pglive_events_published_total{sink="stdout",type="updated"}"#
        ),
        2.0
    );
    assert_eq!(
        value(&page, r#"pglive_sink_errors_total{sink="stdout"}"#),
        0.0
    );
    assert_eq!(
        value(&page, r#"pglive_sink_inflight_events{sink="stdout"}"#),
        0.0
    );
    assert_eq!(value(&page, r#"pglive_sink_healthy{sink="stdout"}"#), 1.0);
    assert_eq!(value(&page, "pglive_streaming"), 1.0);
    // Three transactions, one latency sample per acknowledged batch.
    let samples = value(
        &page,
        r#"pglive_commit_to_ack_seconds_count{sink="stdout"}"#,
    );
    assert!(samples >= 1.0, "latency samples: {samples}");
    assert!(
        value(
            &page,
            r#"pglive_commit_to_ack_seconds_bucket{sink="stdout",le="+Inf"}"#
        ) == samples
    );
    assert!(page.contains("# TYPE pglive_commit_to_ack_seconds histogram"));

    // The confirmed position is the slot's, and it moves with the stream.
    let flushed = value(&page, "pglive_confirmed_flush_lsn") as u64;
    assert!(flushed > 0);
    db.sql("INSERT INTO t VALUES (100)");
    d.wait_events("the 9th event", |e| e.len() >= 9);
    let commit = db.current_wal();
    wait_until("pglive_confirmed_flush_lsn to pass the new commit", || {
        let page = scrape(port);
        metric(&page, "pglive_confirmed_flush_lsn").is_some_and(|v| v as u64 >= commit)
            && metric(&page, r#"pglive_slot_wal_status{status="reserved"}"#) == Some(1.0)
    });
    let page = scrape(port);
    assert!(value(&page, "pglive_confirmed_flush_lsn") as u64 > flushed);
    // Caught up: nothing waits, and the lag is what the server wrote since (status updates).
    assert_eq!(value(&page, "pglive_replication_lag_seconds"), 0.0);
    // The cluster is shared with the other tests, whose WAL counts too: the lag is at most
    // what the server wrote since the commit that pglive confirmed.
    let lag = value(&page, "pglive_replication_lag_bytes") as u64;
    let written_since = db.current_wal() - commit;
    assert!(
        lag <= written_since,
        "lag {lag} bytes while caught up; the server wrote {written_since} since"
    );
    assert_eq!(value(&page, "pglive_lag_warning"), 0.0);
    for name in [
        "pglive_server_wal_lsn",
        "pglive_slot_wal_status{status=\"lost\"}",
    ] {
        value(&page, name);
    }
    // The test cluster has max_slot_wal_keep_size unlimited: no safe size to report.
    if db.sql("SHOW max_slot_wal_keep_size") == "-1" {
        assert!(metric(&page, "pglive_slot_safe_wal_size_bytes").is_none());
    }
}

#[test]
fn a_sink_that_cannot_deliver_makes_readyz_fail_with_its_reason_and_raises_the_lag_warning() {
    let db = TestDb::new("ops_unready");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let port = free_port();
    // Nothing listens on this port: the AMQP sink keeps retrying.
    let amqp_port = free_port();
    let config = format!(
        "{}[[sinks]]\ntype = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{amqp_port}/%2f\"\nmax_backoff = \"1s\"\n",
        db.config(
            &["name = \"t\""],
            &ops_section(port, "lag_warning_age = \"2s\"")
        ),
    );
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    let body = wait_unready(port, &format!("127.0.0.1:{amqp_port}"));
    assert!(
        body.starts_with("not ready: sinks[1] (amqp): "),
        "reason: {body}"
    );
    assert!(
        body.contains(&format!("127.0.0.1:{amqp_port}")),
        "reason: {body}"
    );
    assert_eq!(
        http_get(port, "/healthz").unwrap().0,
        200,
        "alive all the same"
    );

    // A change the AMQP sink cannot deliver: its age passes lag_warning_age.
    db.sql("INSERT INTO t VALUES (1)");
    d.wait_events("stdout's event", |e| !e.is_empty());
    d.wait_log("replication lag is above");
    let page = scrape(port);
    assert_eq!(value(&page, "pglive_lag_warning"), 1.0);
    assert!(value(&page, "pglive_replication_lag_seconds") >= 2.0);
    assert_eq!(
        value(&page, r#"pglive_sink_inflight_events{sink="amqp"}"#),
        1.0
    );
    assert_eq!(value(&page, r#"pglive_sink_healthy{sink="amqp"}"#), 0.0);
    assert!(value(&page, r#"pglive_sink_errors_total{sink="amqp"}"#) >= 1.0);
    assert_eq!(
        value(
            &page,
            r#"pglive_events_published_total{sink="stdout",type="created"}"#
        ),
        1.0
    );
    assert!(
        metric(
            &page,
            r#"pglive_events_published_total{sink="amqp",type="created"}"#
        )
        .unwrap_or(0.0)
            == 0.0
    );
}

/// PostgreSQL says nothing of DDL in the stream: a renamed table keeps streaming with a
/// warning; a dropped one is an error, a metric and a `/readyz` reason; created again, it is
/// added back to the publication (auto_setup) and streams.
#[test]
fn renamed_dropped_and_recreated_tables_are_reported_and_streamed() {
    let db = TestDb::new("ops_tables");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE keep (id int PRIMARY KEY);
         CREATE TABLE f (id int PRIMARY KEY)",
    );
    let port = free_port();
    let config = db.config(
        &[
            "name = \"t\"",
            "name = \"keep\"",
            "name = \"f\"\nwhere = \"id > 100\"",
        ],
        &format!("[events]\ncoalesce = false\n{}", ops_section(port, "")),
    );
    let d = Daemon::run(&config);
    wait_http(port, "/readyz", 200);
    let has = |id: i64| move |e: &[Value]| ids(e).contains(&id);

    db.sql("ALTER TABLE t RENAME TO t2");
    db.sql("INSERT INTO t2 VALUES (1)");
    let events = d.wait_events("the renamed table's row", has(1));
    let row = events
        .iter()
        .find(|e| e["payload"]["ids"] == serde_json::json!([1]));
    assert_eq!(row.unwrap()["channel"], "resources/t");
    // The table watch's warning (the stream's own says the same at the Relation message).
    d.wait_log("update tables[0].name");
    assert_eq!(wait_http(port, "/readyz", 200), "ready\n");
    // A reconnection meanwhile does not stop pglive over the name it no longer finds.
    let reconnect = || {
        db.sql(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ))
    };
    reconnect();
    db.sql("INSERT INTO t2 VALUES (10)");
    d.wait_events("a row after the reconnection", has(10));
    db.sql("ALTER TABLE t2 RENAME TO t");

    db.sql("DROP TABLE t");
    let reason = wait_unready(port, "table public.t (tables[0]) was dropped");
    assert!(reason.contains("cannot stream"), "{reason}");
    d.wait_log("a mapped table was dropped");
    assert_eq!(value(&scrape(port), "pglive_tables_unstreamed"), 1.0);
    reconnect();
    db.sql("INSERT INTO keep VALUES (11)");
    d.wait_events("a row of another table after the reconnection", has(11));

    // Created again: not in the publication until the watch adds it back.
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    assert_eq!(wait_http(port, "/readyz", 200), "ready\n");
    d.wait_log("added it back");
    assert_eq!(value(&scrape(port), "pglive_tables_unstreamed"), 0.0);
    db.sql("INSERT INTO t VALUES (2); INSERT INTO keep VALUES (3)");
    let events = d.wait_events("rows of the re-created table and the other", |e| {
        has(2)(e) && has(3)(e)
    });
    let row = events
        .iter()
        .find(|e| e["payload"]["ids"] == serde_json::json!([2]));
    assert_eq!(row.unwrap()["channel"], "resources/t");

    // A table with a row filter comes back with it; one without a key is not added (UPDATE
    // and DELETE on it would fail) and says so.
    let filter = || {
        db.sql(
            "SELECT coalesce(rowfilter, 'none') FROM pg_publication_tables WHERE tablename = 'f'",
        )
    };
    assert_eq!(filter(), "(id > 100)");
    db.sql("DROP TABLE f");
    wait_unready(port, "table public.f (tables[2]) was dropped");
    db.sql("CREATE TABLE f (id int)");
    let reason = wait_unready(port, "no primary key or usable REPLICA IDENTITY");
    assert!(
        reason.contains("table public.f (tables[2]) is not in publication pglive"),
        "{reason}"
    );
    db.sql("ALTER TABLE f ADD PRIMARY KEY (id)");
    assert_eq!(wait_http(port, "/readyz", 200), "ready\n");
    assert_eq!(filter(), "(id > 100)");
}

#[test]
fn sigterm_with_a_stuck_sink_exits_zero_within_the_shutdown_timeout() {
    let db = TestDb::new("ops_stuck");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let amqp_port = free_port();
    let port = free_port();
    let config = format!(
        "{}[[sinks]]\ntype = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{amqp_port}/%2f\"\n",
        db.config(
            &["name = \"t\""],
            &ops_section(port, "shutdown_timeout = \"4s\"")
        )
    );
    let mut d = Daemon::run(&config);
    d.wait_log("streaming");
    db.sql("INSERT INTO t VALUES (1)");
    d.wait_events("stdout's event", |e| !e.is_empty());
    let before = db.confirmed_flush().unwrap();
    let started = Instant::now();
    d.signal("TERM");
    // Draining: no longer ready, and saying so.
    assert_eq!(wait_unready(port, "stopping"), "not ready: stopping\n");
    let status = d.wait_exit(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", d.stderr());
    assert!(took < Duration::from_secs(4), "stopping took {took:?}");
    // The final status update confirmed nothing the AMQP sink had not delivered.
    assert!(
        d.stderr().contains("final position confirmed"),
        "{}",
        d.stderr()
    );
    let after = db.confirmed_flush().unwrap();
    let commit = db.lsn(d.events()[0]["meta"]["lsn"].as_str().unwrap());
    assert!(
        after < commit,
        "slot at {after} passed the undelivered commit {commit} (was {before})"
    );
}

#[test]
fn systemd_hears_ready_when_streaming_watchdog_pings_and_stopping() {
    let db = TestDb::new("ops_notify");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Another instance holds the slot first: no READY=1 while standing by.
    let config = db.config(&["name = \"t\""], "");
    let mut active = Daemon::run(&config);
    active.wait_log("streaming");
    let mut d = Daemon::spawn_with_env(
        &config,
        &["run"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let receive_until = |what: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.iter().any(|m| m.lines().any(|l| l == what)) {
            assert!(Instant::now() < deadline, "no {what} in {seen:?}");
            let mut buf = [0u8; 4096];
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let holder = db.sql(&format!(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
        db.slot
    ));
    receive_until(
        &format!(
            "STATUS=standing by: replication slot {0} is in use by another process (replication slot {0} is active for PID {holder})",
            db.slot
        ),
        &mut seen,
    );
    assert!(!seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    active.kill();
    receive_until("READY=1", &mut seen);
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains(&format!("STATUS=streaming from slot {}", db.slot)),
        "{ready}"
    );
    receive_until("WATCHDOG=1", &mut seen);
    d.signal("TERM");
    receive_until("STOPPING=1", &mut seen);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        seen.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{seen:?}"
    );
}

#[test]
fn a_standby_takes_over_within_10_s_of_the_active_instance_dying_and_nothing_is_lost() {
    let db = TestDb::new("ops_standby");
    db.sql("CREATE TABLE t (id int8 PRIMARY KEY)");
    let (port_a, port_b) = (free_port(), free_port());
    let config = |port| db.config(&["name = \"t\""], &ops_section(port, ""));
    let mut active = Daemon::run(&config(port_a));
    wait_http(port_a, "/readyz", 200);
    let standby = Daemon::run(&config(port_b));
    standby.wait_log("standing by");
    let reason = wait_unready(port_b, "standing by");
    assert!(reason.contains("standing by"), "{reason}");

    // A writer commits one row at a time, all through the takeover.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, written, cluster, name) =
            (stop.clone(), written.clone(), db.cluster, db.name.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sql: String = (n + 1..=n + 20)
                    .map(|i| format!("INSERT INTO t VALUES ({i});"))
                    .collect();
                cluster.psql(&name, &sql);
                n += 20;
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    active.wait_events("the active instance streaming", |e| ids(e).len() >= 200);
    active.kill();
    let killed = Instant::now();
    wait_http(port_b, "/readyz", 200);
    let takeover = killed.elapsed();
    standby.wait_events("the standby streaming", |e| !e.is_empty());
    // Some more rows after the takeover, then stop writing.
    let at_takeover = written.load(Ordering::Relaxed);
    wait_until("more rows written", || {
        written.load(Ordering::Relaxed) >= at_takeover + 200
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = written.load(Ordering::Relaxed);
    let events = standby.wait_events("every row", |e| {
        ids(e).last().is_some_and(|&last| last >= total)
    });
    let mut seen = ids(&active.events());
    seen.extend(ids(&events));
    let missing: Vec<i64> = (1..=total).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "lost {} rows: {missing:?}",
        missing.len()
    );
    assert!(
        takeover < Duration::from_secs(10),
        "the standby took {takeover:?} to take over"
    );
    eprintln!("standby took over after {takeover:?}; {total} rows, none lost");
}

#[test]
fn the_heartbeat_writes_logical_messages_into_the_wal() {
    let db = TestDb::new("ops_heartbeat");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let probe = format!("{}_probe", db.slot);
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{probe}', 'test_decoding')"
    ));
    let d = Daemon::run(&db.config(&["name = \"t\""], "heartbeat_interval = \"1s\""));
    d.wait_log("streaming");
    let peek = format!(
        "SELECT count(*) FROM pg_logical_slot_peek_changes('{probe}', NULL, NULL) WHERE data LIKE '%prefix: pglive.heartbeat%'"
    );
    wait_until("two heartbeat messages", || {
        db.sql(&peek).parse::<i64>().unwrap_or(0) >= 2
    });
    drop(d);
    db.sql(&format!("SELECT pg_drop_replication_slot('{probe}')"));
}

#[test]
fn logs_are_json_lines_with_log_format_json() {
    let db = TestDb::new("ops_json");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut d = Daemon::spawn(
        &db.config(&["name = \"t\""], ""),
        &["run", "--log-format", "json"],
    );
    d.wait_log("streaming");
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    let log = d.stderr();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let streaming = lines
        .iter()
        .find(|l| l["message"] == "streaming")
        .unwrap_or_else(|| panic!("no streaming line in {log}"));
    assert_eq!(streaming["level"], "INFO");
    assert_eq!(streaming["slot"], db.slot.as_str());
    assert!(streaming["timestamp"].is_string());
}

#[test]
fn check_warns_about_unlimited_wal_retention_and_a_standby_slot() {
    let db = TestDb::new("ops_check");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "");
    crate::support::setup(&config);
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    if db.sql("SHOW max_slot_wal_keep_size") == "-1" {
        assert!(
            out.contains("warn  max_slot_wal_keep_size is unlimited"),
            "{out}"
        );
        assert!(
            out.contains("ALTER SYSTEM SET max_slot_wal_keep_size"),
            "{out}"
        );
    }
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(
        code, 0,
        "a standby's check passes with a warning: {out}{err}"
    );
    assert!(out.contains("will stand by until it is released"), "{out}");
}

#[test]
fn teardown_refuses_a_held_slot_unless_forced() {
    let db = TestDb::new("ops_teardown");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "");
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    let (code, out, err) = pglive(&["teardown"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is in use by process"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(db.confirmed_flush().is_some(), "the slot is still there");
    let (code, out, err) = pglive(&["teardown", "--force"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dropped replication slot"), "{out}");
    assert!(db.confirmed_flush().is_none(), "the slot is gone");
    drop(d);
}

#[test]
fn the_relay_reports_its_clients_and_readiness() {
    use crate::support::ws::WsClient;
    let db = TestDb::new("ops_ws");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (port, ws_port) = (free_port(), free_port());
    let config = format!(
        "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{ws_port}\"\nanonymous = true\nallowed_origins = [\"http://app.example\"]\n",
        db.config(&["name = \"t\""], &ops_section(port, ""))
    );
    let _d = Daemon::run(&config);
    wait_http(port, "/readyz", 200);
    let url = format!("ws://127.0.0.1:{ws_port}/live");
    let mut a = WsClient::connect(&url, &[]).unwrap();
    let b = WsClient::connect(&url, &[]).unwrap();
    a.subscribe("resources/t");
    assert_eq!(a.next()["op"], "subscribed");
    let clients = r#"pglive_websocket_clients{sink="websocket"}"#;
    wait_until("two clients counted", || {
        metric(&scrape(port), clients) == Some(2.0)
    });
    drop(b);
    wait_until("one client counted", || {
        metric(&scrape(port), clients) == Some(1.0)
    });
    db.sql("INSERT INTO t VALUES (1)");
    assert_eq!(a.next()["type"], "created");
    wait_until("the relay's event counted", || {
        metric(
            &scrape(port),
            r#"pglive_events_published_total{sink="websocket",type="created"}"#,
        ) == Some(1.0)
    });
}

#[test]
fn sigterm_while_the_slot_is_being_created_exits_zero_at_once() {
    // A cluster of its own: the open transaction below would hold up every slot creation.
    let cluster = crate::support::Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "ops_creating");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    std::thread::scope(|scope| {
        // A transaction with an xid: creating a logical slot waits for it to end.
        scope.spawn(|| {
            let _ = cluster.try_psql(
                &db.name,
                "BEGIN; SELECT txid_current(); SELECT pg_sleep(60); COMMIT;",
            );
        });
        wait_until("the open transaction", || {
            db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()") == "1"
        });
        let mut d = Daemon::run(&db.config(&["name = \"t\""], ""));
        wait_until("pglive waiting to create its slot", || {
            db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_create_logical_replication_slot%' AND pid <> pg_backend_pid()") == "1"
        });
        let started = Instant::now();
        d.signal("TERM");
        let status = d.wait_exit(Duration::from_secs(60));
        let took = started.elapsed();
        db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()");
        assert!(status.success(), "exit status {status:?}\n{}", d.stderr());
        assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    });
}

#[test]
fn with_capped_retention_the_slot_reports_how_much_wal_it_may_still_hold() {
    // A cluster of its own: the setting is server-wide.
    let cluster = crate::support::Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "ops_safe_wal");
    db.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'; SELECT pg_reload_conf();");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let port = free_port();
    let config = db.config(&["name = \"t\""], &ops_section(port, ""));
    let _d = Daemon::run(&config);
    wait_http(port, "/readyz", 200);
    let mut page = String::new();
    wait_until("pglive_slot_safe_wal_size_bytes", || {
        page = scrape(port);
        metric(&page, "pglive_slot_safe_wal_size_bytes").is_some()
    });
    let safe = value(&page, "pglive_slot_safe_wal_size_bytes");
    assert!(
        safe > 0.0 && safe <= 2.0 * 64.0 * 1024.0 * 1024.0,
        "safe_wal_size {safe}"
    );
    assert!(page.contains("# TYPE pglive_slot_safe_wal_size_bytes gauge"));
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    max_slot_wal_keep_size is 64MB"),
        "{out}"
    );
}

#[test]
fn the_ops_listener_caps_connections_and_cuts_off_unfinished_requests() {
    use crate::support::{unfinished_requests, until_closed};
    let db = TestDb::new("ops_cap");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let port = free_port();
    let config = db.config(&["name = \"t\""], &ops_section(port, ""));
    let _d = Daemon::run(&config);
    wait_http(port, "/healthz", 200);
    let started = Instant::now();
    let mut held = unfinished_requests(port, pglive::ops::MAX_CONNECTIONS);
    let (code, _) = http_get(port, "/healthz").expect("an answer");
    assert_eq!(
        code, 503,
        "over the cap, refused before any request is read"
    );
    // Unfinished requests are closed once their headers are overdue (10 s)…
    for s in &mut held {
        assert!(
            until_closed(s, crate::support::WAIT).is_some(),
            "still open"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(9),
        "cut off after {elapsed:?}"
    );
    // …and their places are free again.
    wait_http(port, "/healthz", 200);
}
