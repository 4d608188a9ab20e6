//! Nothing committed is lost: SIGKILL and restart, PostgreSQL restarts, idle slots advance,
//! graceful shutdown confirms what was delivered, a held slot is waited for.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Cluster, Daemon, TestDb, all_ids, named_pipe};

fn ids_as_set(events: &[Value]) -> BTreeSet<i64> {
    all_ids(events)
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// `txns` statements (each its own transaction) inserting `per` rows each into `table`,
/// starting at id `from`.
fn rows_sql(table: &str, from: i64, txns: i64, per: i64) -> String {
    (0..txns)
        .map(|t| {
            let lo = from + t * per;
            format!(
                "INSERT INTO {table} SELECT g FROM generate_series({lo}, {}) g;\n",
                lo + per - 1
            )
        })
        .collect()
}

/// Writes `rows_sql(..)` through psql.
fn write_rows(db: &TestDb, table: &str, from: i64, txns: i64, per: i64) {
    db.sql(&rows_sql(table, from, txns, per));
}

/// A role whose replication sessions the server ends after 2 s without a client message.
fn impatient_role(db: &TestDb, role: &str) {
    db.sql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN REPLICATION SUPERUSER;
         ALTER ROLE {role} SET wal_sender_timeout = '2s';"
    ));
}

#[test]
fn sigkill_mid_stream_then_restart_delivers_every_committed_change() {
    let db = TestDb::new("sigkill");
    db.sql("CREATE TABLE t (id int8 PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "[events]\ncoalesce = false");
    crate::support::setup(&config);

    let mut first = Daemon::run(&config);
    // The writer commits 10-row transactions, 500 rows per round, until the kill, and one
    // more round while pglive is down: the kill always comes mid-stream.
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cluster, name, killed) = (db.cluster, db.name.clone(), killed.clone());
        std::thread::spawn(move || {
            let mut next = 1;
            loop {
                let last_round = killed.load(std::sync::atomic::Ordering::SeqCst);
                cluster.psql(&name, &rows_sql("t", next, 50, 10));
                next += 500;
                if last_round {
                    return next - 1;
                }
            }
        })
    };
    let seen = first.wait_events("the stream to be flowing", |e| e.len() >= 200);
    let hundredth = db.lsn(seen[99]["meta"]["lsn"].as_str().unwrap());
    crate::support::wait_until("the first hundred events to be confirmed", || {
        db.confirmed_flush().unwrap() >= hundredth
    });
    first.kill();
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = first.events();
    let total = writer.join().unwrap();
    assert!(
        (before.len() as i64) < total,
        "the kill came mid-stream ({} of {total} events seen)",
        before.len()
    );

    let second = Daemon::run(&config);
    let after = second.wait_events("every committed row", |e| {
        let mut all = ids_as_set(&before);
        all.extend(ids_as_set(e));
        all.len() as i64 == total
    });
    let mut all = ids_as_set(&before);
    all.extend(ids_as_set(&after));
    assert_eq!(all, (1..=total).collect::<BTreeSet<i64>>());
    assert!(
        !ids_as_set(&after).contains(&1),
        "the restart resumes from the confirmed position: confirmed rows are not replayed"
    );

    // Events delivered twice are the same event: same meta.id, same bytes.
    let mut by_id: HashMap<String, String> = HashMap::new();
    for line in first.raw_lines().into_iter().chain(second.raw_lines()) {
        let v: Value = serde_json::from_str(&line).unwrap();
        let id = v["meta"]["id"].as_str().unwrap().to_owned();
        if let Some(prev) = by_id.insert(id.clone(), line.clone()) {
            assert_eq!(prev, line, "replayed event {id} differs");
        }
    }
    assert_eq!(by_id.len() as i64, total, "one distinct meta.id per row");
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
    let last_commit = db.lsn(events[1]["meta"]["lsn"].as_str().unwrap());
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", d.stderr());
    // The final status update reported a position past the last commit, and the slot has it.
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("final position confirmed"))
        .unwrap_or_else(|| panic!("no final confirmation in the log:\n{log}"));
    let final_flush = line
        .split("flush=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let final_flush = db.lsn(final_flush);
    assert!(
        final_flush > last_commit,
        "final flush {final_flush} is past the last commit {last_commit}"
    );
    assert!(db.confirmed_flush().unwrap() >= final_flush);
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

#[test]
fn several_sinks_each_get_everything_and_the_slot_follows_the_slowest() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex, mpsc};

    let db = TestDb::new("slowest");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (_dir, fifo) = named_pipe();
    let config = format!(
        "{}[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        db.config(&["name = \"t\""], "[events]\ncoalesce = false"),
        fifo.display()
    );
    crate::support::setup(&config);
    // A backlog of 3,000 one-row transactions, about 600 KB of events: far more than a pipe
    // holds.
    write_rows(&db, "t", 1, 3000, 1);
    let last_commit = db
        .sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .parse::<f64>()
        .unwrap() as u64;

    // The file sink's reader opens the pipe but does not read until told to.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (go, wait_go) = mpsc::channel::<()>();
    let reader = {
        let (fifo, lines) = (fifo.clone(), lines.clone());
        std::thread::spawn(move || {
            let file = std::fs::File::open(fifo).unwrap();
            let _ = wait_go.recv();
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };

    let d = Daemon::run(&config);
    // A pipe holds 64 KiB, and the file sink acknowledges whole batches only: it cannot have
    // acknowledged any event that starts beyond that many bytes. Stdout is sure to get past
    // that point (the stalled sink's queue fills after it); how much further depends on how
    // the source happens to batch, so wait for that point only.
    const PIPE: usize = 65_536;
    let beyond = |raw: &[String]| {
        let mut bytes = 0;
        raw.iter().position(|l| {
            bytes += l.len() + 1;
            bytes > PIPE
        })
    };
    d.wait_events("stdout to get beyond what a pipe holds", |_| {
        beyond(&d.raw_lines()).is_some()
    });
    // Lines first, then events: the events are at least as many.
    let beyond_pipe = beyond(&d.raw_lines()).expect("more than a pipe's worth of events");
    let events = d.events();
    let beyond_pipe = db.lsn(events[beyond_pipe]["meta"]["lsn"].as_str().unwrap());
    let last_event = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    // Wait for a status update that reports all of that as received (write position): the
    // flush position in it must still wait for the stalled file sink.
    let written = || -> u64 {
        db.cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT r.write_lsn - '0/0'::pg_lsn FROM pg_stat_replication r
                       JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = '{}'",
                    db.slot
                ),
            )
            .parse::<f64>()
            .unwrap_or(0.0) as u64
    };
    crate::support::wait_until("a status update reporting those events received", || {
        written() >= last_event
    });
    assert!(
        db.confirmed_flush().unwrap() < beyond_pipe,
        "the slot moved past events the file sink has not delivered"
    );

    go.send(()).unwrap();
    crate::support::wait_until("the file sink to deliver the whole backlog", || {
        lines.lock().unwrap().len() >= 3000
    });
    crate::support::wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last_commit
    });
    assert_eq!(
        *lines.lock().unwrap(),
        d.raw_lines(),
        "both sinks carry exactly the same events"
    );
    drop(d);
    reader.join().unwrap();
}

