//! Row payloads (`payload = "row"`): values as `to_jsonb` gives them, unchanged TOASTed values,
//! the size cap, and column lists that keep values on the server.

use serde_json::{Value, json};

use crate::support::{Daemon, TestDb};

fn start(db: &TestDb, tables: &[&str], extra: &str) -> Daemon {
    let d = Daemon::run(&db.config(tables, extra));
    d.wait_log("streaming");
    d
}

/// `to_jsonb` of each row of `table` by `id`, in a session set as pglive's replication
/// connection is.
fn to_jsonb(db: &TestDb, table: &str) -> Vec<Value> {
    db.sql(&format!(
        "SET datestyle = ISO; SET intervalstyle = iso_8601; SET timezone = UTC;
         SET extra_float_digits = 3; SET bytea_output = hex;
         SELECT to_jsonb(whole_row)::text FROM {table} whole_row ORDER BY id"
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// Every type the README lists, in one table with two rows (ordinary and edge values); each
/// row's `payload.data` is what `to_jsonb` gives for it, column by column. Numbers are exact
/// in the event's text (int8, numeric with `numeric_as_number`).
#[test]
fn row_payloads_are_what_to_jsonb_gives_for_every_type() {
    let db = TestDb::new("rowtypes");
    db.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN posint AS int8 CHECK (VALUE > 0);
         CREATE DOMAIN label AS text;
         CREATE TYPE addr AS (street text, no int, tags text[], at timestamptz);
         CREATE TYPE home AS (owner text, addr addr);
         CREATE TABLE vals (
           id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
           n numeric, t text, vc varchar(20), bp char(5), u uuid, j json, jb jsonb,
           d date, ts timestamp, tz timestamptz, tm time, ttz timetz, iv interval, ba bytea,
           en mood, dom posint, lab label, r int4range, o oid, mo money, ip inet,
           ia int4[], ta text[], ja jsonb[], ea mood[], da posint[], na numeric[], tza timestamptz[],
           ba2 bool[], fa float8[], ad addr, ads addr[], ho home);
         CREATE TABLE plain (id int PRIMARY KEY, n numeric);",
    );
    let d = start(
        &db,
        &[
            "name = \"vals\"\npayload = \"row\"\nnumeric_as_number = true",
            "name = \"plain\"\npayload = \"row\"",
        ],
        "",
    );
    db.sql(
        r#"INSERT INTO vals VALUES (
             9007199254740993, true, -32768, 2147483647, -9007199254740993, 0.1, 1e300,
             12345678901234567890.000000000000000001, E'quote " backslash \\ newline \n tab \t', 'vc', 'ab',
             '6f1b8c3e-0d5c-4c53-9d1e-2f0a1b2c3d4e', E'{"a" :  [1, 2.50],\n "a": 3, "s": "x\\ny"}',
             '{"k": {"deep": [true, null, 1.000000000000000000001]}}',
             '2024-02-29', '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.5+05:30', '12:34:56.789',
             '12:34:56+05:30', '1 year 2 months 3 days 04:05:06.7', '\x00ff10', 'happy', 42, 'lbl',
             '[1,5)', 4242, 12.5, '192.168.0.1/24',
             '{{1,2},{3,NULL}}', E'{"a b","c\\"d",NULL,"NULL",plain,""}', ARRAY['{"x": 1}'::jsonb, '[1, 2]'],
             '{sad,happy}', '{7,8}', '{1.50,NaN}', ARRAY['2024-01-01 00:00:00+00'::timestamptz],
             '{t,f}', '{1.5,-Infinity}',
             ROW(E'1 "Main" St, \\ back', 7, '{a,"b c"}', '2024-01-01 00:00:00+00')::addr,
             ARRAY[ROW('x', NULL, NULL, NULL)::addr, ROW('', 2, '{}', NULL)::addr],
             ROW('ann', ROW('y', 1, NULL, NULL)::addr)::home);
           INSERT INTO vals (id, f4, f8, n, d, ts, tz, ia, ta)
             VALUES (2, 'NaN', '-Infinity', 'NaN', '0044-03-15 BC', 'infinity',
                     '0044-03-15 12:00:00.5+00 BC', '[0:1]={5,6}', '{}');
           INSERT INTO vals (id) VALUES (3);
           INSERT INTO plain VALUES (1, 1.50);"#,
    );
    let events = d.wait_events("four events", |e| e.len() >= 4);
    let expected = to_jsonb(&db, "vals");
    let data: Vec<&Value> = events
        .iter()
        .filter(|e| e["meta"]["table"] == "vals")
        .map(|e| &e["payload"]["data"])
        .collect();
    // Inserted as 9007199254740993, 2, 3: the order by id is 2, 3, then the big one.
    let by_id = |id: Value| data.iter().find(|d| d["id"] == id).copied().unwrap();
    for (want, got) in expected.iter().zip([
        by_id(json!(2)),
        by_id(json!(3)),
        by_id(json!(9007199254740993u64)),
    ]) {
        let want = want.as_object().unwrap();
        let got = got.as_object().unwrap();
        for (column, value) in want {
            assert_eq!(
                got.get(column),
                Some(value),
                "column {column}: to_jsonb gives {value}, the event {:?}",
                got.get(column)
            );
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
    }
    // Exact in the text, not only after parsing.
    let raw = d.raw_lines();
    let big = raw
        .iter()
        .find(|l| l.contains("\"ids\":[9007199254740993]"))
        .unwrap();
    for exact in [
        "\"i8\":-9007199254740993",
        "\"n\":12345678901234567890.000000000000000001",
        "\"jb\":{\"k\":{\"deep\":[true,null,1.000000000000000000001]}}",
        "\"tz\":\"2024-02-29T07:04:56.5+00:00\"",
    ] {
        assert!(big.contains(exact), "{exact} in {big}");
    }
    // Without numeric_as_number, numeric is an exact string.
    let plain = events
        .iter()
        .find(|e| e["meta"]["table"] == "plain")
        .unwrap();
    assert_eq!(plain["payload"]["data"], json!({"id": 1, "n": "1.50"}));
}

/// An UPDATE that leaves a TOASTed value alone does not send it: the event leaves the column
/// out and names it in `meta.unchanged` (never `null`); with REPLICA IDENTITY FULL the old row
/// has it, and the event carries it. A row over `max_event_bytes` goes with its ids only.
#[test]
fn unchanged_toasted_values_are_named_and_large_rows_go_as_ids() {
    let db = TestDb::new("rowtoast");
    db.sql(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE big (id int PRIMARY KEY, body text);",
    );
    let d = start(
        &db,
        &[
            "name = \"docs\"\npayload = \"row\"",
            "name = \"big\"\npayload = \"row\"",
        ],
        "[events]\nmax_event_bytes = 8192",
    );
    db.sql(
        "INSERT INTO docs VALUES (1, 'a', repeat('x', 3000));
         UPDATE docs SET title = 'b';
         ALTER TABLE docs REPLICA IDENTITY FULL;
         UPDATE docs SET title = 'c';
         UPDATE docs SET body = 'short', title = 'd';
         INSERT INTO big VALUES (1, repeat('y', 100)), (2, repeat('y', 9000));",
    );
    let events = d.wait_events("six events", |e| e.len() >= 6);
    let docs: Vec<&Value> = events
        .iter()
        .filter(|e| e["meta"]["table"] == "docs")
        .collect();
    let long = "x".repeat(3000);
    assert_eq!(docs[0]["payload"]["data"]["body"], json!(long));
    // The title changed, the TOASTed body did not: left out, named.
    assert_eq!(docs[1]["payload"]["data"], json!({"id": 1, "title": "b"}));
    assert_eq!(docs[1]["meta"]["unchanged"], json!(["body"]));
    assert!(docs[1]["payload"].get("previous").is_none());
    // FULL: filled from the old row, which is also `previous`.
    assert_eq!(
        docs[2]["payload"]["data"],
        json!({"id": 1, "title": "c", "body": long})
    );
    assert_eq!(
        docs[2]["payload"]["previous"],
        json!({"id": 1, "title": "b", "body": long})
    );
    assert!(docs[2]["meta"].get("unchanged").is_none());
    assert_eq!(
        docs[3]["payload"]["data"],
        json!({"id": 1, "title": "d", "body": "short"})
    );
    let big: Vec<&Value> = events
        .iter()
        .filter(|e| e["meta"]["table"] == "big")
        .collect();
    assert_eq!(big[0]["payload"]["data"]["id"], 1);
    assert!(big[0]["meta"].get("truncated").is_none());
    assert_eq!(big[1]["payload"], json!({"ids": [2]}));
    assert_eq!(big[1]["meta"]["truncated"], true);
    let raw = d.raw_lines();
    assert!(
        raw.iter().all(|l| l.len() <= 8192),
        "an event over 8192 bytes"
    );
}

/// `exclude_columns` and `columns` become the publication's column list: the server never sends
/// the other columns. A list without the key, or naming a column the table lacks, is refused
/// with the setting named; with `auto_setup = false`, a publication that sends an excluded
/// column stops `run` and fails `check`.
#[test]
fn column_lists_keep_excluded_values_on_the_server() {
    let db = TestDb::new("rowcols");
    db.sql(
        "CREATE TABLE users (id int PRIMARY KEY, name text, password_hash text, g int GENERATED ALWAYS AS (id * 2) STORED);
         CREATE TABLE notes (id int PRIMARY KEY, body text, secret text);",
    );
    let tables = [
        "name = \"users\"\npayload = \"row\"\nexclude_columns = [\"password_hash\"]",
        "name = \"notes\"\npayload = \"row\"\ncolumns = [\"id\", \"body\"]",
    ];
    let config = db.config(&tables, "");
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    assert!(
        d.stderr()
            .contains("set public.users in publication pglive to columns (id, name)"),
        "{}",
        d.stderr()
    );
    let published = |table: &str| {
        db.sql(&format!(
            "SELECT array_to_string(attnames, ',') FROM pg_publication_tables WHERE tablename = '{table}'"
        ))
    };
    assert_eq!(published("users"), "id,name");
    assert_eq!(published("notes"), "id,body");
    db.sql(
        "INSERT INTO users VALUES (1, 'ann', 'hash');
         INSERT INTO notes VALUES (1, 'hello', 'psst');
         UPDATE users SET password_hash = 'other', name = 'bob';",
    );
    let events = d.wait_events("three events", |e| e.len() >= 3);
    let payloads: Vec<&Value> = events.iter().map(|e| &e["payload"]["data"]).collect();
    assert_eq!(
        payloads,
        [
            &json!({"id": 1, "name": "ann"}),
            &json!({"id": 1, "body": "hello"}),
            &json!({"id": 1, "name": "bob"})
        ]
    );
    let (code, out, err) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "ok    table public.users: the publication sends only the columns tables[0].exclude_columns allows"
        ),
        "{out}"
    );
    drop(d);

    // A publication widened by hand, with auto_setup off: run refuses, check fails.
    db.sql("ALTER PUBLICATION pglive DROP TABLE notes; ALTER PUBLICATION pglive ADD TABLE notes;");
    let manual = db.config(&tables, "auto_setup = false");
    let (code, out, err) = crate::support::pglive(&["check"], &manual);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  publication pglive sends column(s) secret of public.notes, which tables[1].columns leaves out")
            && out.contains(r#"ADD TABLE "public"."notes" ("id", "body");"#),
        "{out}"
    );
    let (code, out, err) = crate::support::pglive(&["run"], &manual);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("tables[1]: publication pglive publishes column(s) secret of public.notes"),
        "{err}"
    );

    // A column list the configuration does not set is warned about: row payloads lack those
    // columns.
    let plain = db.config(
        &["name = \"users\"\npayload = \"row\"", "name = \"notes\""],
        "",
    );
    let (_, out, _) = crate::support::pglive(&["check"], &plain);
    assert!(
        out.contains("warn  publication pglive leaves column(s) password_hash of public.users out by a column list that tables[0] does not set"),
        "{out}"
    );

    // Without the key, UPDATE and DELETE would fail: refused, naming the setting.
    let db = TestDb::new("rowcols_bad");
    db.sql("CREATE TABLE k (id int PRIMARY KEY, v text)");
    for (setting, message) in [
        (
            "columns = [\"v\"]",
            "tables[0].columns (public.k): the server refused the column list",
        ),
        (
            "exclude_columns = [\"nope\"]",
            "tables[0].exclude_columns[0]: table public.k has no such column: `nope`",
        ),
    ] {
        let config = db.config(
            &[&format!("name = \"k\"\npayload = \"row\"\n{setting}")],
            "",
        );
        let (code, out, err) = crate::support::pglive(&["setup"], &config);
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains(message), "{err}");
    }
    db.sql("UPDATE k SET v = 'still works'");
}
