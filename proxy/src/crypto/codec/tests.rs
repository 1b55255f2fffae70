//! Canonical forms per type, both wire formats, and text↔binary agreement over
//! many generated values.

use super::LogicalType::*;
use super::*;
use crate::crypto::tests::next;

mod json;
mod temporal;

fn canon(ty: LogicalType, input: &str) -> String {
    let c =
        canonicalize_text(ty, input.as_bytes()).unwrap_or_else(|e| panic!("{ty} {input:?}: {e}"));
    String::from_utf8(c.into_owned()).unwrap()
}

fn refused(ty: LogicalType, input: &[u8]) -> CodecError {
    match canonicalize_text(ty, input) {
        Ok(c) => panic!("{ty} {input:?} was accepted as {c:?}"),
        Err(e) => e,
    }
}

fn binary(ty: LogicalType, canonical: &str) -> Vec<u8> {
    let mut out = Vec::new();
    to_binary(ty, canonical.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{canonical:?}: {e}"));
    out
}

fn from_binary(ty: LogicalType, bytes: &[u8]) -> String {
    let c = canonicalize_binary(ty, bytes).unwrap_or_else(|e| panic!("{ty} {bytes:?}: {e}"));
    String::from_utf8(c.into_owned()).unwrap()
}

/// Canonical → binary → canonical, and canonical → text → canonical, are
/// identities; and the canonical form is its own canonical form.
fn assert_round_trips(ty: LogicalType, canonical: &str) {
    assert_eq!(canon(ty, canonical), canonical, "{ty}: canonical form is stable");
    assert_eq!(from_binary(ty, &binary(ty, canonical)), canonical, "{ty}: via binary");
    let mut text = Vec::new();
    to_text(ty, canonical.as_bytes(), &mut text).unwrap();
    let again = canonicalize_text(ty, &text).unwrap();
    assert_eq!(again.as_ref(), canonical.as_bytes(), "{ty}: via text");
}

#[test]
fn type_names_parse_with_postgres_spellings() {
    for ty in LogicalType::ALL {
        assert_eq!(ty.name().parse::<LogicalType>().unwrap(), ty);
        assert_eq!(ty.to_string(), ty.name());
    }
    assert_eq!("INTEGER".parse::<LogicalType>().unwrap(), Int4);
    assert_eq!("character  varying".parse::<LogicalType>().unwrap(), Varchar);
    assert_eq!("timestamp with time zone".parse::<LogicalType>().unwrap(), Timestamptz);
    assert_eq!("double precision".parse::<LogicalType>().unwrap(), Float8);
    assert!("varchar(20)".parse::<LogicalType>().is_err());
    assert_eq!(Uuid.oid(), 2950);
    assert_eq!(Jsonb.oid(), 3802);
    assert_eq!(Format::from_code(1), Some(Format::Binary));
    assert_eq!(Format::from_code(2), None);
}

#[test]
fn integers_are_canonical_decimal_whatever_form_they_arrive_in() {
    for (input, expected) in [
        ("007", "7"),
        (" 7", "7"),
        ("\t-42\n", "-42"),
        ("+7", "7"),
        ("-0", "0"),
        ("1_000_000", "1000000"),
        ("0x1F", "31"),
        ("0o17", "15"),
        ("0b101", "5"),
        ("0x_ff", "255"),
        ("-2147483648", "-2147483648"),
    ] {
        assert_eq!(canon(Int4, input), expected, "{input:?}");
    }
    assert_eq!(canon(Int2, "-32768"), "-32768");
    assert_eq!(canon(Int8, "-9223372036854775808"), "-9223372036854775808");
    for (ty, input) in [
        (Int4, "2147483648"),
        (Int2, "32768"),
        (Int8, "9223372036854775808"),
        (Int8, "99999999999999999999999999"),
    ] {
        assert!(refused(ty, input.as_bytes()).reason.contains("range"), "{input}");
    }
    for input in ["", " ", "1 2", "1_", "_1", "1__0", "0x", "12a", "1.0", "++1", "- 1", "0x1g"] {
        refused(Int4, input.as_bytes());
    }
}

#[test]
fn integers_round_trip_through_binary() {
    assert_eq!(binary(Int4, "7"), [0, 0, 0, 7]);
    assert_eq!(binary(Int2, "-1"), [0xff, 0xff]);
    assert_eq!(from_binary(Int8, &(-5i64).to_be_bytes()), "-5");
    assert!(canonicalize_binary(Int4, &[0, 0, 7]).is_err());
    assert!(canonicalize_binary(Int2, &[0, 0, 0, 7]).is_err());
    let mut state = 1u64;
    for _ in 0..2000 {
        let v = next(&mut state) as i64;
        assert_round_trips(Int8, &v.to_string());
        assert_round_trips(Int4, &(v as i32).to_string());
        assert_round_trips(Int2, &(v as i16).to_string());
        assert_eq!(canon(Int8, &format!("  {v:+}  ")), v.to_string());
    }
}

#[test]
fn booleans_accept_every_postgres_spelling() {
    for input in ["t", "true", "TRUE", "tr", "yes", "y", "on", "1", " On "] {
        assert_eq!(canon(Bool, input), "t", "{input:?}");
    }
    for input in ["f", "false", "fal", "no", "n", "off", "of", "0", "\tOFF\n"] {
        assert_eq!(canon(Bool, input), "f", "{input:?}");
    }
    for input in ["", "o", "yesx", "2", "onn", "truee", "t t"] {
        refused(Bool, input.as_bytes());
    }
    assert_round_trips(Bool, "t");
    assert_round_trips(Bool, "f");
    assert_eq!(binary(Bool, "t"), [1]);
    assert!(canonicalize_binary(Bool, &[2]).is_err());
}

#[test]
fn uuids_become_lowercase_hyphenated() {
    let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    for input in [
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
    ] {
        assert_eq!(canon(Uuid, input), canonical, "{input:?}");
    }
    for input in [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
        " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
        "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
        "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ] {
        refused(Uuid, input.as_bytes());
    }
    assert_round_trips(Uuid, canonical);
    assert_eq!(binary(Uuid, canonical)[..4], [0xa0, 0xee, 0xbc, 0x99]);
    assert!(canonicalize_binary(Uuid, &[0; 15]).is_err());
}

#[test]
fn text_is_kept_as_utf8_and_char_loses_trailing_spaces() {
    assert!(matches!(canonicalize_text(Text, "héllo ".as_bytes()).unwrap(), Cow::Borrowed(_)));
    assert_eq!(canon(Text, "héllo "), "héllo ");
    assert_eq!(canon(Varchar, "  x  "), "  x  ");
    assert_eq!(canon(Char, "ab   "), "ab");
    assert_eq!(canon(Char, "  ab"), "  ab");
    assert_eq!(canon(Char, "   "), "");
    for ty in [Text, Varchar, Char, Json] {
        refused(ty, b"\xff\xfe");
        refused(ty, b"a\0b");
    }
    for ty in [Text, Varchar, Char] {
        assert_round_trips(ty, "héllo, wörld");
    }
    assert_eq!(from_binary(Char, b"x  "), "x");
}

#[test]
fn bytea_accepts_hex_and_escape_input_and_stores_raw_bytes() {
    let raw = |input: &[u8]| canonicalize_text(Bytea, input).unwrap().into_owned();
    assert_eq!(raw(br"\x4142"), b"AB");
    assert_eq!(raw(b"\\x41 42\n"), b"AB");
    assert_eq!(raw(br"\x"), b"");
    assert_eq!(raw(br"a\\b\101\000"), b"a\\bA\0");
    assert_eq!(raw(b"plain"), b"plain");
    for input in [&br"\x414"[..], br"\xzz", br"\q", br"\400", br"\1"] {
        refused(Bytea, input);
    }
    let mut text = Vec::new();
    to_text(Bytea, b"\x00\xffAB", &mut text).unwrap();
    assert_eq!(text, br"\x00ff4142");
    assert_eq!(canonicalize_binary(Bytea, b"\x00\x01").unwrap().as_ref(), b"\x00\x01");
    let mut state = 7u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        let mut text = Vec::new();
        to_text(Bytea, &bytes, &mut text).unwrap();
        assert_eq!(canonicalize_text(Bytea, &text).unwrap().as_ref(), &bytes[..]);
        let mut bin = Vec::new();
        to_binary(Bytea, &bytes, &mut bin).unwrap();
        assert_eq!(bin, bytes);
    }
}

