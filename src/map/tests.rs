//! Mapper tests: hand-built Relation values and pgoutput bytes (decoded with `crate::decode`)
//! in, LiveEvents out; the JSON of every event is parsed and checked against DESIGN.md §1.

use super::*;

use crate::decode::{Column, decode};
use serde_json::{Value as Json, json};

// ---- type OIDs ----

const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const OID: u32 = 26;
const TEXT: u32 = 25;
const UUID: u32 = 2950;
const NUMERIC: u32 = 1700;

// ---- relation OIDs used throughout ----

const PRODUCTS: u32 = 16_384;
const ORDERS: u32 = 16_390;
const AUDIT: u32 = 16_400;

/// 2026-11-29T10:00:00.123456Z in microseconds since 2000-01-01 UTC.
const COMMIT_TIME: i64 = 849_261_600_123_456;
const COMMIT_DATE: &str = "2026-11-29T10:00:00.123456Z";

const LSN: u64 = 0x16B_3748;
const END_LSN: u64 = 0x16B_3780;
const XID: u32 = 1234;

// ---- pgoutput byte builders ----

/// One column value in a tuple.
#[derive(Clone, Copy)]
enum V<'a> {
    /// `'t'`: text form.
    T(&'a str),
    /// `'n'`: NULL (or the filler of a non-key column in a `'K'` old tuple).
    N,
    /// `'u'`: unchanged TOASTed value.
    U,
}

fn tuple(buf: &mut Vec<u8>, cols: &[V<'_>]) {
    buf.extend_from_slice(&u16::try_from(cols.len()).unwrap().to_be_bytes());
    for c in cols {
        match c {
            V::N => buf.push(b'n'),
            V::U => buf.push(b'u'),
            V::T(t) => {
                buf.push(b't');
                buf.extend_from_slice(&i32::try_from(t.len()).unwrap().to_be_bytes());
                buf.extend_from_slice(t.as_bytes());
            }
        }
    }
}

fn begin_at(final_lsn: u64, commit_time: i64, xid: u32) -> Vec<u8> {
    let mut b = vec![b'B'];
    b.extend_from_slice(&final_lsn.to_be_bytes());
    b.extend_from_slice(&commit_time.to_be_bytes());
    b.extend_from_slice(&xid.to_be_bytes());
    b
}

fn commit_at(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Vec<u8> {
    let mut b = vec![b'C', 0];
    b.extend_from_slice(&commit_lsn.to_be_bytes());
    b.extend_from_slice(&end_lsn.to_be_bytes());
    b.extend_from_slice(&commit_time.to_be_bytes());
    b
}

fn begin() -> Vec<u8> {
    begin_at(LSN, COMMIT_TIME, XID)
}

fn commit() -> Vec<u8> {
    commit_at(LSN, END_LSN, COMMIT_TIME)
}

fn insert(oid: u32, new: &[V<'_>]) -> Vec<u8> {
    let mut b = vec![b'I'];
    b.extend_from_slice(&oid.to_be_bytes());
    b.push(b'N');
    tuple(&mut b, new);
    b
}

/// `old`: `Some((b'K' | b'O', tuple))`.
fn update(oid: u32, old: Option<(u8, &[V<'_>])>, new: &[V<'_>]) -> Vec<u8> {
    let mut b = vec![b'U'];
    b.extend_from_slice(&oid.to_be_bytes());
    if let Some((marker, cols)) = old {
        b.push(marker);
        tuple(&mut b, cols);
    }
    b.push(b'N');
    tuple(&mut b, new);
    b
}

fn delete(oid: u32, marker: u8, old: &[V<'_>]) -> Vec<u8> {
    let mut b = vec![b'D'];
    b.extend_from_slice(&oid.to_be_bytes());
    b.push(marker);
    tuple(&mut b, old);
    b
}

fn truncate(oids: &[u32]) -> Vec<u8> {
    let mut b = vec![b'T'];
    b.extend_from_slice(&u32::try_from(oids.len()).unwrap().to_be_bytes());
    b.push(0);
    for oid in oids {
        b.extend_from_slice(&oid.to_be_bytes());
    }
    b
}

fn type_msg() -> Vec<u8> {
    let mut b = vec![b'Y'];
    b.extend_from_slice(&70_000u32.to_be_bytes());
    b.extend_from_slice(b"public\0mood\0");
    b
}

fn origin_msg() -> Vec<u8> {
    let mut b = vec![b'O'];
    b.extend_from_slice(&LSN.to_be_bytes());
    b.extend_from_slice(b"node_a\0");
    b
}

fn logical_message() -> Vec<u8> {
    let mut b = vec![b'M', 1];
    b.extend_from_slice(&LSN.to_be_bytes());
    b.extend_from_slice(b"app\0");
    b.extend_from_slice(&3i32.to_be_bytes());
    b.extend_from_slice(b"hey");
    b
}

/// A logical message with `prefix` and `content`, transactional or not.
fn message(transactional: bool, prefix: &str, content: &[u8]) -> Vec<u8> {
    let mut b = vec![b'M', u8::from(transactional)];
    b.extend_from_slice(&LSN.to_be_bytes());
    b.extend_from_slice(prefix.as_bytes());
    b.push(0);
    b.extend_from_slice(&(content.len() as i32).to_be_bytes());
    b.extend_from_slice(content);
    b
}

/// Begin, the changes, Commit, with the default LSN/xid/time.
fn txn(changes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v = vec![begin()];
    v.extend(changes);
    v.push(commit());
    v
}

fn txn_at(lsn: u64, xid: u32, changes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v = vec![begin_at(lsn, COMMIT_TIME, xid)];
    v.extend(changes);
    v.push(commit_at(lsn, lsn + 0x38, COMMIT_TIME));
    v
}

// ---- relations and rules ----

fn rel_in(
    oid: u32,
    schema: &str,
    table: &str,
    identity: u8,
    cols: &[(&str, u32, bool)],
) -> Relation {
    Relation {
        oid,
        namespace: schema.into(),
        name: table.into(),
        replica_identity: identity,
        columns: cols
            .iter()
            .map(|&(name, type_oid, key)| Column {
                key,
                name: name.into(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn rel(oid: u32, table: &str, cols: &[(&str, u32, bool)]) -> Relation {
    rel_in(oid, "public", table, b'd', cols)
}

/// `products (id int4 primary key, name text)`.
fn products() -> Relation {
    rel(
        PRODUCTS,
        "products",
        &[("id", INT4, true), ("name", TEXT, false)],
    )
}

/// `orders (id int8 primary key, note text)`.
fn orders() -> Relation {
    rel(
        ORDERS,
        "orders",
        &[("id", INT8, true), ("note", TEXT, false)],
    )
}

/// `audit (id int4 primary key, what text)`: never mapped.
fn audit() -> Relation {
    rel(AUDIT, "audit", &[("id", INT4, true), ("what", TEXT, false)])
}

/// What the catalog says of a table whose primary key is `columns`.
fn pk(columns: &[&str]) -> Catalogued {
    Catalogued {
        primary_key: columns.iter().map(|&c| c.to_owned()).collect(),
        ..Catalogued::default()
    }
}

fn rule(table: &str) -> TableRule {
    TableRule {
        schema: "public".into(),
        name: table.into(),
        channels: vec![channel::Template::parse(&format!("resources/{table}")).unwrap()],
        ids_as_strings: false,
        data_provider_name: None,
        row_filter: None,
        row_payload: false,
        columns: Columns::All,
        numeric_as_number: false,
    }
}

fn coalescing(max: usize) -> MapOptions {
    MapOptions {
        coalesce: true,
        max_ids_per_event: max,
        max_event_bytes: 0,
    }
}

fn per_row() -> MapOptions {
    MapOptions {
        coalesce: false,
        max_ids_per_event: 1000,
        max_event_bytes: 0,
    }
}

// ---- driving the mapper ----

/// Feeds messages (as pgoutput bytes) to the mapper; every step's result, and all events.
fn run(mapper: &mut Mapper, msgs: &[Vec<u8>]) -> (Vec<Result<Step, MapError>>, Vec<LiveEvent>) {
    let mut out = Vec::new();
    let mut steps = Vec::new();
    for bytes in msgs {
        let msg = decode(bytes).expect("test message decodes");
        steps.push(mapper.handle(&msg, &mut out));
    }
    (steps, out)
}

/// Feeds messages that must all map without error.
fn feed(mapper: &mut Mapper, msgs: &[Vec<u8>]) -> Vec<LiveEvent> {
    let (steps, out) = run(mapper, msgs);
    for (i, s) in steps.iter().enumerate() {
        assert!(s.is_ok(), "message {i}: {s:?}");
    }
    out
}

/// A mapper for `rules`, with `relations` recorded (no primary-key lookup).
fn mapper(rules: &[TableRule], options: MapOptions, relations: &[Relation]) -> Mapper {
    let mut m = Mapper::new(rules, options);
    for r in relations {
        m.relation(r, None);
    }
    m
}

fn js(ev: &LiveEvent) -> Json {
    serde_json::from_slice(&ev.json).expect("event JSON parses")
}

fn text(ev: &LiveEvent) -> &str {
    std::str::from_utf8(&ev.json).expect("event JSON is UTF-8")
}

/// The `payload.ids` of each event (`None` when the payload has no `ids`).
fn ids(events: &[LiveEvent]) -> Vec<Option<Json>> {
    events
        .iter()
        .map(|e| {
            let v = js(e);
            let payload = v["payload"]
                .as_object()
                .expect("payload is an object")
                .clone();
            match payload.get("ids") {
                None => {
                    assert!(payload.is_empty(), "payload without ids must be {{}}: {v}");
                    None
                }
                Some(ids) => {
                    assert_eq!(payload.len(), 1, "payload has only ids: {v}");
                    let arr = ids.as_array().expect("ids is an array");
                    assert!(!arr.is_empty(), "ids is never empty: {v}");
                    Some(ids.clone())
                }
            }
        })
        .collect()
}

/// (channel, type) of each event.
fn kinds(events: &[LiveEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let v = js(e);
            (
                v["channel"].as_str().unwrap().to_owned(),
                v["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn meta_ids(events: &[LiveEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| js(e)["meta"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn keys(v: &Json) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

// ---- the event shape ----

#[test]
fn insert_becomes_a_created_event_with_the_exact_contract_shape() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![insert(PRODUCTS, &[V::T("42"), V::T("lamp")])]),
    );
    assert_eq!(out.len(), 1);
    let ev = &out[0];
    assert_eq!(
        text(ev),
        r#"{"channel":"resources/products","type":"created","payload":{"ids":[42]},"date":"2026-11-29T10:00:00.123456Z","meta":{"id":"0/16B3748:0","lsn":"0/16B3748","xid":1234,"schema":"public","table":"products"}}"#
    );
    let v = js(ev);
    assert_eq!(keys(&v), ["channel", "date", "meta", "payload", "type"]);
    assert_eq!(keys(&v["meta"]), ["id", "lsn", "schema", "table", "xid"]);
    assert_eq!(v["payload"], json!({"ids": [42]}));
    assert_eq!(v["meta"]["xid"], json!(XID));
    assert!(v["meta"]["xid"].is_u64(), "xid is a JSON number");

    // The struct agrees with its encoding.
    assert_eq!(&*ev.channel, "resources/products");
    assert_eq!(ev.kind, EventKind::Created);
    assert_eq!(
        ev.id,
        EventId {
            commit_lsn: Lsn(LSN),
            ordinal: 0
        }
    );
    assert_eq!(ev.xid, XID);
    assert_eq!(ev.commit_time, COMMIT_TIME);
    assert_eq!(&*ev.schema, "public");
    assert_eq!(&*ev.table, "products");
}

#[test]
fn custom_channel_and_data_provider_name() {
    let r = TableRule {
        channels: vec![channel::Template::parse("catalog/items").unwrap()],
        data_provider_name: Some("inventory".into()),
        ..rule("products")
    };
    let mut m = mapper(&[r], coalescing(1000), &[products()]);
    let out = feed(&mut m, &txn(vec![insert(PRODUCTS, &[V::T("7"), V::N])]));
    assert_eq!(out.len(), 1);
    let v = js(&out[0]);
    assert_eq!(v["channel"], "catalog/items");
    assert_eq!(&*out[0].channel, "catalog/items");
    assert_eq!(
        keys(&v["meta"]),
        ["dataProviderName", "id", "lsn", "schema", "table", "xid"]
    );
    assert_eq!(v["meta"]["dataProviderName"], "inventory");
    // The table is still named by its real name.
    assert_eq!(v["meta"]["table"], "products");
    assert_eq!(v["meta"]["schema"], "public");
}

#[test]
fn date_is_the_commit_time_in_rfc3339_utc_with_microseconds() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(&mut m, &txn(vec![insert(PRODUCTS, &[V::T("1"), V::N])]));
    assert_eq!(js(&out[0])["date"], COMMIT_DATE);

    // A whole second still has six fractional digits; 2000-01-01 is PostgreSQL's epoch.
    let whole = 849_261_600_000_000;
    let msgs = vec![
        begin_at(LSN, whole, 1),
        insert(PRODUCTS, &[V::T("1"), V::N]),
        commit_at(LSN, END_LSN, whole),
    ];
    let out = feed(&mut m, &msgs);
    assert_eq!(js(&out[0])["date"], "2026-11-29T10:00:00.000000Z");

    let msgs = vec![
        begin_at(LSN, 1, 1),
        insert(PRODUCTS, &[V::T("1"), V::N]),
        commit_at(LSN, END_LSN, 1),
    ];
    let out = feed(&mut m, &msgs);
    assert_eq!(js(&out[0])["date"], "2000-01-01T00:00:00.000001Z");
}

#[test]
fn meta_lsn_and_id_use_the_commit_lsn_in_x_slash_x_form() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let lsn = 0x1_0000_00A0;
    let out = feed(
        &mut m,
        &txn_at(
            lsn,
            4_000_000_000,
            vec![
                insert(PRODUCTS, &[V::T("1"), V::N]),
                delete(PRODUCTS, b'K', &[V::T("2"), V::N]),
            ],
        ),
    );
    assert_eq!(out.len(), 2);
    let v0 = js(&out[0]);
    let v1 = js(&out[1]);
    assert_eq!(v0["meta"]["lsn"], "1/A0");
    assert_eq!(v0["meta"]["id"], "1/A0:0");
    assert_eq!(v1["meta"]["lsn"], "1/A0");
    assert_eq!(v1["meta"]["id"], "1/A0:1");
    // xid is a u32 and stays a number above i32::MAX.
    assert_eq!(v0["meta"]["xid"], json!(4_000_000_000u32));
}

// ---- created / updated / deleted / truncate ----

#[test]
fn insert_update_delete_map_to_created_updated_deleted() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::T("a")]),
            update(PRODUCTS, None, &[V::T("2"), V::T("b")]),
            delete(PRODUCTS, b'K', &[V::T("3"), V::N]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "updated".to_owned()),
            ("resources/products".to_owned(), "deleted".to_owned()),
        ]
    );
    assert_eq!(
        out.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Created, EventKind::Updated, EventKind::Deleted]
    );
    assert_eq!(
        ids(&out),
        [Some(json!([1])), Some(json!([2])), Some(json!([3]))]
    );
    assert_eq!(
        meta_ids(&out),
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2"]
    );
}

#[test]
fn replica_identity_index_uses_its_flagged_columns() {
    // REPLICA IDENTITY USING INDEX flags the index columns; the old tuple may be 'O'.
    let r = rel_in(
        PRODUCTS,
        "public",
        "products",
        b'i',
        &[("name", TEXT, false), ("sku", TEXT, true)],
    );
    let mut m = mapper(&[rule("products")], coalescing(1000), &[r]);
    let out = feed(
        &mut m,
        &txn(vec![delete(PRODUCTS, b'K', &[V::N, V::T("SKU-1")])]),
    );
    assert_eq!(ids(&out), [Some(json!(["SKU-1"]))]);
}

#[test]
fn truncate_is_deleted_with_an_empty_payload() {
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        coalescing(1000),
        &[products(), orders(), audit()],
    );
    let out = feed(&mut m, &txn(vec![truncate(&[PRODUCTS, AUDIT, ORDERS])]));
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "deleted".to_owned()),
            ("resources/orders".to_owned(), "deleted".to_owned()),
        ]
    );
    for ev in &out {
        let v = js(ev);
        assert_eq!(v["payload"], json!({}));
        assert_eq!(keys(&v), ["channel", "date", "meta", "payload", "type"]);
        assert!(text(ev).contains(r#""payload":{}"#), "{}", text(ev));
    }
    assert_eq!(meta_ids(&out), ["0/16B3748:0", "0/16B3748:1"]);
}

#[test]
fn truncate_absorbs_deleted_ids_of_the_same_table_into_one_id_less_event() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            delete(PRODUCTS, b'K', &[V::T("1"), V::N]),
            truncate(&[PRODUCTS]),
            delete(PRODUCTS, b'K', &[V::T("2"), V::N]),
            insert(PRODUCTS, &[V::T("3"), V::N]),
        ]),
    );
    // "deleted" first appeared before "created": order of first appearance.
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "deleted".to_owned()),
            ("resources/products".to_owned(), "created".to_owned()),
        ]
    );
    assert_eq!(ids(&out), [None, Some(json!([3]))]);
}

