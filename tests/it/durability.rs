//! Nothing committed is lost: SIGKILL and restart, PostgreSQL restarts, idle slots advance,
//! graceful shutdown confirms what was delivered, a held slot is waited for.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Cluster, Daemon, TestDb, all_ids};

fn ids_as_set(events: &[Value]) -> BTreeSet<i64> {
    all_ids(events)
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Writes `txns` transactions of `per` rows each into `table`, starting at id `from`.
fn write_rows(db: &TestDb, table: &str, from: i64, txns: i64, per: i64) {
    let mut sql = String::new();
    for t in 0..txns {
        let lo = from + t * per;
        sql.push_str(&format!(
            "INSERT INTO {table} SELECT g FROM generate_series({lo}, {}) g;\n",
            lo + per - 1
        ));
    }
    db.sql(&sql);
}

#[test]
fn sigkill_mid_stream_then_restart_delivers_every_committed_change() {
    let db = TestDb::new("sigkill");
    db.sql("CREATE TABLE t (id int8 PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "[events]\ncoalesce = false");
    let (code, out, err) = crate::support::pglive(&["setup"], &config);
    assert_eq!(code, 0, "{out}{err}");

    let mut first = Daemon::run(&config);
    let writer = {
        let cluster = db.cluster;
        let name = db.name.clone();
        std::thread::spawn(move || {
            let mut sql = String::new();
            for t in 0..2000i64 {
                sql.push_str(&format!(
                    "INSERT INTO t SELECT g FROM generate_series({}, {}) g;\n",
                    t * 10 + 1,
                    t * 10 + 10
                ));
            }
            cluster.psql(&name, &sql);
        })
    };
    first.wait_events("the stream to be flowing", |e| e.len() >= 200);
    first.kill();
    let before = first.events();
    assert!(
        before.len() < 20_000,
        "the kill came mid-stream ({} events seen)",
        before.len()
    );
    writer.join().unwrap();

    let second = Daemon::run(&config);
    let after = second.wait_events("every committed row", |e| {
        let mut all = ids_as_set(&before);
        all.extend(ids_as_set(e));
        all.len() == 20_000
    });
    let mut all = ids_as_set(&before);
    all.extend(ids_as_set(&after));
    assert_eq!(all, (1..=20_000).collect::<BTreeSet<i64>>());

    // Events delivered twice are the same event: same meta.id, same bytes.
    let mut by_id: HashMap<String, String> = HashMap::new();
    for line in first.raw_lines().into_iter().chain(second.raw_lines()) {
        let v: Value = serde_json::from_str(&line).unwrap();
        let id = v["meta"]["id"].as_str().unwrap().to_owned();
        if let Some(prev) = by_id.insert(id.clone(), line.clone()) {
            assert_eq!(prev, line, "replayed event {id} differs");
        }
    }
    assert_eq!(by_id.len(), 20_000, "one distinct meta.id per row");
}

#[test]
fn postgres_restart_mid_stream_loses_nothing() {
    let cluster = Cluster::dedicated();
    let db = TestDb::in_cluster(&cluster, "pgrestart");
    db.sql("CREATE TABLE t (id int8 PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "max_backoff = \"1s\"");
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    write_rows(&db, "t", 1, 300, 10);
    d.wait_events("the first rows", |e| !e.is_empty());
    cluster.stop();
    cluster.start();
    write_rows(&db, "t", 3001, 300, 10);
    let committed: BTreeSet<i64> = db
        .sql("SELECT id FROM t")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(committed.len(), 6000);
    d.wait_events("every committed row after the restart", |e| {
        ids_as_set(e) == committed
    });
    assert!(
        d.stderr().contains("reconnecting"),
        "the daemon noticed the restart"
    );
}

#[test]
fn idle_publication_does_not_pin_wal() {
    let db = TestDb::new("idle");
    db.sql("CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE busy (id int PRIMARY KEY, pad text);");
    let d = Daemon::run(&db.config(&["name = \"published\""], ""));
    d.wait_log("streaming");
    db.sql("INSERT INTO busy SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g");
    let target = db.current_wal();
    crate::support::wait_until(
        "the slot's confirmed_flush_lsn to pass the unrelated writes",
        || db.confirmed_flush().unwrap_or(0) >= target,
    );
    assert!(d.events().is_empty(), "no events for an unpublished table");
}

#[test]
fn sigterm_delivers_confirms_and_exits_zero() {
    let db = TestDb::new("sigterm");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut d = Daemon::run(&db.config(&["name = \"t\""], ""));
    d.wait_log("streaming");
    db.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);");
    let events = d.wait_events("two events", |e| e.len() >= 2);
    let last_commit = events[1]["meta"]["lsn"].as_str().unwrap().to_owned();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", d.stderr());
    let confirmed = db.confirmed_flush().unwrap();
    let commit: f64 = db
        .sql(&format!("SELECT '{last_commit}'::pg_lsn - '0/0'::pg_lsn"))
        .parse()
        .unwrap();
    assert!(
        confirmed as f64 > commit,
        "confirmed {confirmed} is past the last commit {commit}"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        )),
        "f"
    );
}

#[test]
fn a_held_slot_is_waited_for_then_taken_over() {
    let db = TestDb::new("held");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "max_backoff = \"500ms\"");
    let mut active = Daemon::run(&config);
    active.wait_log("streaming");
    let standby = Daemon::run(&config);
    standby.wait_log("in use by another process");
    db.sql("INSERT INTO t VALUES (1)");
    active.wait_events("the active daemon's event", |e| !e.is_empty());
    assert!(
        standby.events().is_empty(),
        "only one process streams from a slot"
    );
    active.kill();
    standby.wait_log("taking over");
    db.sql("INSERT INTO t VALUES (2)");
    let events = standby.wait_events("the standby's events", |e| all_ids(e).contains(&json!(2)));
    assert!(all_ids(&events).contains(&json!(2)));
}
