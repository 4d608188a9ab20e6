//! Decoder tests on pgoutput bytes captured from PostgreSQL 15 with
//! `pg_logical_slot_peek_binary_changes(.., 'proto_version', '1', 'publication_names', ..)` after:
//! ```sql
//! create table cap (id int primary key, name text, n numeric);
//! create table cap2 (a int8, b text, v int, primary key (a,b));
//! create table capfull (id uuid primary key, t text); alter table capfull replica identity full;
//! insert into cap values (1,'one',1.5),(2,null,2);
//! update cap set name='uno' where id=1;
//! update cap set id=10 where id=2;
//! delete from cap where id=10;
//! insert into cap2 values (9007199254740993,'x',1);
//! insert into capfull values ('11111111-2222-3333-4444-555555555555','t');
//! update capfull set t='u';
//! delete from capfull;
//! truncate cap, cap2;
//! ```

use super::*;

const SESSION: &str = include_str!("testdata/session.hex");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn session() -> Vec<Vec<u8>> {
    SESSION.lines().map(hex).collect()
}

fn text(v: Option<Value<'_>>) -> &str {
    match v {
        Some(Value::Text(b)) => std::str::from_utf8(b).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn every_captured_message_decodes() {
    let msgs = session();
    assert_eq!(msgs.len(), 33);
    for (i, m) in msgs.iter().enumerate() {
        decode(m).unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
}

#[test]
fn begin_and_commit() {
    let msgs = session();
    let LogicalMessage::Begin(b) = decode(&msgs[0]).unwrap() else {
        panic!()
    };
    let LogicalMessage::Commit(c) = decode(&msgs[4]).unwrap() else {
        panic!()
    };
    assert_eq!(b.final_lsn, c.commit_lsn);
    assert_eq!(b.commit_time, c.commit_time);
    assert!(c.end_lsn > c.commit_lsn);
    assert_eq!(b.xid, 0x2d9);
    assert_eq!(c.flags, 0);
    assert_eq!(c.commit_lsn.to_string(), "0/1520800");
    assert_eq!(c.end_lsn.to_string(), "0/1520830");
}

#[test]
fn relation_describes_columns_and_key() {
    let msgs = session();
    let LogicalMessage::Relation(rel) = decode(&msgs[1]).unwrap() else {
        panic!()
    };
    assert_eq!(rel.namespace, "public");
    assert_eq!(rel.name, "cap");
    assert_eq!(rel.replica_identity, b'd');
    let cols: Vec<_> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.key, c.type_oid))
        .collect();
    assert_eq!(
        cols,
        [("id", true, 23), ("name", false, 25), ("n", false, 1700)]
    );

    let LogicalMessage::Relation(full) = decode(&msgs[19]).unwrap() else {
        panic!()
    };
    assert_eq!(full.replica_identity, b'f');
    assert!(
        full.columns.iter().all(|c| c.key),
        "FULL flags every column"
    );
}

#[test]
fn insert_with_null_and_values() {
    let msgs = session();
    let LogicalMessage::Insert { relation, new } = decode(&msgs[3]).unwrap() else {
        panic!()
    };
    assert_eq!(relation, 0x4000);
    assert_eq!(new.len(), 3);
    assert_eq!(text(new.get(0)), "2");
    assert_eq!(new.get(1), Some(Value::Null));
    assert_eq!(text(new.get(2)), "2");
    assert_eq!(new.get(3), None);
}

#[test]
fn key_changing_update_carries_the_old_key() {
    let msgs = session();
    let LogicalMessage::Update { old, new, .. } = decode(&msgs[9]).unwrap() else {
        panic!()
    };
    let Some(OldTuple::Key(key)) = old else {
        panic!("{old:?}")
    };
    assert_eq!(text(key.get(0)), "2");
    assert_eq!(key.get(1), Some(Value::Null), "non-key columns are filler");
    assert_eq!(text(new.get(0)), "10");

    let LogicalMessage::Update { old, .. } = decode(&msgs[6]).unwrap() else {
        panic!()
    };
    assert_eq!(old, None, "a plain update has no old tuple");
}

#[test]
fn full_identity_update_and_delete_carry_the_old_row() {
    let msgs = session();
    let LogicalMessage::Update { old, new, .. } = decode(&msgs[23]).unwrap() else {
        panic!()
    };
    let Some(OldTuple::Full(old)) = old else {
        panic!()
    };
    assert_eq!(text(old.get(1)), "t");
    assert_eq!(text(new.get(1)), "u");
    let LogicalMessage::Delete { old, .. } = decode(&msgs[26]).unwrap() else {
        panic!()
    };
    assert!(matches!(old, OldTuple::Full(_)));
    assert_eq!(
        text(old.tuple().get(0)),
        "11111111-2222-3333-4444-555555555555"
    );
}

#[test]
fn int8_text_is_kept_exact() {
    let msgs = session();
    let LogicalMessage::Insert { new, .. } = decode(&msgs[16]).unwrap() else {
        panic!()
    };
    assert_eq!(text(new.get(0)), "9007199254740993");
}

#[test]
fn truncate_lists_relations() {
    let msgs = session();
    assert_eq!(
        decode(&msgs[31]).unwrap(),
        LogicalMessage::Truncate {
            options: 0,
            relations: vec![0x4000, 0x4007]
        }
    );
}

#[test]
fn origin_type_and_message() {
    let mut origin = vec![b'O'];
    origin.extend_from_slice(&0x10u64.to_be_bytes());
    origin.extend_from_slice(b"node_a\0");
    assert_eq!(
        decode(&origin).unwrap(),
        LogicalMessage::Origin {
            commit_lsn: Lsn(0x10),
            name: "node_a"
        }
    );

    let mut ty = vec![b'Y'];
    ty.extend_from_slice(&16385u32.to_be_bytes());
    ty.extend_from_slice(b"public\0mood\0");
    assert_eq!(
        decode(&ty).unwrap(),
        LogicalMessage::Type {
            oid: 16385,
            namespace: "public",
            name: "mood"
        }
    );

    let mut m = vec![b'M', 1];
    m.extend_from_slice(&0x20u64.to_be_bytes());
    m.extend_from_slice(b"pglive\0");
    m.extend_from_slice(&3i32.to_be_bytes());
    m.extend_from_slice(b"abc");
    assert_eq!(
        decode(&m).unwrap(),
        LogicalMessage::Message {
            transactional: true,
            lsn: Lsn(0x20),
            prefix: "pglive",
            content: b"abc"
        }
    );
}

#[test]
fn relation_in_pg_catalog_has_its_name_restored() {
    let mut r = vec![b'R'];
    r.extend_from_slice(&1u32.to_be_bytes());
    r.extend_from_slice(b"\0t\0d");
    r.extend_from_slice(&0u16.to_be_bytes());
    let LogicalMessage::Relation(rel) = decode(&r).unwrap() else {
        panic!()
    };
    assert_eq!(rel.namespace, "pg_catalog");
}

#[test]
fn every_truncation_of_every_message_is_an_error_not_a_panic() {
    for m in session() {
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err(), "cut at {cut} of {m:02x?}");
        }
    }
}