#[test]
fn unmapped_tables_produce_nothing() {
    let mut m = mapper(
        &[rule("products")],
        coalescing(1000),
        &[products(), audit()],
    );
    let (steps, out) = run(
        &mut m,
        &txn(vec![
            insert(AUDIT, &[V::T("1"), V::T("x")]),
            update(AUDIT, Some((b'K', &[V::T("1"), V::N])), &[V::T("2"), V::N]),
            delete(AUDIT, b'K', &[V::T("2"), V::N]),
            truncate(&[AUDIT]),
        ]),
    );
    assert!(
        out.is_empty(),
        "{:?}",
        out.iter().map(text).collect::<Vec<_>>()
    );
    // The transaction is still acknowledged.
    assert_eq!(
        steps.last().unwrap(),
        &Ok(Step::Committed {
            end_lsn: Lsn(END_LSN)
        })
    );
    assert!(!m.in_transaction());
}

#[test]
fn a_table_of_the_same_name_in_another_schema_is_not_mapped() {
    let other = rel_in(
        PRODUCTS + 1,
        "archive",
        "products",
        b'd',
        &[("id", INT4, true)],
    );
    let sales = rel_in(PRODUCTS + 2, "sales", "orders", b'd', &[("id", INT4, true)]);
    let sales_rule = TableRule {
        schema: "sales".into(),
        ..rule("orders")
    };
    let mut m = mapper(
        &[rule("products"), sales_rule],
        coalescing(1000),
        &[other, sales],
    );
    assert!(!m.is_mapped(&rel_in(1, "archive", "products", b'f', &[])));
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS + 1, &[V::T("1")]),
            insert(PRODUCTS + 2, &[V::T("5")]),
        ]),
    );
    assert_eq!(out.len(), 1);
    let v = js(&out[0]);
    assert_eq!(v["channel"], "resources/orders");
    assert_eq!(v["meta"]["schema"], "sales");
    assert_eq!(v["meta"]["table"], "orders");
    assert_eq!(v["payload"], json!({"ids": [5]}));
}

