//! What events look like: every field, each change type, key types, coalescing.

use serde_json::{Value, json};

use crate::support::{Daemon, TestDb, all_ids};

fn start(db: &TestDb, tables: &[&str], extra: &str) -> Daemon {
    let d = Daemon::run(&db.config(tables, extra));
    d.wait_log("streaming");
    d
}

#[test]
fn every_event_field_matches_the_contract() {
    let db = TestDb::new("fields");
    db.sql("CREATE TABLE products (id int PRIMARY KEY, name text)");
    let d = start(&db, &["name = \"products\""], "");
    let out = db.sql(
        "BEGIN; INSERT INTO products VALUES (42, 'x'); SELECT txid_current(); COMMIT;
         SELECT pg_current_wal_lsn() - '0/0'::pg_lsn;",
    );
    let mut lines = out.lines();
    let xid: u64 = lines.next().unwrap().parse().unwrap();
    let after: f64 = lines.next().unwrap().parse().unwrap();
    let events = d.wait_events("one event", |e| !e.is_empty());
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["channel", "date", "meta", "payload", "type"],
        "exactly the five keys"
    );
    // …in the contract's order on the wire.
    let raw = &d.raw_lines()[0];
    let at = |k: &str| raw.find(&format!("\"{k}\":")).unwrap();
    assert!(
        at("channel") < at("type")
            && at("type") < at("payload")
            && at("payload") < at("date")
            && at("date") < at("meta"),
        "{raw}"
    );
    assert_eq!(e["channel"], "resources/products");
    assert_eq!(e["type"], "created");
    assert_eq!(e["payload"], json!({"ids": [42]}));
    let mut meta: Vec<&str> = e["meta"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    meta.sort();
    assert_eq!(meta, ["id", "lsn", "schema", "table", "xid"]);
    assert_eq!(e["meta"]["xid"], json!(xid));
    assert_eq!(e["meta"]["schema"], "public");
    assert_eq!(e["meta"]["table"], "products");
    let lsn = e["meta"]["lsn"].as_str().unwrap();
    assert_eq!(e["meta"]["id"], format!("{lsn}:0"));
    let lsn_num = db
        .sql(&format!("SELECT '{lsn}'::pg_lsn - '0/0'::pg_lsn"))
        .parse::<f64>()
        .unwrap();
    assert!(
        lsn_num > 0.0 && lsn_num < after,
        "commit LSN {lsn} precedes the WAL position after commit"
    );
    // date: RFC 3339 UTC with microseconds, and close to the server's clock.
    let date = e["date"].as_str().unwrap();
    assert_eq!(date.len(), 27, "{date}");
    assert!(date.ends_with('Z') && date.as_bytes()[10] == b'T', "{date}");
    let age: f64 = db
        .sql(&format!(
            "SELECT abs(extract(epoch FROM now() - '{date}'::timestamptz))"
        ))
        .parse()
        .unwrap();
    assert!(age < 60.0, "commit time {date} is {age}s from now");
}

#[test]
fn insert_update_delete_truncate() {
    let db = TestDb::new("types");
    db.sql("CREATE TABLE posts (id int PRIMARY KEY, title text)");
    let d = start(
        &db,
        &["name = \"public.posts\"\nchannel = \"resources/articles\""],
        "",
    );
    db.sql(
        "INSERT INTO posts VALUES (1, 'a');
         UPDATE posts SET title = 'b' WHERE id = 1;
         DELETE FROM posts WHERE id = 1;
         INSERT INTO posts VALUES (2, 'c');
         TRUNCATE posts;",
    );
    let events = d.wait_events("five events", |e| e.len() >= 5);
    let got: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["type"].clone(), e["payload"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("created"), json!({"ids": [1]})),
            (json!("updated"), json!({"ids": [1]})),
            (json!("deleted"), json!({"ids": [1]})),
            (json!("created"), json!({"ids": [2]})),
            (json!("deleted"), json!({})),
        ]
    );
    assert!(events.iter().all(|e| e["channel"] == "resources/articles"));
    assert_eq!(events.len(), 5);
}