#[test]
fn a_sink_stalled_beyond_wal_sender_timeout_keeps_the_session_alive() {
    use std::io::Read;

    let db = TestDb::new("stalled");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    impatient_role(&db, "impatient");
    let (_dir, fifo) = named_pipe();
    let config = db
        .config(&["name = \"t\""], "[events]\ncoalesce = false")
        .replace("postgres://postgres@", "postgres://impatient@")
        // Status updates at 8× the server's 2 s timeout, so a loaded machine cannot miss it.
        .replace("status_interval = \"1s\"", "status_interval = \"250ms\"")
        .replace(
            "[[sinks]]\ntype = \"stdout\"\n",
            &format!(
                "[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
                fifo.display()
            ),
        );
    let d = Daemon::run(&config);
    // Opening a pipe's read end waits for its writer: open it aside, and do not read yet.
    let opener = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
    };
    d.wait_log("streaming");
    write_rows(&db, "t", 1, 3000, 1);
    let pid = || {
        db.sql(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ))
    };
    let walsender = pid();
    // Let time pass well beyond the server's 2 s timeout while the sink cannot move.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        pid(),
        walsender,
        "the server kept the session: status updates continued\n{}",
        d.stderr()
    );
    assert!(!d.stderr().contains("reconnecting"), "{}", d.stderr());
    // Unblock: everything arrives.
    let mut text = String::new();
    let mut reader = std::io::BufReader::new(opener.join().unwrap());
    let mut seen = 0;
    let mut buf = [0u8; 65536];
    while seen < 3000 {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "pipe closed early:\n{}", d.stderr());
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        seen = text.matches('\n').count();
    }
    assert_eq!(seen, 3000);
}