// ---- typed ids ----

#[test]
fn integer_keys_are_json_numbers_and_int8_is_exact() {
    let t2 = rel(1, "t2", &[("id", INT2, true)]);
    let t4 = rel(2, "t4", &[("id", INT4, true)]);
    let t8 = rel(3, "t8", &[("id", INT8, true)]);
    let to = rel(4, "toid", &[("id", OID, true)]);
    let mut m = mapper(
        &[rule("t2"), rule("t4"), rule("t8"), rule("toid")],
        coalescing(1000),
        &[t2, t4, t8, to],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(1, &[V::T("-32768")]),
            insert(2, &[V::T("2147483647")]),
            insert(3, &[V::T("9007199254740993")]),
            insert(3, &[V::T("-9223372036854775808")]),
            insert(4, &[V::T("4294967295")]),
        ]),
    );
    assert_eq!(out.len(), 4);
    assert!(text(&out[0]).contains(r#""payload":{"ids":[-32768]}"#));
    assert!(text(&out[1]).contains(r#""payload":{"ids":[2147483647]}"#));
    // 2^53 + 1 cannot be held by an f64: the JSON text must carry it digit for digit.
    assert!(
        text(&out[2]).contains(r#""payload":{"ids":[9007199254740993,-9223372036854775808]}"#),
        "{}",
        text(&out[2])
    );
    assert!(text(&out[3]).contains(r#""payload":{"ids":[4294967295]}"#));
    let v = js(&out[2]);
    assert_eq!(v["payload"]["ids"][0].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(v["payload"]["ids"][1].as_i64(), Some(i64::MIN));
    for ev in &out {
        assert!(js(ev)["payload"]["ids"][0].is_number(), "{}", text(ev));
    }
}

#[test]
fn text_uuid_and_other_keys_are_strings() {
    let tt = rel(1, "tt", &[("id", TEXT, true)]);
    let tu = rel(2, "tu", &[("id", UUID, true)]);
    let tn = rel(3, "tn", &[("id", NUMERIC, true)]);
    let mut m = mapper(
        &[rule("tt"), rule("tu"), rule("tn")],
        coalescing(1000),
        &[tt, tu, tn],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            // Digits in a text column stay a string.
            insert(1, &[V::T("42")]),
            insert(1, &[V::T("a \"quoted\" ключ")]),
            insert(2, &[V::T("11111111-2222-3333-4444-555555555555")]),
            insert(3, &[V::T("1.50")]),
        ]),
    );
    assert_eq!(
        ids(&out),
        [
            Some(json!(["42", "a \"quoted\" ключ"])),
            Some(json!(["11111111-2222-3333-4444-555555555555"])),
            Some(json!(["1.50"])),
        ]
    );
}

#[test]
fn ids_as_strings_turns_integer_keys_into_strings() {
    let strings = TableRule {
        ids_as_strings: true,
        ..rule("orders")
    };
    let mut m = mapper(
        &[strings, rule("products")],
        coalescing(1000),
        &[orders(), products()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(ORDERS, &[V::T("9007199254740993"), V::N]),
            insert(ORDERS, &[V::T("7"), V::N]),
            insert(PRODUCTS, &[V::T("7"), V::N]),
        ]),
    );
    assert_eq!(
        ids(&out),
        [Some(json!(["9007199254740993", "7"])), Some(json!([7]))]
    );
    assert!(text(&out[0]).contains(r#""ids":["9007199254740993","7"]"#));
}

#[test]
fn composite_keys_are_one_array_per_row_in_key_order() {
    // Key columns a (int8) and b (text) with a non-key column between them.
    let pair = rel(
        1,
        "pair",
        &[("a", INT8, true), ("v", INT4, false), ("b", TEXT, true)],
    );
    let mut m = mapper(&[rule("pair")], coalescing(1000), &[pair]);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(1, &[V::T("9007199254740993"), V::T("1"), V::T("x")]),
            insert(1, &[V::T("2"), V::T("1"), V::T("y")]),
            // Same key again: deduplicated.
            insert(1, &[V::T("2"), V::T("9"), V::T("y")]),
            // Same a, different b: a different key.
            insert(1, &[V::T("2"), V::T("1"), V::T("z")]),
        ]),
    );
    assert_eq!(
        ids(&out),
        [Some(json!([
            [9_007_199_254_740_993u64, "x"],
            [2, "y"],
            [2, "z"]
        ]))]
    );
    assert!(text(&out[0]).contains(r#""ids":[[9007199254740993,"x"],[2,"y"],[2,"z"]]"#));
}

#[test]
fn composite_keys_with_ids_as_strings_are_arrays_of_strings() {
    let pair = rel(1, "pair", &[("a", INT4, true), ("b", INT4, true)]);
    let r = TableRule {
        ids_as_strings: true,
        ..rule("pair")
    };
    let mut m = mapper(&[r], coalescing(1000), &[pair]);
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("1"), V::T("2")])]));
    assert_eq!(ids(&out), [Some(json!([["1", "2"]]))]);
}

// ---- updates and keys ----

#[test]
fn key_changing_update_carries_old_and_new_ids() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![update(
            PRODUCTS,
            Some((b'K', &[V::T("2"), V::N])),
            &[V::T("10"), V::T("renamed")],
        )]),
    );
    assert_eq!(kinds(&out)[0].1, "updated");
    assert_eq!(ids(&out), [Some(json!([2, 10]))]);
}

#[test]
fn key_changing_update_of_a_composite_key() {
    let pair = rel(
        1,
        "pair",
        &[("a", INT4, true), ("b", TEXT, true), ("v", TEXT, false)],
    );
    let mut m = mapper(&[rule("pair")], coalescing(1000), &[pair]);
    let out = feed(
        &mut m,
        &txn(vec![update(
            1,
            Some((b'K', &[V::T("1"), V::T("x"), V::N])),
            &[V::T("1"), V::T("y"), V::T("v")],
        )]),
    );
    assert_eq!(ids(&out), [Some(json!([[1, "x"], [1, "y"]]))]);
}

#[test]
fn update_without_a_key_change_carries_only_the_new_id() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![update(PRODUCTS, None, &[V::T("5"), V::T("new name")])]),
    );
    assert_eq!(ids(&out), [Some(json!([5]))]);

    // An old key equal to the new one (PostgreSQL sends it when the key is stored
    // externally) does not repeat the id.
    let out = feed(
        &mut m,
        &txn(vec![update(
            PRODUCTS,
            Some((b'K', &[V::T("5"), V::N])),
            &[V::T("5"), V::T("x")],
        )]),
    );
    assert_eq!(ids(&out), [Some(json!([5]))]);
}

#[test]
fn key_changes_and_plain_updates_are_deduplicated_together() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            update(PRODUCTS, None, &[V::T("3"), V::N]),
            update(
                PRODUCTS,
                Some((b'K', &[V::T("3"), V::N])),
                &[V::T("4"), V::N],
            ),
            update(
                PRODUCTS,
                Some((b'K', &[V::T("4"), V::N])),
                &[V::T("3"), V::N],
            ),
            update(PRODUCTS, None, &[V::T("1"), V::N]),
        ]),
    );
    assert_eq!(ids(&out), [Some(json!([3, 4, 1]))]);
}

#[test]
fn unchanged_toast_key_in_the_new_tuple_falls_back_to_the_old_tuple() {
    // A text key large enough to be TOASTed: the new tuple says 'u' for it.
    let docs = rel(1, "docs", &[("slug", TEXT, true), ("body", TEXT, false)]);
    let mut m = mapper(&[rule("docs")], coalescing(1000), &[docs]);
    let out = feed(
        &mut m,
        &txn(vec![update(
            1,
            Some((b'K', &[V::T("long-slug"), V::N])),
            &[V::U, V::T("new body")],
        )]),
    );
    assert_eq!(ids(&out), [Some(json!(["long-slug"]))]);

    // Composite: one column unchanged, taken from the old tuple, the other new.
    let pair = rel(2, "pair", &[("a", TEXT, true), ("b", INT4, true)]);
    let mut m = mapper(&[rule("pair")], coalescing(1000), &[pair]);
    let out = feed(
        &mut m,
        &txn(vec![update(
            2,
            Some((b'K', &[V::T("big"), V::T("1")])),
            &[V::U, V::T("2")],
        )]),
    );
    assert_eq!(ids(&out), [Some(json!([["big", 1], ["big", 2]]))]);
}

#[test]
fn unresolvable_unchanged_toast_key_makes_the_event_id_less() {
    let docs = rel(1, "docs", &[("slug", TEXT, true), ("body", TEXT, false)]);
    let mut m = mapper(&[rule("docs")], coalescing(1000), &[docs]);
    let out = feed(
        &mut m,
        &txn(vec![
            update(1, None, &[V::T("a"), V::N]),
            // No old tuple to fall back on: the key is unknown.
            update(1, None, &[V::U, V::T("b")]),
            update(1, None, &[V::T("c"), V::N]),
        ]),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(ids(&out), [None]);
    assert_eq!(js(&out[0])["payload"], json!({}));
}

#[test]
fn null_key_makes_the_event_id_less_but_leaves_other_events_alone() {
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        coalescing(1000),
        &[products(), orders()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(ORDERS, &[V::T("100"), V::N]),
            insert(PRODUCTS, &[V::N, V::T("no key")]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
            delete(PRODUCTS, b'K', &[V::T("1"), V::N]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/orders".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "deleted".to_owned()),
        ]
    );
    assert_eq!(ids(&out), [None, Some(json!([100])), Some(json!([1]))]);
}

#[test]
fn a_tuple_shorter_than_the_relation_has_no_key() {
    // Key in column 1, but the tuple only has one column.
    let r = rel(1, "odd", &[("v", TEXT, false), ("id", INT4, true)]);
    let mut m = mapper(&[rule("odd")], coalescing(1000), &[r]);
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("x")])]));
    assert_eq!(ids(&out), [None]);
}