#[test]
fn key_types_are_typed_and_exact() {
    let db = TestDb::new("keys");
    db.sql(
        "CREATE TABLE k4 (id int4 PRIMARY KEY);
         CREATE TABLE k8 (id int8 PRIMARY KEY);
         CREATE TABLE ku (id uuid PRIMARY KEY);
         CREATE TABLE kt (id text PRIMARY KEY);
         CREATE TABLE kc (tenant int, code text, PRIMARY KEY (tenant, code));
         CREATE TABLE ks (id int8 PRIMARY KEY);",
    );
    let d = start(
        &db,
        &[
            "name = \"k4\"",
            "name = \"k8\"",
            "name = \"ku\"",
            "name = \"kt\"",
            "name = \"kc\"",
            "name = \"ks\"\nids_as_strings = true",
        ],
        "",
    );
    db.sql(
        "INSERT INTO k4 VALUES (-7);
         INSERT INTO k8 VALUES (9007199254740993);
         INSERT INTO ku VALUES ('6f1b8c3e-0d5c-4c53-9d1e-2f0a1b2c3d4e');
         INSERT INTO kt VALUES ('a \"quoted\" key');
         INSERT INTO kc VALUES (3, 'x');
         INSERT INTO ks VALUES (9007199254740993);",
    );
    let events = d.wait_events("six events", |e| e.len() >= 6);
    let by_table = |t: &str| {
        events.iter().find(|e| e["meta"]["table"] == t).unwrap()["payload"]["ids"].clone()
    };
    assert_eq!(by_table("k4"), json!([-7]));
    assert_eq!(
        by_table("ku"),
        json!(["6f1b8c3e-0d5c-4c53-9d1e-2f0a1b2c3d4e"])
    );
    assert_eq!(by_table("kt"), json!(["a \"quoted\" key"]));
    assert_eq!(by_table("kc"), json!([[3, "x"]]));
    assert_eq!(by_table("ks"), json!(["9007199254740993"]));
    // int8 beyond 2^53 must be exact in the JSON text itself, not just after parsing.
    let raw = d.raw_lines();
    let k8 = raw.iter().find(|l| l.contains("\"table\":\"k8\"")).unwrap();
    assert!(k8.contains("\"ids\":[9007199254740993]"), "{k8}");
}

/// `primary key (b, a)` on a table declared `(a, b)`: every event carries `[b, a]`, under
/// DEFAULT identity and after a switch to FULL mid-stream; a key whose type is a domain over an
/// integer type (a domain over a domain, even) is a number.
#[test]
fn composite_keys_are_in_key_order_and_domains_are_their_base_type() {
    let db = TestDb::new("keyorder");
    db.sql(
        "CREATE TABLE pair (a int, b text, v text, PRIMARY KEY (b, a));
         CREATE DOMAIN posint AS int8 CHECK (VALUE > 0);
         CREATE DOMAIN small AS posint CHECK (VALUE < 1000);
         CREATE TABLE dom (id small PRIMARY KEY);
         CREATE TABLE inc (a int, b text, c int, PRIMARY KEY (b, a) INCLUDE (c));
         ALTER TABLE inc REPLICA IDENTITY FULL;",
    );
    let d = start(
        &db,
        &["name = \"pair\"", "name = \"dom\"", "name = \"inc\""],
        "",
    );
    db.sql("INSERT INTO pair VALUES (1, 'x', 'v')");
    db.sql("ALTER TABLE pair REPLICA IDENTITY FULL");
    db.sql("UPDATE pair SET v = 'w'");
    db.sql("DELETE FROM pair");
    db.sql("INSERT INTO dom VALUES (42)");
    // An INCLUDE column is not part of the key.
    db.sql("INSERT INTO inc VALUES (1, 'x', 9)");
    let events = d.wait_events("five events", |e| e.len() >= 5);
    let inc = events.iter().find(|e| e["meta"]["table"] == "inc").unwrap();
    assert_eq!(inc["payload"]["ids"], json!([["x", 1]]));
    let pair: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e["meta"]["table"] == "pair")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["payload"]["ids"].clone(),
            )
        })
        .collect();
    let key = json!([["x", 1]]);
    assert_eq!(
        pair,
        [
            ("created".to_owned(), key.clone()),
            ("updated".to_owned(), key.clone()),
            ("deleted".to_owned(), key),
        ]
    );
    let dom = events.iter().find(|e| e["meta"]["table"] == "dom").unwrap();
    assert_eq!(dom["payload"]["ids"], json!([42]));
}