#[test]
fn numeric_drops_trailing_fractional_zeros_so_equal_values_match() {
    for (input, expected) in [
        ("1.50", "1.5"),
        ("1.5", "1.5"),
        ("007.100", "7.1"),
        ("-0.00", "0"),
        ("0", "0"),
        ("100", "100"),
        ("-12.340", "-12.34"),
        ("1e2", "100"),
        ("1.5E-3", "0.0015"),
        ("12.5e1", "125"),
        ("-1.25e-1", "-0.125"),
        (" +3.0 ", "3"),
        (".5", "0.5"),
        ("5.", "5"),
        ("1_000.000_1", "1000.0001"),
        ("0.000", "0"),
        ("NaN", "NaN"),
        ("nan", "NaN"),
        ("inf", "Infinity"),
        ("+Infinity", "Infinity"),
        ("-infinity", "-Infinity"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
    ] {
        assert_eq!(canon(Numeric, input), expected, "{input:?}");
    }
    for input in ["", ".", "1e", "1.2.3", "abc", "1_", "1._5", "_1", "-nan", "1e+", "0x10", "1 2"] {
        refused(Numeric, input.as_bytes());
    }
    assert!(refused(Numeric, b"1e1000000000").reason.contains("overflow"));
    assert!(refused(Numeric, b"1e200000").reason.contains("overflow"));
}

#[test]
fn numeric_binary_form_is_postgres_base_10000() {
    let words = |ws: &[u16]| ws.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
    // ndigits, weight, sign, dscale, digits...
    assert_eq!(binary(Numeric, "1.5"), words(&[2, 0, 0, 1, 1, 5000]));
    assert_eq!(binary(Numeric, "12345678.9"), words(&[3, 1, 0, 1, 1234, 5678, 9000]));
    assert_eq!(binary(Numeric, "0.0001"), words(&[1, 0xffff, 0, 4, 1]));
    assert_eq!(binary(Numeric, "10000"), words(&[1, 1, 0, 0, 1]));
    assert_eq!(binary(Numeric, "-7"), words(&[1, 0, 0x4000, 0, 7]));
    assert_eq!(binary(Numeric, "0"), words(&[0, 0, 0, 0]));
    assert_eq!(binary(Numeric, "NaN"), words(&[0, 0, 0xC000, 0]));
    // Postgres sends dscale 32 with infinities.
    assert_eq!(binary(Numeric, "-Infinity"), words(&[0, 0, 0xF000, 32]));
    assert_eq!(from_binary(Numeric, &words(&[0, 0, 0xD000, 32])), "Infinity");
    // What Postgres sends for '1.50': dscale 2.
    assert_eq!(from_binary(Numeric, &words(&[2, 0, 0, 2, 1, 5000])), "1.5");
    // Digits beyond dscale are truncated, as numeric_recv does.
    assert_eq!(from_binary(Numeric, &words(&[2, 0, 0, 0, 1, 5000])), "1");
    assert_eq!(from_binary(Numeric, &words(&[1, 0xfffe, 0x4000, 8, 12])), "-0.00000012");
    assert_eq!(from_binary(Numeric, &words(&[1, 2, 0, 0, 3])), "300000000");
    assert_eq!(from_binary(Numeric, &words(&[0, 0, 0x4000, 3])), "0");
    for bad in [
        words(&[1, 0, 0, 0]),
        words(&[1, 0, 0, 0, 10000]),
        words(&[0, 0, 0x1234, 0]),
        words(&[0, 0, 0, 0x4000]),
        vec![0, 0, 0],
    ] {
        assert!(canonicalize_binary(Numeric, &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn numeric_text_and_binary_agree_on_generated_values() {
    let mut state = 99u64;
    for _ in 0..3000 {
        let int = next(&mut state) % 10u64.pow((next(&mut state) % 19) as u32);
        let scale = (next(&mut state) % 12) as usize;
        let frac = format!("{:0width$}", next(&mut state) % 10u64.pow(scale as u32), width = scale);
        let sign = if next(&mut state).is_multiple_of(2) { "-" } else { "" };
        let input = if scale == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") };
        let canonical = canon(Numeric, &input);
        assert_round_trips(Numeric, &canonical);
        let padded = if scale == 0 { format!("{input}.000") } else { format!("{input}000") };
        assert_eq!(canon(Numeric, &padded), canonical, "{input}");
        assert_eq!(canon(Numeric, &format!("{input}e0")), canonical, "{input}");
    }
    assert_round_trips(Numeric, &"9".repeat(1000));
    assert_round_trips(Numeric, &format!("0.{}1", "0".repeat(500)));
}

#[test]
fn floats_use_postgres_shortest_output() {
    for (input, expected) in [
        ("1.5", "1.5"),
        ("0.1", "0.1"),
        ("  3.0 ", "3"),
        ("-0", "0"),
        ("-0.0e5", "0"),
        ("1e100", "1e+100"),
        ("100000000000000", "100000000000000"),
        ("1e15", "1e+15"),
        ("0.0001", "0.0001"),
        ("0.00001", "1e-05"),
        ("123456789012345678", "1.2345678901234568e+17"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("5e-324", "5e-324"),
        (".5", "0.5"),
        ("5.", "5"),
        ("-2.5E-3", "-0.0025"),
        ("NaN", "NaN"),
        ("-inf", "-Infinity"),
        ("Infinity", "Infinity"),
    ] {
        assert_eq!(canon(Float8, input), expected, "{input:?}");
    }
    for (input, expected) in [
        ("1000000", "1e+06"),
        ("100000", "100000"),
        ("0.1", "0.1"),
        ("3.4028235e38", "3.4028235e+38"),
        ("1.17549435e-38", "1.1754944e-38"),
        ("16777217", "1.6777216e+07"),
    ] {
        assert_eq!(canon(Float4, input), expected, "{input:?}");
    }
    for input in ["1e400", "1e-400", "-1e309"] {
        assert!(refused(Float8, input.as_bytes()).reason.contains("range"), "{input}");
    }
    assert!(refused(Float4, b"1e39").reason.contains("range"));
    assert!(refused(Float4, b"1e-50").reason.contains("range"));
    for input in ["", ".", "e5", "0x10", "1.5x", "1e", "1 5", "infinite", "1_0"] {
        refused(Float8, input.as_bytes());
    }
}

#[test]
fn floats_round_trip_bit_for_bit_through_text_and_binary() {
    assert_eq!(binary(Float8, "1.5"), 1.5f64.to_be_bytes());
    assert_eq!(binary(Float4, "-Infinity"), f32::NEG_INFINITY.to_be_bytes());
    assert_eq!(from_binary(Float8, &f64::NAN.to_be_bytes()), "NaN");
    assert_eq!(from_binary(Float8, &(-0.0f64).to_be_bytes()), "0");
    assert!(canonicalize_binary(Float8, &[0; 4]).is_err());
    let mut state = 3u64;
    for _ in 0..5000 {
        let bits = next(&mut state);
        let v = f64::from_bits(bits);
        if !v.is_nan() && v != 0.0 {
            let canonical = from_binary(Float8, &v.to_be_bytes());
            assert_eq!(binary(Float8, &canonical), v.to_be_bytes(), "{canonical}");
            assert_round_trips(Float8, &canonical);
            assert_eq!(canonical.parse::<f64>().unwrap(), v);
        }
        let w = f32::from_bits(bits as u32);
        if !w.is_nan() && w != 0.0 {
            let canonical = from_binary(Float4, &w.to_be_bytes());
            assert_eq!(binary(Float4, &canonical), w.to_be_bytes(), "{canonical}");
            assert_round_trips(Float4, &canonical);
        }
        let decimal = (next(&mut state) % 1_000_000) as f64 / 1000.0;
        assert_eq!(canon(Float8, &decimal.to_string()), format!("{decimal}"));
    }
    for special in ["NaN", "Infinity", "-Infinity", "0"] {
        assert_round_trips(Float8, special);
        assert_round_trips(Float4, special);
    }
}

#[test]
fn binary_values_of_a_declared_type_convert_like_a_cast() {
    use super::{canonicalize_as, Format};
    let int4 = canonicalize_as(LogicalType::Int4, Some(LogicalType::Int2), Format::Binary, &[0, 7]);
    assert_eq!(int4.unwrap().as_ref(), b"7");
    let bytes = (-123i64).to_be_bytes();
    let num =
        canonicalize_as(LogicalType::Numeric, Some(LogicalType::Int8), Format::Binary, &bytes);
    assert_eq!(num.unwrap().as_ref(), b"-123");
    // Out of the column type's range: refused like Postgres' cast.
    let bytes = 70_000i64.to_be_bytes();
    let big = canonicalize_as(LogicalType::Int2, Some(LogicalType::Int8), Format::Binary, &bytes);
    assert!(big.is_err());
    // Text reads the same whatever was declared.
    let text = canonicalize_as(LogicalType::Int4, Some(LogicalType::Int8), Format::Text, b"007");
    assert_eq!(text.unwrap().as_ref(), b"7");
}