// ---- replica identity FULL / NOTHING and the primary key ----

fn full_products() -> Relation {
    // REPLICA IDENTITY FULL: pgoutput flags every column as key.
    rel_in(
        PRODUCTS,
        "public",
        "products",
        b'f',
        &[
            ("name", TEXT, true),
            ("id", INT4, true),
            ("price", NUMERIC, true),
        ],
    )
}

#[test]
fn replica_identity_full_uses_the_primary_key_it_is_given() {
    let mut m = Mapper::new(&[rule("products")], coalescing(1000));
    let r = full_products();
    m.relation(&r, Some(&pk(&["id"])));
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("lamp"), V::T("1"), V::T("9.99")]),
            update(
                PRODUCTS,
                Some((b'O', &[V::T("lamp"), V::T("1"), V::T("9.99")])),
                &[V::T("lamp"), V::T("1"), V::T("12.00")],
            ),
            // The key changes: old and new.
            update(
                PRODUCTS,
                Some((b'O', &[V::T("desk"), V::T("2"), V::T("1")])),
                &[V::T("desk"), V::T("20"), V::T("1")],
            ),
            delete(PRODUCTS, b'O', &[V::T("chair"), V::T("3"), V::N]),
        ]),
    );
    assert_eq!(
        ids(&out),
        [Some(json!([1])), Some(json!([1, 2, 20])), Some(json!([3])),]
    );
}

#[test]
fn replica_identity_full_with_an_unchanged_toast_value_falls_back_to_the_old_row() {
    let r = rel_in(
        1,
        "public",
        "docs",
        b'f',
        &[("slug", TEXT, true), ("body", TEXT, true)],
    );
    let mut m = Mapper::new(&[rule("docs")], coalescing(1000));
    m.relation(&r, Some(&pk(&["slug"])));
    let out = feed(
        &mut m,
        &txn(vec![update(
            1,
            Some((b'O', &[V::T("s"), V::U])),
            &[V::U, V::T("b")],
        )]),
    );
    assert_eq!(ids(&out), [Some(json!(["s"]))]);
}

#[test]
fn replica_identity_full_with_a_composite_primary_key_in_pk_order() {
    let r = rel_in(
        1,
        "public",
        "pair",
        b'f',
        &[("a", INT4, true), ("b", TEXT, true), ("v", TEXT, true)],
    );
    let mut m = Mapper::new(&[rule("pair")], coalescing(1000));
    // The primary key is (b, a): its order, not the column order, is the key order.
    m.relation(&r, Some(&pk(&["b", "a"])));
    let out = feed(
        &mut m,
        &txn(vec![insert(1, &[V::T("1"), V::T("x"), V::T("v")])]),
    );
    assert_eq!(ids(&out), [Some(json!([["x", 1]]))]);
}

/// `pair (a int4, b text, v text, primary key (b, a))`: the Relation message flags a and b in
/// table order under DEFAULT identity; events carry them in key order, as under FULL, across a
/// switch from one identity to the other.
#[test]
fn a_composite_key_is_in_key_order_under_every_replica_identity() {
    let cols = [("a", INT4, true), ("b", TEXT, true), ("v", TEXT, false)];
    let default = rel_in(1, "public", "pair", b'd', &cols);
    let mut full = default.clone();
    full.replica_identity = b'f';
    full.columns.iter_mut().for_each(|c| c.key = true);
    let mut m = Mapper::new(&[rule("pair")], coalescing(1000));
    m.relation(&default, Some(&pk(&["b", "a"])));
    let row = [V::T("1"), V::T("x"), V::T("v")];
    let mut out = feed(&mut m, &txn(vec![insert(1, &row)]));
    m.relation(&full, Some(&pk(&["b", "a"])));
    out.extend(feed(
        &mut m,
        &txn(vec![
            update(1, Some((b'O', &row)), &row),
            delete(1, b'O', &row),
        ]),
    ));
    assert_eq!(ids(&out), vec![Some(json!([["x", 1]])); 3]);

    // REPLICA IDENTITY USING INDEX on (v, a): that index's order.
    let mut by_index = rel_in(1, "public", "pair", b'i', &cols);
    by_index.columns[1].key = false;
    by_index.columns[2].key = true;
    let catalogued = Catalogued {
        identity_index: vec!["v".into(), "a".into()],
        ..pk(&["b", "a"])
    };
    m.relation(&by_index, Some(&catalogued));
    let out = feed(
        &mut m,
        &txn(vec![delete(1, b'K', &[V::T("1"), V::N, V::T("v")])]),
    );
    assert_eq!(ids(&out), [Some(json!([["v", 1]]))]);

    // A catalog that no longer describes the flagged columns: table order.
    m.relation(&default, Some(&pk(&["a"])));
    let out = feed(&mut m, &txn(vec![insert(1, &row)]));
    assert_eq!(ids(&out), [Some(json!([[1, "x"]]))]);
}

/// A domain over an integer type is a number, like its base type; over a domain too.
#[test]
fn a_key_whose_type_is_a_domain_over_an_integer_is_a_number() {
    const POSINT: u32 = 16_500;
    const SMALLPOS: u32 = 16_501;
    const CODE: u32 = 16_502;
    let r = rel(1, "d", &[("id", SMALLPOS, true), ("code", CODE, true)]);
    let catalogued = Catalogued {
        types: [(SMALLPOS, POSINT), (POSINT, INT8), (CODE, TEXT)]
            .map(|(oid, base)| {
                let info = TypeInfo {
                    base,
                    element: 0,
                    delimiter: b',',
                    fields: Vec::new(),
                };
                (oid, info)
            })
            .into(),
        ..pk(&["id", "code"])
    };
    let mut m = Mapper::new(&[rule("d")], coalescing(1000));
    m.relation(&r, Some(&catalogued));
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("42"), V::T("7")])]));
    assert_eq!(ids(&out), [Some(json!([[42, "7"]]))]);
    // Without the catalog, an unknown type stays text.
    m.relation(&r, None);
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("42"), V::T("7")])]));
    assert_eq!(ids(&out), [Some(json!([["42", "7"]]))]);
}

#[test]
fn replica_identity_full_without_a_primary_key_has_no_ids() {
    let mut m = Mapper::new(&[rule("products")], coalescing(1000));
    m.relation(&full_products(), None);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("lamp"), V::T("1"), V::N]),
            delete(PRODUCTS, b'O', &[V::T("lamp"), V::T("1"), V::N]),
        ]),
    );
    assert_eq!(kinds(&out).len(), 2);
    assert_eq!(ids(&out), [None, None]);

    // A primary key naming a column the relation does not have is no key either.
    let mut m = Mapper::new(&[rule("products")], coalescing(1000));
    m.relation(&full_products(), Some(&pk(&["missing"])));
    let out = feed(
        &mut m,
        &txn(vec![insert(PRODUCTS, &[V::T("lamp"), V::T("1"), V::N])]),
    );
    assert_eq!(ids(&out), [None]);

    // Nor is an empty one.
    let mut m = Mapper::new(&[rule("products")], coalescing(1000));
    m.relation(&full_products(), Some(&pk(&[])));
    let out = feed(
        &mut m,
        &txn(vec![insert(PRODUCTS, &[V::T("lamp"), V::T("1"), V::N])]),
    );
    assert_eq!(ids(&out), [None]);
}

#[test]
fn flagged_key_columns_win_over_a_primary_key_unless_identity_is_full() {
    // REPLICA IDENTITY USING INDEX on `sku`: the flagged column is the key, whatever the pk.
    let r = rel_in(
        1,
        "public",
        "items",
        b'i',
        &[("id", INT4, false), ("sku", TEXT, true)],
    );
    let mut m = Mapper::new(&[rule("items")], coalescing(1000));
    m.relation(&r, Some(&pk(&["id"])));
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("1"), V::T("S-1")])]));
    assert_eq!(ids(&out), [Some(json!(["S-1"]))]);
}

#[test]
fn replica_identity_nothing_uses_the_primary_key() {
    let r = rel_in(
        1,
        "public",
        "items",
        b'n',
        &[("id", INT8, false), ("v", TEXT, false)],
    );
    let mut m = Mapper::new(&[rule("items")], coalescing(1000));
    m.relation(&r, Some(&pk(&["id"])));
    let out = feed(&mut m, &txn(vec![insert(1, &[V::T("77"), V::N])]));
    assert_eq!(ids(&out), [Some(json!([77]))]);
}

#[test]
fn only_mapped_tables_are_looked_up() {
    let m = Mapper::new(&[rule("products")], coalescing(1000));
    assert!(m.is_mapped(&products()));
    assert!(m.is_mapped(&full_products()));
    let mut unmapped = full_products();
    unmapped.name = "other".into();
    assert!(!m.is_mapped(&unmapped));
}

// ---- coalescing ----

