//! Tenant channels: channel templates that take segments from the row, JWT grants that
//! isolate tenants (deletes included), and the replica-identity rule that routes deletes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cluster::free_port;
use crate::support::ws::{SECRET, WsClient, token};
use crate::support::{Daemon, TestDb, pglive};

const TEMPLATE: &str = "tenants/{org_id}/resources/posts";

fn config(db: &TestDb, port: u16) -> String {
    format!(
        "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{port}\"\njwt_secret = \"{SECRET}\"\n",
        db.config(
            &[&format!(
                "name = \"posts\"\nchannels = [\"{TEMPLATE}\", \"resources/posts\"]"
            )],
            ""
        )
    )
}

fn client(port: u16, grants: &[&str], channel: &str) -> WsClient {
    let url = format!(
        "ws://127.0.0.1:{port}/live?token={}",
        token(grants, 3600, SECRET)
    );
    let mut c = WsClient::connect(&url, &[]).unwrap_or_else(|s| panic!("refused with {s}"));
    c.subscribe(channel);
    assert_eq!(c.next(), json!({"op": "subscribed", "channel": channel}));
    c
}

/// (type, ids) of each event frame.
fn seen(frames: &[Value]) -> Vec<(String, Value)> {
    frames
        .iter()
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_owned(),
                f["payload"]["ids"].clone(),
            )
        })
        .collect()
}

#[test]
fn each_tenant_sees_only_its_rows_changes_deletes_included() {
    let db = TestDb::new("tenants");
    db.sql(
        "CREATE TABLE posts (id int PRIMARY KEY, org_id int NOT NULL, title text);
         ALTER TABLE posts REPLICA IDENTITY FULL;",
    );
    let port = free_port();
    let config = config(&db, port);
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    d.wait_log("WebSocket relay listening");
    let mut t42 = client(port, &["tenants/42/*"], "tenants/42/resources/posts");
    let mut t7 = client(port, &["tenants/7/*"], "tenants/7/resources/posts");
    // A tenant's token does not open another tenant's channel, nor the shared one.
    t42.subscribe("tenants/7/resources/posts");
    assert_eq!(t42.next()["code"], "forbidden");
    t42.subscribe("resources/posts");
    assert_eq!(t42.next()["code"], "forbidden");
    // A channel no template renders is unknown, even to a token that allows everything.
    let mut admin = client(port, &["*"], "resources/posts");
    admin.subscribe("tenants/a.b/resources/posts");
    assert_eq!(admin.next()["code"], "unknown_channel");

    db.sql(
        "INSERT INTO posts VALUES (1, 42, 'a'), (2, 7, 'b');
         UPDATE posts SET title = 'c' WHERE id = 1;
         DELETE FROM posts WHERE id = 2;
         UPDATE posts SET org_id = 7 WHERE id = 1;",
    );
    // 42 sees its insert and update, then the row leaving it; 7 sees its own rows, the
    // delete included, and the row arriving.
    assert_eq!(
        seen(&t42.until_events(3)),
        [
            ("created".into(), json!([1])),
            ("updated".into(), json!([1])),
            ("updated".into(), json!([1])),
        ]
    );
    assert_eq!(
        seen(&t7.until_events(3)),
        [
            ("created".into(), json!([2])),
            ("deleted".into(), json!([2])),
            ("updated".into(), json!([1])),
        ]
    );
    assert_eq!(t42.next_within(Duration::from_millis(300)), None);
    // The shared channel gets every change, once per transaction and type.
    let all = admin.until_events(4);
    assert!(
        all.iter().all(|e| e["channel"] == "resources/posts"),
        "{all:?}"
    );
    // stdout has the same events under their rendered channels.
    let events = d.wait_events("eight events", |e| e.len() >= 8);
    let channels: Vec<&str> = events
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert!(
        channels.contains(&"tenants/42/resources/posts"),
        "{channels:?}"
    );
    assert!(
        channels.contains(&"tenants/7/resources/posts"),
        "{channels:?}"
    );
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("table public.posts → {TEMPLATE}, resources/posts")),
        "{out}"
    );
}

/// A template column outside the replica identity: a DELETE would not say whose row it was,
/// so `setup`, `run` and `check` refuse the table until the identity holds the column.
#[test]
fn a_template_column_must_be_in_the_replica_identity() {
    let db = TestDb::new("tenants_identity");
    db.sql("CREATE TABLE posts (id int PRIMARY KEY, org_id int NOT NULL)");
    let config = config(&db, free_port());
    for command in ["setup", "check"] {
        let (code, out, err) = pglive(&[command], &config);
        assert_eq!(code, 1, "{out}{err}");
        let text = format!("{out}{err}");
        assert!(
            text.contains("its channel templates take {org_id} from outside its replica identity")
                && text.contains("REPLICA IDENTITY FULL"),
            "{command}: {text}"
        );
    }
    // A replica identity index that holds it will do, as will a primary key.
    db.sql(
        "CREATE UNIQUE INDEX posts_org_id ON posts (org_id, id);
         ALTER TABLE posts REPLICA IDENTITY USING INDEX posts_org_id;",
    );
    let (code, out, err) = pglive(&["check"], &config);
    assert!(
        !out.contains("outside its replica identity"),
        "{code} {out}{err}"
    );
    db.sql(
        "ALTER TABLE posts REPLICA IDENTITY DEFAULT;
         ALTER TABLE posts DROP CONSTRAINT posts_pkey, ADD PRIMARY KEY (org_id, id);",
    );
    let (code, out, err) = pglive(&["setup"], &config);
    assert_eq!(code, 0, "{out}{err}");
}
