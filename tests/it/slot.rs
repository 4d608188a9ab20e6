//! A slot PostgreSQL invalidated (`wal_status = 'lost'`): `run` stops with the cause and the
//! fix, or, with `postgres.on_slot_lost = "recreate"`, recreates the slot and sends every
//! mapped channel one `*` event before anything else, delivered like any event.
//!
//! Each test has a cluster of its own: the WAL cap is server-wide, and forcing it (WAL switches
//! and checkpoints) would invalidate other tests' slots.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::free_port;
use crate::support::{Cluster, Daemon, TestDb, WAIT, http_get, metric, pglive, setup, wait_until};

/// Lets a slot hold at most 1 MB of WAL beyond what the server keeps anyway.
fn cap_wal(db: &TestDb) {
    db.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf();");
    wait_until("max_slot_wal_keep_size to take effect", || {
        db.sql("SHOW max_slot_wal_keep_size") == "1MB"
    });
}

fn wal_status(db: &TestDb) -> String {
    db.cluster.psql(
        "postgres",
        &format!(
            "SELECT coalesce(wal_status, 'none') FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ),
    )
}

/// Writes WAL into a table nothing maps, moves to a new WAL segment and checkpoints: past the
/// cap, the checkpoint removes WAL the slot needs and invalidates it (ending its walsender
/// first, if one streams from it).
fn churn_wal(db: &TestDb) {
    db.sql(
        "CREATE TABLE IF NOT EXISTS filler (id serial PRIMARY KEY, pad text);
         INSERT INTO filler (pad) SELECT repeat('x', 200) FROM generate_series(1, 5000);
         SELECT pg_switch_wal(); CHECKPOINT;",
    );
}

/// With pglive stopped: churns WAL until PostgreSQL has invalidated the slot.
fn lose_slot(db: &TestDb) {
    wait_until("the slot to be invalidated", || {
        churn_wal(db);
        wal_status(db) == "lost"
    });
}

/// `[[tables]]` bodies: three tables on two channels (`u` and `v` share one).
const TABLES: [&str; 3] = [
    "name = \"t\"",
    "name = \"u\"\nchannel = \"resources/shared\"",
    "name = \"v\"\nchannel = \"resources/shared\"",
];

fn create_tables(db: &TestDb) {
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);
         CREATE TABLE v (id int PRIMARY KEY);",
    );
}

fn is_refetch(e: &Value) -> bool {
    e["type"] == "*"
}

/// Checks that `events` begin with exactly one `*` event per mapped channel, in configuration
/// order, each shaped as the contract says; returns their ids.
#[track_caller]
fn assert_refetch_first(events: &[Value]) -> Vec<String> {
    assert!(events.len() >= 2, "{events:#?}");
    let (first, rest) = events.split_at(2);
    assert!(
        !rest.iter().any(is_refetch),
        "exactly one * event per channel: {events:#?}"
    );
    let channels: Vec<&str> = first
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["resources/t", "resources/shared"], "{events:#?}");
    for (e, table) in first.iter().zip(["t", "u"]) {
        assert!(is_refetch(e), "{e}");
        assert_eq!(e["payload"], serde_json::json!({}), "{e}");
        assert!(e["date"].as_str().unwrap().ends_with('Z'), "{e}");
        let meta = &e["meta"];
        assert_eq!(meta["schema"], "public", "{e}");
        assert_eq!(
            meta["table"], table,
            "the first table mapped to the channel: {e}"
        );
        assert!(meta["xid"].is_u64(), "{e}");
        let lsn = meta["lsn"].as_str().unwrap();
        assert!(
            meta["id"].as_str().unwrap().starts_with(&format!("{lsn}:")),
            "{e}"
        );
    }
    let ids: Vec<String> = first
        .iter()
        .map(|e| e["meta"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(ids[0], ids[1]);
    ids
}

#[test]
fn a_lost_slot_stops_run_with_the_cause_and_the_fix() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "slot_lost_fail");
    cap_wal(&db);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "");
    setup(&config);
    lose_slot(&db);

    let started = Instant::now();
    let mut d = Daemon::run(&config);
    let status = d.wait_exit(Duration::from_secs(30));
    let log = d.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(started.elapsed() < Duration::from_secs(15), "not retried");
    let invalidated = format!("replication slot {} was invalidated", db.slot);
    for needle in [
        invalidated.as_str(),
        "max_slot_wal_keep_size",
        "are lost",
        "`pglive teardown` then `pglive setup`",
        "postgres.on_slot_lost = \"recreate\"",
    ] {
        assert!(log.contains(needle), "{needle:?} in:\n{log}");
    }
    assert!(!log.contains("reconnecting"), "{log}");
    assert!(d.events().is_empty());
    assert_eq!(wal_status(&db), "lost", "the slot is left for the operator");

    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  replication slot") && out.contains("was invalidated"),
        "{out}"
    );
    assert!(
        out.contains("postgres.on_slot_lost = \"recreate\""),
        "{out}"
    );
    assert!(
        out.contains("`pglive teardown` then `pglive setup`"),
        "{out}"
    );
}