#[test]
fn coalesces_per_table_and_type_in_order_of_first_appearance() {
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        coalescing(1000),
        &[products(), orders()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(ORDERS, &[V::T("100"), V::N]),
            update(PRODUCTS, None, &[V::T("1"), V::N]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
            delete(ORDERS, b'K', &[V::T("100"), V::N]),
            insert(ORDERS, &[V::T("101"), V::N]),
            update(PRODUCTS, None, &[V::T("2"), V::N]),
            insert(PRODUCTS, &[V::T("3"), V::N]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/orders".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "updated".to_owned()),
            ("resources/orders".to_owned(), "deleted".to_owned()),
        ]
    );
    assert_eq!(
        ids(&out),
        [
            Some(json!([1, 2, 3])),
            Some(json!([100, 101])),
            Some(json!([1, 2])),
            Some(json!([100])),
        ]
    );
    assert_eq!(
        meta_ids(&out),
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2", "0/16B3748:3"]
    );
    for (n, ev) in out.iter().enumerate() {
        assert_eq!(ev.id.ordinal, n as u64);
        assert_eq!(ev.id.commit_lsn, Lsn(LSN));
    }
}

#[test]
fn ids_are_deduplicated_in_order_of_first_appearance() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let out = feed(
        &mut m,
        &txn(["5", "3", "5", "9", "3", "1", "9", "5"]
            .iter()
            .map(|id| update(PRODUCTS, None, &[V::T(id), V::N]))
            .collect()),
    );
    assert_eq!(ids(&out), [Some(json!([5, 3, 9, 1]))]);
}

#[test]
fn events_are_emitted_only_at_commit_below_the_maximum() {
    let mut m = mapper(&[rule("products")], coalescing(3), &[products()]);
    let mut msgs = vec![begin()];
    msgs.push(insert(PRODUCTS, &[V::T("1"), V::N]));
    msgs.push(insert(PRODUCTS, &[V::T("2"), V::N]));
    let (steps, out) = run(&mut m, &msgs);
    assert!(out.is_empty());
    assert_eq!(
        steps,
        [Ok(Step::Continue), Ok(Step::Continue), Ok(Step::Continue)]
    );
    assert!(m.in_transaction());
    let (steps, out) = run(&mut m, &[commit()]);
    assert_eq!(
        steps,
        [Ok(Step::Committed {
            end_lsn: Lsn(END_LSN)
        })]
    );
    assert_eq!(ids(&out), [Some(json!([1, 2]))]);
    assert!(!m.in_transaction());
}

#[test]
fn coalesced_events_split_at_max_ids_per_event() {
    let mut m = mapper(&[rule("products")], coalescing(3), &[products()]);
    let rows: Vec<Vec<u8>> = (1..=7)
        .map(|i| insert(PRODUCTS, &[V::T(&i.to_string()), V::N]))
        .collect();
    let out = feed(&mut m, &txn(rows));
    assert_eq!(
        ids(&out),
        [
            Some(json!([1, 2, 3])),
            Some(json!([4, 5, 6])),
            Some(json!([7])),
        ]
    );
    assert_eq!(
        meta_ids(&out),
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2"]
    );
    for ev in &out {
        let v = js(ev);
        assert_eq!(v["type"], "created");
        assert_eq!(v["meta"]["lsn"], "0/16B3748");
        assert_eq!(v["date"], COMMIT_DATE);
    }
}

#[test]
fn a_full_last_chunk_leaves_no_empty_event() {
    let mut m = mapper(&[rule("products")], coalescing(3), &[products()]);
    let rows: Vec<Vec<u8>> = (1..=6)
        .map(|i| insert(PRODUCTS, &[V::T(&i.to_string()), V::N]))
        .collect();
    let out = feed(&mut m, &txn(rows));
    assert_eq!(ids(&out), [Some(json!([1, 2, 3])), Some(json!([4, 5, 6]))]);
}

#[test]
fn splitting_emits_full_chunks_before_commit() {
    let mut m = mapper(&[rule("products")], coalescing(2), &[products()]);
    let mut msgs = vec![begin()];
    for i in 1..=5 {
        msgs.push(insert(PRODUCTS, &[V::T(&i.to_string()), V::N]));
    }
    let (_, before_commit) = run(&mut m, &msgs);
    // Memory stays bounded: full chunks leave as soon as they are full.
    assert_eq!(
        ids(&before_commit),
        [Some(json!([1, 2])), Some(json!([3, 4]))]
    );
    let (_, at_commit) = run(&mut m, &[commit()]);
    assert_eq!(ids(&at_commit), [Some(json!([5]))]);
    let all: Vec<LiveEvent> = before_commit.into_iter().chain(at_commit).collect();
    assert_eq!(
        meta_ids(&all),
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2"]
    );
}

#[test]
fn a_key_change_counts_two_ids_towards_the_maximum() {
    let mut m = mapper(&[rule("products")], coalescing(2), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            update(PRODUCTS, None, &[V::T("1"), V::N]),
            update(
                PRODUCTS,
                Some((b'K', &[V::T("2"), V::N])),
                &[V::T("3"), V::N],
            ),
        ]),
    );
    assert_eq!(ids(&out), [Some(json!([1, 2])), Some(json!([3]))]);
}

#[test]
fn a_keyless_row_after_a_split_ends_the_group_with_an_id_less_event() {
    let mut m = mapper(&[rule("products")], coalescing(2), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
            insert(PRODUCTS, &[V::T("3"), V::N]),
            insert(PRODUCTS, &[V::N, V::N]),
            insert(PRODUCTS, &[V::T("4"), V::N]),
            insert(PRODUCTS, &[V::T("5"), V::N]),
        ]),
    );
    // The chunk already sent stays; the rest collapses into one "refetch all" event.
    assert_eq!(ids(&out), [Some(json!([1, 2])), None]);
    assert_eq!(meta_ids(&out), ["0/16B3748:0", "0/16B3748:1"]);
}

#[test]
fn with_splits_ordinals_still_follow_the_output_order() {
    // products first appears before orders, but orders fills a chunk first: whatever the
    // order, the ordinals count up along the output and every id is delivered once.
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        coalescing(2),
        &[products(), orders()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(ORDERS, &[V::T("10"), V::N]),
            insert(ORDERS, &[V::T("11"), V::N]),
            insert(ORDERS, &[V::T("12"), V::N]),
        ]),
    );
    let expected: Vec<String> = (0..out.len()).map(|n| format!("0/16B3748:{n}")).collect();
    assert_eq!(meta_ids(&out), expected);
    let mut per_channel: Vec<(String, Json)> = kinds(&out)
        .into_iter()
        .zip(ids(&out))
        .map(|((channel, _), ids)| (channel, ids.unwrap()))
        .collect();
    per_channel.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        per_channel,
        [
            ("resources/orders".to_owned(), json!([10, 11])),
            ("resources/orders".to_owned(), json!([12])),
            ("resources/products".to_owned(), json!([1])),
        ]
    );
}

#[test]
fn max_ids_per_event_of_zero_behaves_as_one() {
    let mut m = mapper(&[rule("products")], coalescing(0), &[products()]);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
        ]),
    );
    assert_eq!(ids(&out), [Some(json!([1])), Some(json!([2]))]);
}

#[test]
fn ordinals_restart_in_each_transaction() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let mut msgs = txn_at(
        0x100,
        10,
        vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            delete(PRODUCTS, b'K', &[V::T("1"), V::N]),
        ],
    );
    msgs.extend(txn_at(
        0x200,
        11,
        vec![update(PRODUCTS, None, &[V::T("2"), V::N])],
    ));
    let (steps, out) = run(&mut m, &msgs);
    assert_eq!(meta_ids(&out), ["0/100:0", "0/100:1", "0/200:0"]);
    assert_eq!(js(&out[2])["meta"]["xid"], 11);
    let committed: Vec<&Step> = steps
        .iter()
        .map(|s| s.as_ref().unwrap())
        .filter(|s| **s != Step::Continue)
        .collect();
    assert_eq!(
        committed,
        [
            &Step::Committed {
                end_lsn: Lsn(0x138)
            },
            &Step::Committed {
                end_lsn: Lsn(0x238)
            },
        ]
    );
}

#[test]
fn the_same_messages_map_to_the_same_events_on_replay() {
    let msgs = {
        let mut v = txn_at(
            0x5_0000_1000,
            77,
            (1..=8)
                .map(|i| insert(PRODUCTS, &[V::T(&i.to_string()), V::N]))
                .chain([
                    insert(ORDERS, &[V::T("9007199254740993"), V::N]),
                    update(
                        PRODUCTS,
                        Some((b'K', &[V::T("1"), V::N])),
                        &[V::T("100"), V::N],
                    ),
                    truncate(&[ORDERS]),
                    delete(PRODUCTS, b'K', &[V::T("2"), V::N]),
                ])
                .collect(),
        );
        v.extend(txn_at(
            0x5_0000_2000,
            78,
            vec![insert(ORDERS, &[V::T("1"), V::N])],
        ));
        v
    };
    let rules = [rule("products"), rule("orders")];
    let first = feed(
        &mut mapper(&rules, coalescing(3), &[products(), orders()]),
        &msgs,
    );
    let second = feed(
        &mut mapper(&rules, coalescing(3), &[products(), orders()]),
        &msgs,
    );
    assert_eq!(
        meta_ids(&first),
        [
            "5/1000:0", "5/1000:1", "5/1000:2", "5/1000:3", "5/1000:4", "5/1000:5", "5/1000:6",
            "5/2000:0"
        ]
    );
    assert_eq!(
        ids(&first),
        [
            Some(json!([1, 2, 3])),
            Some(json!([4, 5, 6])),
            Some(json!([7, 8])),
            Some(json!([9_007_199_254_740_993u64])),
            Some(json!([1, 100])),
            None,
            Some(json!([2])),
            Some(json!([1])),
        ]
    );
    let a: Vec<&[u8]> = first.iter().map(|e| &*e.json).collect();
    let b: Vec<&[u8]> = second.iter().map(|e| &*e.json).collect();
    assert_eq!(a, b);

    // The same after a reset of one mapper (a new replication session replaying the slot).
    let mut m = mapper(&rules, coalescing(3), &[products(), orders()]);
    let _ = feed(&mut m, &msgs);
    m.reset();
    m.relation(&products(), None);
    m.relation(&orders(), None);
    let third = feed(&mut m, &msgs);
    let c: Vec<&[u8]> = third.iter().map(|e| &*e.json).collect();
    assert_eq!(a, c);
}