#[test]
fn malformed_input_is_rejected() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag('Z')));
    let msgs = session();

    let mut trailing = msgs[0].clone();
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));

    // Insert with a bad column kind.
    let mut bad = msgs[2].clone();
    bad[8] = b'x';
    assert_eq!(decode(&bad), Err(DecodeError::UnknownColumnKind('x')));

    // Insert whose tuple marker is not 'N'.
    let mut bad = msgs[2].clone();
    bad[5] = b'K';
    assert_eq!(decode(&bad), Err(DecodeError::UnexpectedTupleMarker('K')));

    // A negative column length.
    let mut bad = msgs[2].clone();
    bad[9..13].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(
        decode(&bad),
        Err(DecodeError::NegativeLength { len: -5, .. })
    ));

    // A huge column count with no data behind it must not allocate or panic.
    let mut bad = vec![b'I', 0, 0, 0, 1, b'N', 0xff, 0xff];
    assert!(decode(&bad).is_err());
    bad = vec![b'T', 0xff, 0xff, 0xff, 0xff, 0];
    assert!(decode(&bad).is_err());

    // Invalid UTF-8 in a relation name.
    let mut r = vec![b'R'];
    r.extend_from_slice(&1u32.to_be_bytes());
    r.extend_from_slice(b"public\0\xff\xfe\0d");
    r.extend_from_slice(&0u16.to_be_bytes());
    assert!(matches!(decode(&r), Err(DecodeError::InvalidUtf8 { .. })));

    // A string with no terminator.
    let mut o = vec![b'O'];
    o.extend_from_slice(&1u64.to_be_bytes());
    o.extend_from_slice(b"abc");
    assert!(matches!(
        decode(&o),
        Err(DecodeError::UnterminatedString { .. })
    ));
}

#[test]
fn pseudo_random_bytes_never_panic() {
    // A small deterministic fuzz: mutate captured messages byte by byte (xorshift).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let msgs = session();
    for _ in 0..20_000 {
        let mut m = msgs[(next() % msgs.len() as u64) as usize].clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        if let Ok(LogicalMessage::Insert { new, .. } | LogicalMessage::Update { new, .. }) =
            decode(&m)
        {
            assert!(new.values().count() <= new.len());
        }
    }
}
