//! json and jsonb.

use super::super::json::MAX_DEPTH;
use super::*;

#[test]
fn jsonb_is_printed_the_way_postgres_prints_it() {
    for (input, expected) in [
        (r#"{"b":[1,2],"a":1}"#, r#"{"a": 1, "b": [1, 2]}"#),
        (r#"{"aa":1,"b":2,"a":3}"#, r#"{"a": 3, "b": 2, "aa": 1}"#),
        (r#"{"a":1,"a":2}"#, r#"{"a": 2}"#),
        (r#"{"b":1,"a":{"d":null,"c":true}}"#, r#"{"a": {"c": true, "d": null}, "b": 1}"#),
        (r#"[1e2, 1.50, -0, 0.0, 1E-2, -1.5e+1]"#, r#"[100, 1.50, 0, 0.0, 0.01, -15]"#),
        (r#""a\u0041\n\/\"""#, r#""aA\n/\"""#),
        (r#""\u00e9""#, "\"é\""),
        (r#""\u0001\u001F""#, r#""\u0001\u001f""#),
        (r#""\ud83d\ude00""#, "\"😀\""),
        ("\"\u{7f}\"", "\"\u{7f}\""),
        (" 5 ", "5"),
        ("\t\"x\"\n", "\"x\""),
        ("{}", "{}"),
        ("[ ]", "[]"),
        ("[[], {}, [[]]]", "[[], {}, [[]]]"),
        ("false", "false"),
        (r#"{"é":1,"z":2}"#, r#"{"z": 2, "é": 1}"#),
    ] {
        assert_eq!(canon(Jsonb, input), expected, "{input}");
    }
}

#[test]
fn invalid_json_is_refused_by_both_types() {
    for input in [
        "",
        "{a:1}",
        "[1,]",
        "01",
        "1.",
        ".5",
        "-",
        "tru",
        "nul",
        "\"unterminated",
        "[1] x",
        "\"raw\nnewline\"",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "[1 2]",
        r#""\x""#,
        r#""\u12""#,
        "'single'",
        "NaN",
        "Infinity",
    ] {
        refused(Jsonb, input.as_bytes());
        refused(Json, input.as_bytes());
    }
    assert!(refused(Jsonb, br#""\u0000""#).reason.contains("jsonb"));
    // json keeps its text and checks only the escape's digits, as Postgres does.
    for input in [r#""\u0000""#, r#""\ud83d""#, r#""\ude00x""#] {
        refused(Jsonb, input.as_bytes());
        assert_eq!(canon(Json, input), input);
    }
}

#[test]
fn json_keeps_its_text_exactly() {
    for input in [r#"{"b":1,  "a":2, "a": 3}"#, " [1.50, 1e2] ", r#""\u0041""#] {
        assert!(matches!(canonicalize_text(Json, input.as_bytes()).unwrap(), Cow::Borrowed(_)));
        assert_round_trips(Json, input);
    }
}

#[test]
fn jsonb_binary_form_is_a_version_byte_and_text() {
    let canonical = r#"{"a": 1, "b": [1, 2]}"#;
    let mut wire = vec![1];
    wire.extend_from_slice(br#"{"b":[1,2],"a":1}"#);
    assert_eq!(from_binary(Jsonb, &wire), canonical);
    assert_eq!(binary(Jsonb, canonical)[0], 1);
    assert_eq!(&binary(Jsonb, canonical)[1..], canonical.as_bytes());
    assert!(canonicalize_binary(Jsonb, b"\x02{}").is_err());
    assert!(canonicalize_binary(Jsonb, b"").is_err());
    assert_eq!(from_binary(Json, b"[1,2]"), "[1,2]");
    for c in [canonical, "[]", "\"x\"", "null", r#"{"a": [1.50, {"bb": "\n"}]}"#] {
        assert_round_trips(Jsonb, c);
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(canon(Jsonb, &nested(MAX_DEPTH)), nested(MAX_DEPTH));
    assert_eq!(canon(Json, &nested(MAX_DEPTH)), nested(MAX_DEPTH));
    assert!(refused(Jsonb, nested(MAX_DEPTH + 1).as_bytes()).reason.contains("deep"));
    refused(Json, "[".repeat(1_000_000).as_bytes());
    refused(Jsonb, "{\"a\":".repeat(1_000_000).as_bytes());
}

#[test]
fn jsonb_canonical_form_does_not_depend_on_key_order_or_spacing() {
    let mut state = 17u64;
    let keys = ["a", "bb", "c", "dd", "eee", "f"];
    for _ in 0..300 {
        let mut pairs: Vec<(String, String)> =
            keys.iter().map(|k| (k.to_string(), (next(&mut state) % 1000).to_string())).collect();
        let first: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        // Shuffle, respace.
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
        }
        let second: Vec<String> = pairs.iter().map(|(k, v)| format!(" \"{k}\" :\n{v} ")).collect();
        let a = canon(Jsonb, &format!("{{{}}}", first.join(",")));
        let b = canon(Jsonb, &format!("{{ {} }}", second.join(",")));
        assert_eq!(a, b);
        assert_round_trips(Jsonb, &a);
    }
}