#[test]
fn with_recreate_every_channel_gets_one_star_event_before_any_new_event() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "slot_lost_recreate");
    cap_wal(&db);
    create_tables(&db);
    let port = free_port();
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("events.jsonl");
    let config = format!(
        "{}[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        db.config(
            &TABLES,
            &format!("on_slot_lost = \"recreate\"\n[ops]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
        file.display()
    );
    // Streams once, so that the slot has a confirmed position, then stops.
    setup(&config);
    let mut d = Daemon::run(&config);
    d.wait_log("streaming");
    db.sql("INSERT INTO t VALUES (1)");
    d.wait_events("the first change", |e| !e.is_empty());
    d.signal("TERM");
    assert!(d.wait_exit(WAIT).success(), "{}", d.stderr());
    drop(d);
    std::fs::remove_file(&file).unwrap();

    // Committed while pglive is stopped, then lost with the slot.
    db.sql("INSERT INTO t VALUES (2); INSERT INTO u VALUES (2)");
    lose_slot(&db);

    // A writer commits one row at a time all through the recreation, and on for 200 rows once
    // pglive streams from the new slot: what it commits before the marker must not arrive
    // ahead of the * events (the slot starts at the marker), what it commits after comes after
    // them.
    let writer = format!(
        "DO $$
         DECLARE i int := 1000; after int := 0;
                 deadline timestamptz := clock_timestamp() + interval '30 s';
         BEGIN
           WHILE after < 200 AND clock_timestamp() < deadline LOOP
             INSERT INTO t VALUES (i); COMMIT; i := i + 1;
             IF after > 0 OR EXISTS (SELECT 1 FROM pg_stat_replication r
                                      JOIN pg_replication_slots s ON s.active_pid = r.pid
                                     WHERE s.slot_name = '{}') THEN
               after := after + 1;
             END IF;
           END LOOP;
         END $$;",
        db.slot
    );
    let d = std::thread::scope(|scope| {
        let writing = scope.spawn(|| db.sql(&writer));
        wait_until("the writer to commit", || {
            db.sql("SELECT count(*) FROM t WHERE id >= 1000") != "0"
        });
        let d = Daemon::run(&config);
        writing.join().unwrap();
        d
    });
    let written: u64 = db
        .sql("SELECT count(*) FROM t WHERE id >= 1000")
        .parse()
        .unwrap();
    db.sql("INSERT INTO u VALUES (3)");
    let events = d.wait_events("the * events and the last change", |e| {
        e.last()
            .is_some_and(|e| e["payload"]["ids"] == serde_json::json!([3]))
    });
    let ids = assert_refetch_first(&events);
    let (last, written_after) = events[2..].split_last().unwrap();
    assert_eq!(last["channel"], "resources/shared");
    assert_eq!(last["type"], "created");
    assert_ne!(ids[0], last["meta"]["id"].as_str().unwrap());
    // Only rows the writer committed after the marker: none of the rows lost with the slot.
    let rows: Vec<i64> = written_after
        .iter()
        .map(|e| {
            assert_eq!(
                (&e["channel"], &e["type"]),
                (&"resources/t".into(), &"created".into())
            );
            e["payload"]["ids"][0].as_i64().unwrap()
        })
        .collect();
    assert!(rows.windows(2).all(|w| w[0] + 1 == w[1]), "{rows:?}");
    assert!(rows.first().is_some_and(|&r| r > 1000), "{rows:?}");
    assert!(
        rows.len() >= 200 && (rows.len() as u64) < written,
        "{} of {written}",
        rows.len()
    );

    let log = d.stderr();
    assert!(
        log.contains("ERROR") && log.contains("committed after its confirmed position are lost"),
        "{log}"
    );
    assert!(
        log.contains("made the replication slot; it starts at the refetch marker"),
        "{log}"
    );
    // The file sink got exactly the same lines, in the same order.
    wait_until("the file sink to write the last change", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() >= events.len())
    });
    assert_eq!(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        d.raw_lines()
    );
    let (_, page) = http_get(port, "/metrics").expect("metrics");
    assert_eq!(
        metric(&page, "pglive_slot_recreated_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"pglive_events_published_total{sink="stdout",type="*"}"#
        ),
        Some(2.0)
    );
    assert_eq!(wal_status(&db), "reserved");
}