#[test]
fn per_row_mode_gives_one_event_per_row() {
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        per_row(),
        &[products(), orders()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
            insert(ORDERS, &[V::T("5"), V::N]),
            // Repeated rows are repeated events.
            update(PRODUCTS, None, &[V::T("1"), V::N]),
            update(PRODUCTS, None, &[V::T("1"), V::N]),
            update(
                PRODUCTS,
                Some((b'K', &[V::T("2"), V::N])),
                &[V::T("3"), V::N],
            ),
            insert(PRODUCTS, &[V::N, V::N]),
            truncate(&[ORDERS]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/orders".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "updated".to_owned()),
            ("resources/products".to_owned(), "updated".to_owned()),
            ("resources/products".to_owned(), "updated".to_owned()),
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/orders".to_owned(), "deleted".to_owned()),
        ]
    );
    assert_eq!(
        ids(&out),
        [
            Some(json!([1])),
            Some(json!([2])),
            Some(json!([5])),
            Some(json!([1])),
            Some(json!([1])),
            Some(json!([2, 3])),
            None,
            None,
        ]
    );
    let expected: Vec<String> = (0..8).map(|n| format!("0/16B3748:{n}")).collect();
    assert_eq!(meta_ids(&out), expected);
}

#[test]
fn other_messages_inside_a_transaction_are_ignored() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let mut relation_bytes = vec![b'R'];
    relation_bytes.extend_from_slice(&PRODUCTS.to_be_bytes());
    relation_bytes.extend_from_slice(b"public\0products\0d");
    relation_bytes.extend_from_slice(&1u16.to_be_bytes());
    relation_bytes.push(1);
    relation_bytes.extend_from_slice(b"id\0");
    relation_bytes.extend_from_slice(&INT4.to_be_bytes());
    relation_bytes.extend_from_slice(&(-1i32).to_be_bytes());
    let (steps, out) = run(
        &mut m,
        &txn(vec![
            origin_msg(),
            type_msg(),
            logical_message(),
            relation_bytes,
            insert(PRODUCTS, &[V::T("1"), V::N]),
        ]),
    );
    assert_eq!(steps.len(), 7);
    for s in &steps[..6] {
        assert_eq!(s, &Ok(Step::Continue));
    }
    assert_eq!(ids(&out), [Some(json!([1]))]);
}

#[test]
fn a_relation_message_rebinds_an_oid() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    // ALTER TABLE products RENAME TO products_old: the same relation, still mapped, to its
    // channel; the caller hears of the rename (also in a later session).
    let mut renamed = products();
    renamed.name = "products_old".into();
    let expected = Some(Renamed {
        configured: "public.products".into(),
        now: "public.products_old".into(),
        channel: "resources/products".into(),
    });
    assert!(m.is_mapped(&renamed));
    assert_eq!(m.relation(&renamed, None), expected);
    m.reset();
    assert_eq!(m.relation(&renamed, None), expected);
    let out = feed(&mut m, &txn(vec![insert(PRODUCTS, &[V::T("1"), V::N])]));
    assert_eq!(ids(&out), [Some(json!([1]))]);
    assert_eq!(out[0].channel.as_ref(), "resources/products");
    // Another relation with an unmapped name is not mapped.
    let mut other = audit();
    other.name = "products_old2".into();
    assert!(!m.is_mapped(&other));
    // A new table takes the name (a swap): it is the mapped one now, the renamed one is not.
    let mut swapped_in = products();
    swapped_in.oid = 99;
    assert_eq!(m.relation(&swapped_in, None), None);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(PRODUCTS, &[V::T("5"), V::N]),
            insert(99, &[V::T("6"), V::N]),
        ]),
    );
    assert_eq!(ids(&out), [Some(json!([6]))]);
    assert!(!m.is_mapped(&renamed));
    // And back, with the key now a text column.
    m.relation(
        &rel(
            PRODUCTS,
            "products",
            &[("id", INT4, false), ("code", TEXT, true)],
        ),
        None,
    );
    let out = feed(
        &mut m,
        &txn(vec![insert(PRODUCTS, &[V::T("1"), V::T("c-1")])]),
    );
    assert_eq!(ids(&out), [Some(json!(["c-1"]))]);
}

/// PostgreSQL re-sends a Relation message mid-transaction after DDL (ALTER TABLE, CREATE
/// INDEX); the table's coalesced event must not split, and ids stay deduplicated.
#[test]
fn a_relation_message_mid_transaction_does_not_split_the_coalesced_event() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let mut out = Vec::new();
    for bytes in [begin(), insert(PRODUCTS, &[V::T("1"), V::N])] {
        m.handle(&decode(&bytes).unwrap(), &mut out).unwrap();
    }
    // ALTER TABLE products ADD COLUMN price numeric, inside the transaction.
    m.relation(
        &rel(
            PRODUCTS,
            "products",
            &[
                ("id", INT4, true),
                ("name", TEXT, false),
                ("price", NUMERIC, false),
            ],
        ),
        None,
    );
    for bytes in [
        insert(PRODUCTS, &[V::T("2"), V::N, V::N]),
        update(PRODUCTS, None, &[V::T("1"), V::N, V::T("3")]),
        insert(PRODUCTS, &[V::T("1"), V::N, V::N]),
        commit(),
    ] {
        m.handle(&decode(&bytes).unwrap(), &mut out).unwrap();
    }
    // Fails today: [Some([1]), Some([2, 1]), Some([1])] — `created` twice, id 1 in both.
    assert_eq!(ids(&out), [Some(json!([1, 2])), Some(json!([1]))]);
}

// ---- errors ----

#[test]
fn a_change_before_begin_is_no_transaction() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    for bytes in [
        insert(PRODUCTS, &[V::T("1"), V::N]),
        update(PRODUCTS, None, &[V::T("1"), V::N]),
        delete(PRODUCTS, b'K', &[V::T("1"), V::N]),
        truncate(&[PRODUCTS]),
    ] {
        let mut out = Vec::new();
        let err = m.handle(&decode(&bytes).unwrap(), &mut out).unwrap_err();
        assert!(
            matches!(err, MapError::NoTransaction { .. }),
            "{err:?} for {:?}",
            bytes[0] as char
        );
        assert!(out.is_empty());
    }
    // Per-row mode checks it too.
    let mut m = mapper(&[rule("products")], per_row(), &[products()]);
    let (steps, out) = run(&mut m, &[insert(PRODUCTS, &[V::T("1"), V::N])]);
    assert!(matches!(steps[0], Err(MapError::NoTransaction { .. })));
    assert!(out.is_empty());
}

#[test]
fn a_commit_without_begin_is_no_transaction() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, _) = run(&mut m, &[commit()]);
    assert_eq!(steps, [Err(MapError::NoTransaction { what: "COMMIT" })]);
}

#[test]
fn a_change_for_an_unknown_relation_is_an_error() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, _) = run(
        &mut m,
        &[
            begin(),
            insert(999, &[V::T("1")]),
            update(998, None, &[V::T("1")]),
            delete(997, b'K', &[V::T("1")]),
            truncate(&[PRODUCTS, 996]),
        ],
    );
    assert_eq!(
        steps,
        [
            Ok(Step::Continue),
            Err(MapError::UnknownRelation(999)),
            Err(MapError::UnknownRelation(998)),
            Err(MapError::UnknownRelation(997)),
            Err(MapError::UnknownRelation(996)),
        ]
    );
}

#[test]
fn reset_forgets_relations_and_the_open_transaction() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, _) = run(&mut m, &[begin(), insert(PRODUCTS, &[V::T("1"), V::N])]);
    assert!(steps.iter().all(Result::is_ok));
    assert!(m.in_transaction());
    m.reset();
    assert!(!m.in_transaction());
    let (steps, out) = run(&mut m, &[begin(), insert(PRODUCTS, &[V::T("2"), V::N])]);
    assert_eq!(
        steps,
        [Ok(Step::Continue), Err(MapError::UnknownRelation(PRODUCTS))]
    );
    assert!(out.is_empty());
}

#[test]
fn a_commit_lsn_that_does_not_match_begin_is_an_error() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, out) = run(
        &mut m,
        &[
            begin_at(0x100, COMMIT_TIME, 1),
            insert(PRODUCTS, &[V::T("1"), V::N]),
            commit_at(0x200, 0x238, COMMIT_TIME),
        ],
    );
    assert_eq!(
        steps[2],
        Err(MapError::CommitMismatch {
            begin: Lsn(0x100),
            commit: Lsn(0x200)
        })
    );
    // Nothing half-committed leaves.
    assert!(out.is_empty());
}

#[test]
fn a_nested_begin_is_an_error() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, _) = run(
        &mut m,
        &[
            begin_at(0x100, COMMIT_TIME, 41),
            begin_at(0x200, COMMIT_TIME, 42),
        ],
    );
    assert_eq!(
        steps,
        [Ok(Step::Continue), Err(MapError::NestedBegin { xid: 41 })]
    );
    assert!(m.in_transaction());
}