/// A table whose name holds a dot is mapped with the name in double quotes; unquoted, the
/// same text is a schema and a table, and `check` says exactly what it looked up.
#[test]
fn a_table_name_with_a_dot_is_mapped_quoted() {
    let db = TestDb::new("dotted");
    db.sql(
        r#"CREATE TABLE "edge_b.dotted" (id int PRIMARY KEY);
           CREATE TABLE plain (id int PRIMARY KEY);"#,
    );
    let (code, out, err) =
        crate::support::pglive(&["check"], &db.config(&["name = 'edge_b.dotted'"], ""));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(r#"table edge_b.dotted (tables[0]) does not exist (looked up: table "dotted" in schema "edge_b")"#),
        "{out}"
    );
    let d = start(
        &db,
        &[r#"name = '"edge_b.dotted"'"#, "name = \"plain\""],
        "",
    );
    db.sql(r#"INSERT INTO "edge_b.dotted" VALUES (7); INSERT INTO plain VALUES (8);"#);
    let events = d.wait_events("two events", |e| e.len() >= 2);
    let dotted = events
        .iter()
        .find(|e| e["meta"]["table"] == "edge_b.dotted")
        .unwrap();
    assert_eq!(dotted["meta"]["schema"], "public");
    assert_eq!(dotted["channel"], "resources/edge_b.dotted");
    assert_eq!(dotted["payload"]["ids"], json!([7]));
}

/// A transaction that names its origin with a logical message gets it in `meta.origin`.
#[test]
fn a_transaction_that_names_its_origin_carries_it() {
    let db = TestDb::new("origin");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let d = start(&db, &["name = \"t\""], "");
    db.sql(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'pglive.origin', 'tab-1');
         INSERT INTO t VALUES (1);
         COMMIT;
         INSERT INTO t VALUES (2);",
    );
    let events = d.wait_events("two events", |e| e.len() >= 2);
    assert_eq!(events[0]["payload"]["ids"], json!([1]));
    assert_eq!(events[0]["meta"]["origin"], "tab-1");
    assert_eq!(events[1]["payload"]["ids"], json!([2]));
    assert!(events[1]["meta"].get("origin").is_none(), "{}", events[1]);
}

/// `where` becomes the publication's row filter: rows it leaves out give no event (they never
/// leave the server); `check` shows the filter; one that would break UPDATE and DELETE is
/// refused, naming the key.
#[test]
fn a_row_filter_publishes_only_matching_rows() {
    let db = TestDb::new("rowfilter");
    db.sql(
        "CREATE TABLE posts (id int PRIMARY KEY, org int NOT NULL, title text);
         ALTER TABLE posts REPLICA IDENTITY FULL;
         CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, org int);",
    );
    // g's first column is an identity column, which an UPDATE may only set to DEFAULT.
    let config = db.config(
        &[
            "name = \"posts\"\nwhere = \"org = 42\"",
            "name = \"g\"\nwhere = \"id > 0\"",
        ],
        "",
    );
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    assert!(
        d.stderr()
            .contains("set public.posts in publication pglive to row filter (org = 42)"),
        "{}",
        d.stderr()
    );
    assert!(
        d.stderr()
            .contains("set public.g in publication pglive to row filter (id > 0)"),
        "{}",
        d.stderr()
    );
    db.sql("INSERT INTO posts VALUES (1, 42, 'a'), (2, 7, 'b')");
    db.sql("UPDATE posts SET title = 'c'");
    // A row that starts, then stops, matching: PostgreSQL sends an INSERT, then a DELETE.
    db.sql("UPDATE posts SET org = 42 WHERE id = 2");
    db.sql("UPDATE posts SET org = 7 WHERE id = 2");
    db.sql("DELETE FROM posts");
    db.sql("INSERT INTO posts VALUES (3, 42, 'd')");
    let events = d.wait_events("six events", |e| e.len() >= 6);
    let seen: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), &e["payload"]["ids"]))
        .collect();
    assert_eq!(
        seen,
        [
            ("created", &json!([1])),
            ("updated", &json!([1])),
            ("created", &json!([2])),
            ("deleted", &json!([2])),
            ("deleted", &json!([1])),
            ("created", &json!([3])),
        ]
    );
    let (code, out, err) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    table public.posts: publication row filter (org = 42)"),
        "{out}"
    );

    // A filter on a column outside the replica identity would make UPDATE and DELETE fail.
    let db = TestDb::new("rowfilter_bad");
    db.sql("CREATE TABLE k (id int PRIMARY KEY, org int)");
    let config = db.config(&["name = \"k\"\nwhere = \"org = 1\""], "");
    let (code, out, err) = crate::support::pglive(&["setup"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("tables[0].where (public.k): the server refused the row filter")
            && err.contains("replica identity")
            && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );
    db.sql("UPDATE k SET org = 2");
    assert_eq!(
        db.sql(
            "SELECT coalesce(rowfilter, 'none') FROM pg_publication_tables WHERE tablename = 'k'"
        ),
        "none"
    );

    // Filters set by hand: check fails one that breaks UPDATE and DELETE, and warns about one
    // the configuration does not say.
    db.sql(
        "CREATE TABLE h (id int PRIMARY KEY, org int);
         ALTER PUBLICATION pglive DROP TABLE k;
         ALTER PUBLICATION pglive ADD TABLE h WHERE (org = 1), k WHERE (id > 5);",
    );
    let config = db.config(&["name = \"h\"\nwhere = \"org = 1\"", "name = \"k\""], "");
    let (code, out, err) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "FAIL  UPDATE and DELETE on public.h fail under its publication row filter (org = 1)"
        ) && out.contains("REPLICA IDENTITY FULL"),
        "{out}"
    );
    assert!(
        out.contains("warn  publication pglive filters the rows of public.k by (id > 5), which tables[1] does not say"),
        "{out}"
    );
}