#[test]
fn star_events_not_acknowledged_before_a_crash_are_sent_again_after_it() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "slot_lost_crash");
    cap_wal(&db);
    create_tables(&db);
    let stdout_only = db.config(&TABLES, "on_slot_lost = \"recreate\"");
    setup(&stdout_only);
    lose_slot(&db);
    // With the policy set, check only warns: `run` will recreate the slot.
    let (code, out, err) = pglive(&["check"], &stdout_only);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warn  replication slot")
            && out.contains("nothing: with postgres.on_slot_lost = \"recreate\""),
        "{out}"
    );

    // A second sink that never acknowledges: a named pipe nobody reads.
    let (_dir, fifo) = crate::support::named_pipe();
    let stalled = format!(
        "{stdout_only}[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        fifo.display()
    );
    let mut d = Daemon::run(&stalled);
    let before = d.wait_events("the * events on stdout", |e| e.len() >= 2);
    let ids = assert_refetch_first(&before);
    d.kill();
    assert_eq!(wal_status(&db), "reserved", "recreated");

    // Not recreated again (the slot is fine now), yet the events come first again, with the
    // same ids: the slot did not move past them.
    db.sql("INSERT INTO t VALUES (7)");
    let d = Daemon::run(&stdout_only);
    let after = d.wait_events("the * events and the new change", |e| e.len() >= 3);
    assert_eq!(assert_refetch_first(&after), ids);
    assert_eq!(after.len(), 3, "{after:#?}");
    assert_eq!(after[2]["payload"]["ids"], serde_json::json!([7]));
    assert!(!d.stderr().contains("made the replication slot"));
}

#[test]
fn a_slot_lost_while_streaming_is_recreated_on_the_reconnect() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "slot_lost_streaming");
    cap_wal(&db);
    create_tables(&db);
    // A sink that never acknowledges holds the slot where it is, so that the WAL it needs
    // falls out of the cap while pglive streams.
    let (_dir, fifo) = crate::support::named_pipe();
    let config = format!(
        "{}[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        db.config(&TABLES, "on_slot_lost = \"recreate\""),
        fifo.display()
    );
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    db.sql("INSERT INTO t VALUES (1)");
    d.wait_events("the first change", |e| e.len() == 1);

    // Churn until a checkpoint invalidates the slot (it ends the walsender first); not beyond,
    // or the new slot, which the stalled sink holds too, would be lost as well.
    let deadline = Instant::now() + WAIT;
    loop {
        churn_wal(&db);
        if wal_status(&db) == "lost" || d.stderr().contains("replication slot was invalidated") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated:\n{}",
            d.stderr()
        );
    }
    d.wait_events("the * events", |e| {
        e.iter().filter(|e| is_refetch(e)).count() >= 2
    });
    db.sql("INSERT INTO v VALUES (5)");
    let events = d.wait_events("the new change", |e| {
        e.last()
            .is_some_and(|e| e["payload"]["ids"] == serde_json::json!([5]))
    });
    // Before the slot was lost: the first change (sent again if a reconnect streamed from the
    // old slot once more before PostgreSQL invalidated it).
    let star = events.iter().position(is_refetch).unwrap();
    assert!(star >= 1, "{events:#?}");
    for e in &events[..star] {
        assert_eq!(e["payload"]["ids"], serde_json::json!([1]), "{events:#?}");
    }
    assert_refetch_first(&events[star..]);
    assert_eq!(events.len(), star + 3, "{events:#?}");
    let log = d.stderr();
    assert!(log.contains("made the replication slot"), "{log}");
}

#[test]
fn a_recreation_cut_short_after_the_drop_still_ends_with_the_star_events() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "slot_lost_cut_short");
    cap_wal(&db);
    create_tables(&db);
    let config = db.config(&TABLES, "on_slot_lost = \"recreate\"");
    setup(&config);
    lose_slot(&db);
    // Making a slot waits for the transactions running at the time. With a statement timeout
    // shorter than one of them, the first attempt drops the lost slot, then times out.
    db.sql(&format!(
        "ALTER DATABASE {} SET statement_timeout = '2s'",
        db.name
    ));
    let d = std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            db.sql("SET statement_timeout = 0; BEGIN; INSERT INTO t VALUES (100); SELECT pg_sleep(6); COMMIT;")
        });
        wait_until("a transaction to hold an xid", || {
            db.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(6)%'",
            ) == "1"
        });
        let d = Daemon::run(&config);
        // Dropped, not made again.
        d.wait_log("making the replication slot failed; trying again");
        holder.join().unwrap();
        d
    });
    // Once the new slot streams (what commits while it is made is covered by the refetch):
    d.wait_events("the * events", |e| {
        e.iter().filter(|e| is_refetch(e)).count() >= 2
    });
    db.sql("INSERT INTO u VALUES (3)");
    let events = d.wait_events("the * events and the new change", |e| {
        e.last()
            .is_some_and(|e| e["payload"]["ids"] == serde_json::json!([3]))
    });
    assert_refetch_first(&events);
    assert_eq!(events.len(), 3, "{events:#?}");
}