#[test]
fn committed_step_carries_the_end_lsn() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let (steps, out) = run(
        &mut m,
        &[
            begin_at(0x3_0000_0010, COMMIT_TIME, 5),
            commit_at(0x3_0000_0010, 0x3_0000_0048, COMMIT_TIME),
        ],
    );
    assert_eq!(
        steps,
        [
            Ok(Step::Continue),
            Ok(Step::Committed {
                end_lsn: Lsn(0x3_0000_0048)
            })
        ]
    );
    // An empty transaction produces no events.
    assert!(out.is_empty());
}

#[test]
fn error_messages_name_what_went_wrong() {
    assert_eq!(
        MapError::UnknownRelation(42).to_string(),
        "change for relation OID 42 arrived before its Relation message"
    );
    assert_eq!(
        MapError::CommitMismatch {
            begin: Lsn(0x100),
            commit: Lsn(0x1_0000_0200)
        }
        .to_string(),
        "COMMIT at 1/200 does not match BEGIN at 0/100"
    );
}

#[test]
fn a_split_keeps_the_order_of_first_appearance() {
    // orders appears first; when products fills, what orders holds leaves before it.
    let mut m = mapper(
        &[rule("products"), rule("orders")],
        coalescing(2),
        &[products(), orders()],
    );
    let out = feed(
        &mut m,
        &txn(vec![
            insert(ORDERS, &[V::T("100"), V::N]),
            insert(PRODUCTS, &[V::T("1"), V::N]),
            insert(PRODUCTS, &[V::T("2"), V::N]),
            insert(ORDERS, &[V::T("101"), V::N]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("resources/orders".to_owned(), "created".to_owned()),
            ("resources/products".to_owned(), "created".to_owned()),
            ("resources/orders".to_owned(), "created".to_owned()),
        ]
    );
    assert_eq!(
        ids(&out),
        [Some(json!([100])), Some(json!([1, 2])), Some(json!([101]))]
    );
    assert_eq!(
        meta_ids(&out),
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2"]
    );
}

#[test]
fn refetch_sends_one_star_event_per_channel_in_config_order_within_the_transaction() {
    // Two tables share a channel: it gets one event, named after the first of them.
    let mut shared = rule("orders");
    shared.channels = vec![channel::Template::parse("resources/products").unwrap()];
    let mut named = rule("audit");
    named.data_provider_name = Some("second".into());
    let mut m = mapper(
        &[rule("products"), shared, named],
        coalescing(1000),
        &[products(), orders(), audit()],
    );
    assert_eq!(
        m.refetch(&mut Vec::new()),
        Err(MapError::NoTransaction {
            what: "the slot's recreation marker"
        })
    );
    let mut out = feed(&mut m, &[begin_at(LSN, COMMIT_TIME, XID)]);
    m.refetch(&mut out).unwrap();
    out.extend(feed(&mut m, &[commit()]));
    assert_eq!(
        kinds(&out),
        [
            ("resources/products".to_owned(), "*".to_owned()),
            ("resources/audit".to_owned(), "*".to_owned()),
        ]
    );
    assert_eq!(ids(&out), [None, None], "payload is {{}}");
    assert_eq!(meta_ids(&out), ["0/16B3748:0", "0/16B3748:1"]);
    let first = js(&out[0]);
    assert_eq!(first["meta"]["table"], "products");
    assert_eq!(first["meta"]["xid"], XID);
    assert_eq!(first["date"], COMMIT_DATE, "the marker's commit time");
    assert_eq!(js(&out[1])["meta"]["dataProviderName"], "second");
    assert!(out.iter().all(|e| e.kind == EventKind::Refetch));
}

// ---- origin ----

fn origins(events: &[LiveEvent]) -> Vec<Option<String>> {
    events
        .iter()
        .map(|e| {
            let v: Json = serde_json::from_slice(&e.json).unwrap();
            v["meta"]
                .get("origin")
                .map(|o| o.as_str().unwrap().to_owned())
        })
        .collect()
}

/// `pg_logical_emit_message(true, 'pglive.origin', 'tab-7')` in a transaction: its events
/// carry `meta.origin`; other transactions', other prefixes' and non-transactional messages'
/// do not, nor does one that is too long.
#[test]
fn a_transaction_that_names_its_origin_gets_it_in_meta_origin() {
    let mut m = mapper(&[rule("products")], coalescing(1000), &[products()]);
    let row = |id: &'static str| insert(PRODUCTS, &[V::T(id), V::N]);
    let mut out = feed(
        &mut m,
        &txn(vec![
            message(true, "pglive.origin", b"tab-7"),
            row("1"),
            delete(PRODUCTS, b'K', &[V::T("2"), V::N]),
        ]),
    );
    assert_eq!(
        origins(&out),
        [Some("tab-7".to_owned()), Some("tab-7".to_owned())]
    );
    let too_long = vec![b'x'; MAX_ORIGIN_BYTES + 1];
    for changes in [
        vec![row("3")],
        vec![message(false, "pglive.origin", b"tab-7"), row("4")],
        vec![message(true, "other", b"tab-7"), row("5")],
        vec![message(true, "pglive.origin", &too_long), row("6")],
        vec![message(true, "pglive.origin", b"\xff"), row("7")],
    ] {
        out = feed(&mut m, &txn(changes));
        assert_eq!(origins(&out), [None]);
    }
}

// ---- row payloads ----

/// `docs (id int4 primary key, title text, body text, price numeric, tags text[])`, with
/// row payloads.
const DOCS: u32 = 16_600;

fn docs(identity: u8) -> Relation {
    let full = identity == b'f';
    rel_in(
        DOCS,
        "public",
        "docs",
        identity,
        &[
            ("id", INT4, true),
            ("title", TEXT, full),
            ("body", TEXT, full),
            ("price", NUMERIC, full),
            ("tags", 1009, full),
        ],
    )
}

fn docs_rule() -> TableRule {
    TableRule {
        row_payload: true,
        ..rule("docs")
    }
}

fn row_mapper(rule: TableRule, identity: u8, options: MapOptions) -> Mapper {
    let mut m = Mapper::new(&[rule], options);
    let catalogued = Catalogued {
        types: [(
            1009,
            TypeInfo {
                base: 0,
                element: TEXT,
                delimiter: b',',
                fields: Vec::new(),
            },
        )]
        .into(),
        ..pk(&["id"])
    };
    m.relation(&docs(identity), Some(&catalogued));
    m
}

#[test]
fn row_payloads_carry_the_new_row_and_what_the_identity_gives_of_the_old() {
    let mut m = row_mapper(docs_rule(), b'd', coalescing(1000));
    let row = [
        V::T("1"),
        V::T("Hi"),
        V::N,
        V::T("9.50"),
        V::T("{a,\"b c\"}"),
    ];
    let moved = [V::T("2"), V::T("Hi"), V::N, V::T("9.50"), V::T("{}")];
    let old_key = [V::T("1"), V::N, V::N, V::N, V::N];
    let out = feed(
        &mut m,
        &txn(vec![
            insert(DOCS, &row),
            insert(DOCS, &row),
            update(DOCS, Some((b'K', &old_key)), &moved),
            delete(DOCS, b'K', &[V::T("2"), V::N, V::N, V::N, V::N]),
        ]),
    );
    // One event per row change: row payloads are never coalesced.
    assert_eq!(out.len(), 4);
    let created = js(&out[0]);
    assert_eq!(
        created["payload"],
        json!({"ids": [1], "data": {"id": 1, "title": "Hi", "body": null, "price": "9.50", "tags": ["a", "b c"]}})
    );
    let updated = js(&out[2]);
    assert_eq!(updated["payload"]["ids"], json!([1, 2]));
    assert_eq!(updated["payload"]["data"]["id"], 2);
    // A key tuple gives the old key only (its other columns are filler, not NULLs).
    assert_eq!(updated["payload"]["previous"], json!({"id": 1}));
    let deleted = js(&out[3]);
    assert_eq!(
        deleted["payload"],
        json!({"ids": [2], "previous": {"id": 2}})
    );
    assert!(deleted["meta"].get("unchanged").is_none());
    // Ordinals follow the rows.
    let ordinals: Vec<String> = out.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        ordinals,
        ["0/16B3748:0", "0/16B3748:1", "0/16B3748:2", "0/16B3748:3"]
    );
}

#[test]
fn an_unchanged_toasted_value_is_left_out_and_named_or_filled_from_a_full_old_row() {
    let mut m = row_mapper(docs_rule(), b'd', coalescing(1000));
    let new = [V::T("1"), V::T("New"), V::U, V::T("1"), V::U];
    let out = feed(&mut m, &txn(vec![update(DOCS, None, &new)]));
    let v = js(&out[0]);
    assert_eq!(
        v["payload"]["data"],
        json!({"id": 1, "title": "New", "price": "1"})
    );
    assert_eq!(v["meta"]["unchanged"], json!(["body", "tags"]));
    assert!(v["payload"].get("previous").is_none());

    let mut m = row_mapper(docs_rule(), b'f', coalescing(1000));
    let old = [V::T("1"), V::T("Old"), V::T("long body"), V::T("1"), V::N];
    let out = feed(&mut m, &txn(vec![update(DOCS, Some((b'O', &old)), &new)]));
    let v = js(&out[0]);
    assert_eq!(
        v["payload"]["data"],
        json!({"id": 1, "title": "New", "body": "long body", "price": "1", "tags": null})
    );
    assert_eq!(
        v["payload"]["previous"],
        json!({"id": 1, "title": "Old", "body": "long body", "price": "1", "tags": null})
    );
    assert!(v["meta"].get("unchanged").is_none(), "{v}");
}

#[test]
fn row_payloads_leave_out_excluded_columns_and_may_give_numbers_for_numeric() {
    let rule = TableRule {
        columns: Columns::Except(vec!["body".into(), "tags".into()]),
        numeric_as_number: true,
        ..docs_rule()
    };
    let mut m = row_mapper(rule, b'd', coalescing(1000));
    let row = [
        V::T("1"),
        V::T("Hi"),
        V::T("secret"),
        V::T("12345678901234567890.5"),
        V::N,
    ];
    let out = feed(&mut m, &txn(vec![insert(DOCS, &row)]));
    assert_eq!(
        text(&out[0])
            .split("\"data\":")
            .nth(1)
            .unwrap()
            .split('}')
            .next()
            .unwrap(),
        r#"{"id":1,"title":"Hi","price":12345678901234567890.5"#
    );
    let rule = TableRule {
        columns: Columns::Only(vec!["id".into()]),
        ..docs_rule()
    };
    let mut m = row_mapper(rule, b'd', coalescing(1000));
    let out = feed(&mut m, &txn(vec![insert(DOCS, &row)]));
    assert_eq!(js(&out[0])["payload"]["data"], json!({"id": 1}));
}

#[test]
fn an_event_over_max_event_bytes_goes_with_its_ids_only() {
    let options = MapOptions {
        max_event_bytes: 1024,
        ..coalescing(1000)
    };
    let mut m = row_mapper(docs_rule(), b'd', options);
    let big = "x".repeat(2000);
    let small = [V::T("1"), V::T("Hi"), V::N, V::N, V::N];
    let large = [V::T("2"), V::T(&big), V::N, V::N, V::N];
    let out = feed(
        &mut m,
        &txn(vec![insert(DOCS, &small), insert(DOCS, &large)]),
    );
    assert!(out[0].json.len() <= 1024);
    assert!(js(&out[0])["meta"].get("truncated").is_none());
    let v = js(&out[1]);
    assert!(out[1].json.len() <= 1024, "{}", out[1].json.len());
    assert_eq!(v["payload"], json!({"ids": [2]}));
    assert_eq!(v["meta"]["truncated"], true);
}

#[test]
fn a_truncate_of_a_row_payload_table_is_one_event_without_ids() {
    let mut m = row_mapper(docs_rule(), b'd', coalescing(1000));
    let out = feed(&mut m, &txn(vec![truncate(&[DOCS])]));
    assert_eq!(ids(&out), [None]);
}

#[test]
fn a_truncate_of_a_row_payload_table_keeps_its_place_among_the_row_events() {
    let mut m = row_mapper(docs_rule(), b'd', coalescing(1000));
    let row = [V::T("1"), V::T("Hi"), V::N, V::N, V::N];
    let out = feed(&mut m, &txn(vec![truncate(&[DOCS]), insert(DOCS, &row)]));
    assert_eq!(
        kinds(&out).iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
        ["deleted", "created"]
    );
    assert_eq!(js(&out[0])["payload"], json!({}));
}

// ---- channel templates ----

/// `notes (org text, id int4, body text)`, key (org, id) under DEFAULT identity.
const NOTES: u32 = 16_700;

fn notes(identity: u8) -> Relation {
    let full = identity == b'f';
    rel_in(
        NOTES,
        "public",
        "notes",
        identity,
        &[
            ("org", TEXT, true),
            ("id", INT4, true),
            ("body", TEXT, full),
        ],
    )
}

fn tenant_rule(templates: &[&str]) -> TableRule {
    TableRule {
        channels: templates
            .iter()
            .map(|t| channel::Template::parse(t).unwrap())
            .collect(),
        ..rule("notes")
    }
}

#[test]
fn a_template_routes_each_row_to_its_channel_and_coalesces_per_channel() {
    let r = tenant_rule(&["orgs/{org}/notes", "resources/notes"]);
    let mut m = mapper(&[r], coalescing(1000), &[notes(b'd')]);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(NOTES, &[V::T("a"), V::T("1"), V::N]),
            insert(NOTES, &[V::T("b.c"), V::T("2"), V::N]),
            insert(NOTES, &[V::T("a"), V::T("3"), V::N]),
            delete(NOTES, b'K', &[V::T("a"), V::T("1"), V::N]),
            insert(NOTES, &[V::N, V::T("4"), V::N]),
        ]),
    );
    let got: Vec<(String, String, Json)> = out
        .iter()
        .map(|e| {
            let v = js(e);
            (
                v["channel"].as_str().unwrap().to_owned(),
                v["type"].as_str().unwrap().to_owned(),
                v["payload"]["ids"].clone(),
            )
        })
        .collect();
    let row = |c: &str, t: &str, ids: Json| (c.to_owned(), t.to_owned(), ids);
    assert_eq!(
        got,
        [
            row("orgs/a/notes", "created", json!([["a", 1], ["a", 3]])),
            // A NULL in the key: that row's key is unknown, so the event has no ids.
            row("resources/notes", "created", Json::Null),
            row("orgs/b=2Ec/notes", "created", json!([["b.c", 2]])),
            row("orgs/a/notes", "deleted", json!([["a", 1]])),
            row("resources/notes", "deleted", json!([["a", 1]])),
            row("orgs/=/notes", "created", Json::Null),
        ]
    );
}