#[test]
fn key_changing_updates_carry_old_and_new_ids() {
    let db = TestDb::new("rekey");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE f (id int PRIMARY KEY, v text); ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO t VALUES (1, 'a'); INSERT INTO f VALUES (1, 'a');",
    );
    let d = start(&db, &["name = \"t\"", "name = \"f\""], "");
    db.sql(
        "UPDATE t SET id = 2 WHERE id = 1;
         UPDATE f SET id = 5 WHERE id = 1;
         UPDATE f SET v = 'b' WHERE id = 5;",
    );
    let events = d.wait_events("three events", |e| e.len() >= 3);
    assert_eq!(events[0]["payload"], json!({"ids": [1, 2]}));
    assert_eq!(
        events[1]["payload"],
        json!({"ids": [1, 5]}),
        "REPLICA IDENTITY FULL: ids from the primary key"
    );
    assert_eq!(events[2]["payload"], json!({"ids": [5]}));
}

#[test]
fn transactions_are_coalesced_and_split() {
    let db = TestDb::new("coalesce");
    db.sql("CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY);");
    let d = start(
        &db,
        &["name = \"a\"", "name = \"b\""],
        "[events]\nmax_ids_per_event = 3",
    );
    db.sql(
        "BEGIN;
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 7) g;
         INSERT INTO b VALUES (100);
         UPDATE a SET v = 1 WHERE id IN (2, 3);
         UPDATE a SET v = 2 WHERE id = 2;
         INSERT INTO b VALUES (101);
         COMMIT;
         INSERT INTO b VALUES (102);",
    );
    let events = d.wait_events("all events", |e| all_ids(e).contains(&json!(102)));
    let summary: Vec<(String, String, Value, String)> = events
        .iter()
        .map(|e| {
            (
                e["meta"]["table"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["payload"]["ids"].clone(),
                e["meta"]["id"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .nth(1)
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let s = |t: &str, ty: &str, ids: Value, ord: &str| {
        (t.to_owned(), ty.to_owned(), ids, ord.to_owned())
    };
    assert_eq!(
        summary,
        [
            // Full groups leave as soon as they fill; the rest at commit, in order of first appearance.
            s("a", "created", json!([1, 2, 3]), "0"),
            s("a", "created", json!([4, 5, 6]), "1"),
            s("a", "created", json!([7]), "2"),
            s("b", "created", json!([100, 101]), "3"),
            s("a", "updated", json!([2, 3]), "4"),
            s("b", "created", json!([102]), "0"),
        ]
    );
    let first_lsn = events[0]["meta"]["lsn"].clone();
    assert!(
        events[..5].iter().all(|e| e["meta"]["lsn"] == first_lsn),
        "one transaction, one commit LSN"
    );
    assert_ne!(events[5]["meta"]["lsn"], first_lsn);
}

#[test]
fn per_row_events_when_coalescing_is_off() {
    let db = TestDb::new("perrow");
    db.sql("CREATE TABLE a (id int PRIMARY KEY)");
    let d = start(&db, &["name = \"a\""], "[events]\ncoalesce = false");
    db.sql("INSERT INTO a SELECT generate_series(1, 4)");
    let events = d.wait_events("four events", |e| e.len() >= 4);
    let ids: Vec<Value> = events.iter().map(|e| e["payload"].clone()).collect();
    assert_eq!(
        ids,
        [
            json!({"ids":[1]}),
            json!({"ids":[2]}),
            json!({"ids":[3]}),
            json!({"ids":[4]})
        ]
    );
    let ords: Vec<String> = events
        .iter()
        .map(|e| e["meta"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ords[0].ends_with(":0") && ords[3].ends_with(":3"),
        "{ords:?}"
    );
}

#[test]
fn rolled_back_transactions_produce_nothing() {
    let db = TestDb::new("rollback");
    db.sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);");
    let d = start(&db, &["name = \"a\""], "");
    db.sql(
        "BEGIN; INSERT INTO a VALUES (1); ROLLBACK;
         BEGIN; INSERT INTO a VALUES (2); SAVEPOINT s; INSERT INTO a VALUES (3); ROLLBACK TO s; COMMIT;
         INSERT INTO other VALUES (1);
         INSERT INTO a VALUES (4);",
    );
    let events = d.wait_events("the marker row", |e| all_ids(e).contains(&json!(4)));
    assert_eq!(all_ids(&events), [json!(2), json!(4)], "{events:#?}");
    assert!(
        events.iter().all(|e| e["meta"]["table"] == "a"),
        "unmapped tables produce nothing"
    );
}