#[test]
fn stop_at_delivers_up_to_the_position_then_exits() {
    let db = TestDb::new("stopat");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = db.config(&["name = \"t\""], "");
    crate::support::setup(&config);
    write_rows(&db, "t", 1, 50, 2);
    let stop = db.sql("SELECT pg_current_wal_lsn()");
    write_rows(&db, "t", 1001, 5, 2);
    let mut d = Daemon::spawn(&config, &["run", "--stop-at", &stop]);
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", d.stderr());
    let ids = ids_as_set(&d.events());
    assert!(
        (1..=100).all(|i| ids.contains(&i)),
        "everything before the stop position"
    );
    assert!(db.confirmed_flush().unwrap() >= db.lsn(&stop));
    assert!(
        d.stderr().contains("reached the stop position"),
        "{}",
        d.stderr()
    );
}

#[test]
fn a_slot_dropped_while_running_is_not_silently_recreated() {
    let db = TestDb::new("dropped");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut d = Daemon::run(&db.config(&["name = \"t\""], "max_backoff = \"500ms\""));
    d.wait_log("streaming");
    db.cluster.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{0}';",
            db.slot
        ),
    );
    // The walsender may still be exiting: drop the slot once it is released.
    crate::support::wait_until("the slot to be dropped", || {
        db.cluster
            .try_psql(
                "postgres",
                &format!("SELECT pg_drop_replication_slot('{}')", db.slot),
            )
            .is_ok()
    });
    let status = d.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", d.stderr());
    assert!(d.stderr().contains("no longer exists"), "{}", d.stderr());
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        )),
        "0"
    );
}

#[test]
fn partitioned_tables_are_published_under_their_own_name() {
    let db = TestDb::new("partitioned");
    db.sql(
        "CREATE TABLE m (id int PRIMARY KEY, at date) PARTITION BY RANGE (id);
         CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100);
         CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200);",
    );
    let config = db.config(&["name = \"m\""], "");
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    db.sql("INSERT INTO m VALUES (1, now()), (150, now()); UPDATE m SET id = 160 WHERE id = 1;");
    let events = d.wait_events("events for both partitions", |e| e.len() >= 2);
    assert_eq!(events[0]["meta"]["table"], "m");
    assert_eq!(events[0]["payload"], json!({"ids": [1, 150]}));
    assert_eq!(events[1]["channel"], "resources/m");
    // setup and check agree with what run did.
    let (code, out, _) = crate::support::pglive(&["setup"], &config);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("is in use by process"),
        "the running daemon holds the slot: {out}"
    );
    assert!(out.contains("ok    table public.m"), "{out}");
    assert!(out.contains("covers every mapped table"), "{out}");
    // A TRUNCATE of one partition is not published (PostgreSQL's rule, as the README says);
    // a DELETE from it is, and a TRUNCATE of the parent. Events are in commit order, so the
    // sequence shows the missing one.
    db.sql("INSERT INTO m VALUES (5, now())");
    db.sql("TRUNCATE m1");
    db.sql("DELETE FROM m2");
    db.sql("INSERT INTO m VALUES (7, now())");
    db.sql("TRUNCATE m");
    let is_five = |e: &serde_json::Value| e["payload"] == json!({"ids": [5]});
    let events = d.wait_events("four more events", |e| {
        e.iter()
            .position(is_five)
            .is_some_and(|at| e.len() >= at + 4)
    });
    let at = events.iter().position(is_five).unwrap();
    let seen: Vec<(&str, &serde_json::Value)> = events[at..]
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), &e["payload"]))
        .collect();
    assert_eq!(
        seen,
        [
            ("created", &json!({"ids": [5]})),
            ("deleted", &json!({"ids": [150, 160]})),
            ("created", &json!({"ids": [7]})),
            ("deleted", &json!({})),
        ]
    );
}

#[test]
fn a_silent_server_is_detected_and_the_stream_resumes() {
    let db = TestDb::new("silent");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    // A short server timeout makes the client's read deadline short too.
    impatient_role(&db, "hasty");
    let config = db
        .config(&["name = \"t\""], "max_backoff = \"500ms\"")
        .replace("postgres://postgres@", "postgres://hasty@");
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    let walsender = db.sql(&format!(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
        db.slot
    ));
    // Freeze the walsender: the connection stays open but nothing arrives any more.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &walsender])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {walsender}");
    };
    signal("-STOP");
    let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        d.wait_log("waiting for data from the server");
    }));
    signal("-CONT");
    resumed.unwrap();
    db.sql("INSERT INTO t VALUES (1)");
    let events = d.wait_events("the event after reconnecting", |e| !e.is_empty());
    assert_eq!(events[0]["payload"], json!({"ids": [1]}));
}
