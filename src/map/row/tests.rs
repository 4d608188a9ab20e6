use super::*;

fn json(kind: &Kind, text: &str) -> String {
    let mut out = Vec::new();
    write_value(kind, text.as_bytes(), &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn numbers_are_literals_and_specials_strings() {
    assert_eq!(json(&Kind::Number, "9007199254740993"), "9007199254740993");
    assert_eq!(json(&Kind::Number, "-0"), "0");
    assert_eq!(json(&Kind::Number, "1e+300"), "1e+300");
    assert_eq!(json(&Kind::Number, "NaN"), "\"NaN\"");
    assert_eq!(json(&Kind::Number, "-Infinity"), "\"-Infinity\"");
    assert_eq!(
        json(&Kind::Numeric { as_number: false }, "12.50"),
        "\"12.50\""
    );
    assert_eq!(
        json(
            &Kind::Numeric { as_number: true },
            "12345678901234567890.000000000000000001"
        ),
        "12345678901234567890.000000000000000001"
    );
    assert_eq!(
        json(&Kind::Numeric { as_number: true }, "Infinity"),
        "\"Infinity\""
    );
    for bad in ["", "-", "01", "1.", ".5", "1e", "+1", "0x10", "1 "] {
        assert!(!is_json_number(bad.as_bytes()), "{bad:?}");
    }
}

#[test]
fn booleans_timestamps_and_json() {
    assert_eq!(json(&Kind::Bool, "t"), "true");
    assert_eq!(json(&Kind::Bool, "f"), "false");
    assert_eq!(
        json(&Kind::Timestamp, "2024-02-29 12:34:56.123456"),
        "\"2024-02-29T12:34:56.123456\""
    );
    assert_eq!(
        json(&Kind::TimestampTz, "2024-02-29 07:04:56.5+00"),
        "\"2024-02-29T07:04:56.5+00:00\""
    );
    assert_eq!(
        json(&Kind::TimestampTz, "2024-02-29 07:04:56+05:30"),
        "\"2024-02-29T07:04:56+05:30\""
    );
    assert_eq!(
        json(&Kind::TimestampTz, "0044-03-15 12:00:00.5+00 BC"),
        "\"0044-03-15T12:00:00.5+00:00 BC\""
    );
    assert_eq!(json(&Kind::TimestampTz, "-infinity"), "\"-infinity\"");
    assert_eq!(
        json(&Kind::Json, "{\"a\" :\n [1, 2.50],\t\"b\": \"x y\\\" z\"}"),
        "{\"a\":[1,2.50],\"b\":\"x y\\\" z\"}"
    );
    assert_eq!(json(&Kind::Text, "a\"b\nc"), "\"a\\\"b\\nc\"");
}

#[test]
fn arrays_nest_and_convert_their_elements() {
    let ints = Kind::Array(Box::new(Kind::Number), b',');
    assert_eq!(json(&ints, "{1,2,NULL}"), "[1,2,null]");
    assert_eq!(json(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(json(&ints, "[0:1]={1,2}"), "[1,2]");
    assert_eq!(json(&ints, "{}"), "[]");
    let texts = Kind::Array(Box::new(Kind::Text), b',');
    assert_eq!(
        json(&texts, r#"{"a b","c\"d",NULL,"NULL",plain}"#),
        r#"["a b","c\"d",null,"NULL","plain"]"#
    );
    let boxes = Kind::Array(Box::new(Kind::Text), b';');
    assert_eq!(
        json(&boxes, "{(1,1),(0,0);(3,3),(2,2)}"),
        r#"["(1,1),(0,0)","(3,3),(2,2)"]"#
    );
    let jsons = Kind::Array(Box::new(Kind::Json), b',');
    assert_eq!(
        json(&jsons, r#"{"{\"a\": 1}","[1, 2]"}"#),
        r#"[{"a":1},[1,2]]"#
    );
    // Not an array literal: the text, never broken JSON.
    for bad in ["{1,2", "1,2}", "{1,2}x", "{{1},2}}", "[0:1]"] {
        let out = json(&ints, bad);
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{bad:?} gave {out}"
        );
    }
}

#[test]
fn composites_are_objects_of_their_converted_fields() {
    let point = Kind::Composite(vec![
        (b"\"x\":".to_vec().into_boxed_slice(), Kind::Number),
        (b"\"label\":".to_vec().into_boxed_slice(), Kind::Text),
        (
            b"\"tags\":".to_vec().into_boxed_slice(),
            Kind::Array(Box::new(Kind::Text), b','),
        ),
    ]);
    assert_eq!(
        json(&point, r#"(1,"a ""b"" \\c",)"#),
        r#"{"x":1,"label":"a \"b\" \\c","tags":null}"#
    );
    assert_eq!(
        json(&point, r#"(,"","{x,""y z""}")"#),
        r#"{"x":null,"label":"","tags":["x","y z"]}"#
    );
    // An array of them: elements are quoted record literals.
    let points = Kind::Array(Box::new(point.clone()), b',');
    assert_eq!(
        json(&points, r#"{"(1,a,)","(2,b,)"}"#),
        r#"[{"x":1,"label":"a","tags":null},{"x":2,"label":"b","tags":null}]"#
    );
    // Not a record of three fields: its text.
    for bad in ["(1,a)", "(1,a,,)", "1,a,", "(1,\"a,)"] {
        let out = json(&point, bad);
        assert!(out.starts_with('"'), "{bad:?} gave {out}");
    }
}

#[test]
fn domains_and_arrays_of_them_follow_the_catalog() {
    let mut types = HashMap::new();
    // A domain over int8, an array of it, a domain over that domain, an enum.
    types.insert(
        20_001,
        TypeInfo {
            base: 20,
            element: 0,
            delimiter: b',',
            fields: Vec::new(),
        },
    );
    types.insert(
        20_002,
        TypeInfo {
            base: 0,
            element: 20_001,
            delimiter: b',',
            fields: Vec::new(),
        },
    );
    types.insert(
        20_003,
        TypeInfo {
            base: 20_001,
            element: 0,
            delimiter: b',',
            fields: Vec::new(),
        },
    );
    types.insert(
        20_004,
        TypeInfo {
            base: 0,
            element: 0,
            delimiter: b',',
            fields: Vec::new(),
        },
    );
    assert_eq!(kind_of(20_001, &types, false), Kind::Number);
    assert_eq!(
        kind_of(20_002, &types, false),
        Kind::Array(Box::new(Kind::Number), b',')
    );
    assert_eq!(kind_of(20_003, &types, false), Kind::Number);
    assert_eq!(kind_of(20_004, &types, false), Kind::Text);
    assert_eq!(
        kind_of(1231, &types, true),
        Kind::Array(Box::new(Kind::Numeric { as_number: true }), b',')
    );
    // A catalog that loops is cut off, not followed for ever.
    types.insert(
        20_005,
        TypeInfo {
            base: 20_005,
            element: 0,
            delimiter: b',',
            fields: Vec::new(),
        },
    );
    assert_eq!(kind_of(20_005, &types, false), Kind::Text);
}