#[test]
fn a_row_that_moves_goes_to_both_channels_and_filler_is_never_a_value() {
    // `body` routes, but a DEFAULT identity's old key tuple has it only as filler.
    let r = tenant_rule(&["by/{body}/notes"]);
    let mut m = mapper(&[r], per_row(), &[notes(b'd')]);
    let out = feed(
        &mut m,
        &txn(vec![
            update(
                NOTES,
                Some((b'K', &[V::T("a"), V::T("1"), V::N])),
                &[V::T("a"), V::T("2"), V::T("x")],
            ),
            delete(NOTES, b'K', &[V::T("a"), V::T("2"), V::N]),
        ]),
    );
    // The update goes by its new row; the delete cannot be routed (and is counted).
    assert_eq!(kinds(&out), [("by/x/notes".into(), "updated".into())]);

    // Under FULL identity the old row has it: a moved row reaches both channels.
    let r = tenant_rule(&["by/{body}/notes"]);
    let mut m = mapper(&[r], per_row(), &[notes(b'f')]);
    let out = feed(
        &mut m,
        &txn(vec![
            update(
                NOTES,
                Some((b'O', &[V::T("a"), V::T("1"), V::T("x")])),
                &[V::T("a"), V::T("1"), V::T("y")],
            ),
            delete(NOTES, b'O', &[V::T("a"), V::T("1"), V::T("y")]),
        ]),
    );
    assert_eq!(
        kinds(&out),
        [
            ("by/y/notes".into(), "updated".into()),
            ("by/x/notes".into(), "updated".into()),
            ("by/y/notes".into(), "deleted".into()),
        ]
    );
}

#[test]
fn many_channels_in_one_transaction_leave_before_holding_unbounded_groups() {
    let r = tenant_rule(&["orgs/{org}/notes"]);
    let mut m = mapper(&[r], coalescing(1000), &[notes(b'd')]);
    let n = MAX_GROUPS + 10;
    let names: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
    let mut msgs = vec![begin()];
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        msgs.push(insert(NOTES, &[V::T(name), V::T(&i.to_string()), V::N]));
    }
    let (steps, events) = run(&mut m, &msgs);
    assert!(steps.iter().all(Result::is_ok));
    // The first MAX_GROUPS channels left when the next one came; the rest wait for COMMIT.
    assert_eq!(events.len(), MAX_GROUPS);
    assert_eq!(m.txn.as_ref().unwrap().groups.len(), 10);
    out.extend(events);
    out.extend(feed(&mut m, &[commit()]));
    let channels: Vec<String> = kinds(&out).into_iter().map(|(c, _)| c).collect();
    let expected: Vec<String> = names.iter().map(|n| format!("orgs/{n}/notes")).collect();
    assert_eq!(channels, expected, "one event per channel, in order");
}

#[test]
fn a_moved_row_gives_each_channel_only_its_side_of_the_row() {
    let r = TableRule {
        row_payload: true,
        ..tenant_rule(&["by/{body}/notes"])
    };
    let mut m = Mapper::new(&[r], coalescing(1000));
    m.relation(&notes(b'f'), Some(&pk(&["org", "id"])));
    let out = feed(
        &mut m,
        &txn(vec![update(
            NOTES,
            Some((b'O', &[V::T("a"), V::T("1"), V::T("x")])),
            &[V::T("a"), V::T("1"), V::T("y")],
        )]),
    );
    let by_channel = |c: &str| {
        out.iter()
            .map(js)
            .find(|v| v["channel"] == c)
            .unwrap_or_else(|| panic!("no event on {c}"))
    };
    // The new tenant never sees the old row, nor the old tenant the new one.
    assert_eq!(
        by_channel("by/y/notes")["payload"],
        json!({"ids": [["a", 1]], "data": {"org": "a", "id": 1, "body": "y"}})
    );
    assert_eq!(
        by_channel("by/x/notes")["payload"],
        json!({"ids": [["a", 1]], "previous": {"org": "a", "id": 1, "body": "x"}})
    );
}

#[test]
fn a_channel_too_long_or_a_truncate_of_a_template_is_counted_not_sent() {
    let r = tenant_rule(&["orgs/{org}/notes", "resources/notes"]);
    let mut m = mapper(&[r], coalescing(1000), &[notes(b'd')]);
    let long = "é".repeat(60);
    let out = feed(
        &mut m,
        &txn(vec![
            insert(NOTES, &[V::T(&long), V::T("1"), V::N]),
            truncate(&[NOTES]),
        ]),
    );
    // 60 × `=C3=A9` is 360 bytes: only the fixed channel gets the insert; the TRUNCATE too.
    assert_eq!(
        kinds(&out),
        [
            ("resources/notes".into(), "created".into()),
            ("resources/notes".into(), "deleted".into()),
        ]
    );
}
