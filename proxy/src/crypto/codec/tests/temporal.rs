//! date, timestamp, timestamptz.

use super::*;

const USECS_PER_DAY: i64 = 86_400_000_000;

#[test]
fn dates_are_iso_with_bc_and_infinities() {
    for (input, expected) in [
        ("2024-01-31", "2024-01-31"),
        (" 2024-1-5 ", "2024-01-05"),
        ("2024-02-29", "2024-02-29"),
        ("0044-03-15 BC", "0044-03-15 BC"),
        ("044-03-15 bc", "0044-03-15 BC"),
        ("0001-01-01 AD", "0001-01-01"),
        ("2024-01-31 13:45:00", "2024-01-31"),
        ("2024-01-31T13:45:00Z", "2024-01-31"),
        ("epoch", "1970-01-01"),
        ("Infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("4714-11-24 BC", "4714-11-24 BC"),
        ("5874897-12-31", "5874897-12-31"),
        ("0005-02-29 BC", "0005-02-29 BC"),
        ("0001-02-29 BC", "0001-02-29 BC"),
    ] {
        assert_eq!(canon(Date, input), expected, "{input:?}");
    }
    for input in [
        "2023-02-29",
        "0004-02-29 BC",
        "2024-13-01",
        "2024-00-10",
        "2024-04-31",
        "0000-01-01",
        "01/31/2024",
        "12-10-11",
        "1-1-2024",
        "today",
        "2024-01-31x",
        "4714-11-23 BC",
        "5874898-01-01",
        "2024-01-31 25:00",
        "",
    ] {
        refused(Date, input.as_bytes());
    }
}

#[test]
fn date_binary_is_days_since_2000() {
    assert_eq!(binary(Date, "2000-01-01"), 0i32.to_be_bytes());
    assert_eq!(binary(Date, "1999-12-31"), (-1i32).to_be_bytes());
    assert_eq!(binary(Date, "2024-01-31"), 8796i32.to_be_bytes());
    assert_eq!(binary(Date, "4714-11-24 BC"), (-2_451_545i32).to_be_bytes());
    assert_eq!(binary(Date, "infinity"), i32::MAX.to_be_bytes());
    assert_eq!(binary(Date, "-infinity"), i32::MIN.to_be_bytes());
    assert_eq!(from_binary(Date, &i32::MAX.to_be_bytes()), "infinity");
    assert!(canonicalize_binary(Date, &(-2_451_546i32).to_be_bytes()).is_err());
    assert!(canonicalize_binary(Date, &2_145_031_949i32.to_be_bytes()).is_err());
    assert!(canonicalize_binary(Date, &[0; 8]).is_err());
    assert_eq!(from_binary(Date, &2_145_031_948i32.to_be_bytes()), "5874897-12-31");
    let mut state = 5u64;
    for _ in 0..3000 {
        let days = -2_451_545 + (next(&mut state) % 2_147_483_494) as i64;
        let canonical = from_binary(Date, &(days as i32).to_be_bytes());
        assert_eq!(binary(Date, &canonical), (days as i32).to_be_bytes(), "{canonical}");
        assert_round_trips(Date, &canonical);
    }
    for special in ["infinity", "-infinity"] {
        assert_round_trips(Date, special);
    }
}

#[test]
fn timestamps_are_iso_with_trimmed_fractions() {
    for (input, expected) in [
        ("2024-01-31 13:45:00", "2024-01-31 13:45:00"),
        ("2024-01-31T13:45:00.500", "2024-01-31 13:45:00.5"),
        ("2024-01-31 13:45", "2024-01-31 13:45:00"),
        ("2024-01-31   9:05:07.000001", "2024-01-31 09:05:07.000001"),
        ("2024-01-31", "2024-01-31 00:00:00"),
        ("2024-01-31 13:45:00+05", "2024-01-31 13:45:00"),
        ("2024-01-31 24:00:00", "2024-02-01 00:00:00"),
        ("2024-01-31 23:59:60", "2024-02-01 00:00:00"),
        ("2024-01-31 13:45:00.1234565", "2024-01-31 13:45:00.123456"),
        ("2024-01-31 13:45:00.0000015", "2024-01-31 13:45:00.000002"),
        ("2024-01-31 13:45:00.", "2024-01-31 13:45:00"),
        ("2024-01-31 13:45:00.12345649", "2024-01-31 13:45:00.123456"),
        ("2024-01-31 13:45:59.9999995", "2024-01-31 13:46:00"),
        ("0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
        ("4714-11-24 00:00:00 BC", "4714-11-24 00:00:00 BC"),
        ("294276-12-31 23:59:59.999999", "294276-12-31 23:59:59.999999"),
        ("epoch", "1970-01-01 00:00:00"),
        ("infinity", "infinity"),
    ] {
        assert_eq!(canon(Timestamp, input), expected, "{input:?}");
    }
    for input in [
        "2024-01-31 25:00:00",
        "2024-01-31 24:00:01",
        "2024-01-31 12:60:00",
        "2024-01-31 12:00:61",
        "2024-01-31 12",
        "2024-01-31 12:0",
        "2024-01-31T",
        "294277-01-01 00:00:00",
        "4714-11-23 23:59:59 BC",
        "2024-01-31 13:45:00 America/New_York",
        "now",
    ] {
        refused(Timestamp, input.as_bytes());
    }
}

#[test]
fn timestamptz_is_normalised_to_utc_and_needs_an_offset() {
    for (input, expected) in [
        ("2024-01-31 13:45:00+02", "2024-01-31 11:45:00+00"),
        ("2024-01-31T13:45:00Z", "2024-01-31 13:45:00+00"),
        ("2024-01-31 13:45:00 UTC", "2024-01-31 13:45:00+00"),
        ("2024-01-31 13:45:00 gmt", "2024-01-31 13:45:00+00"),
        ("2024-01-31 13:45:00-05:30", "2024-01-31 19:15:00+00"),
        ("2024-01-31 13:45:00+0530", "2024-01-31 08:15:00+00"),
        ("2024-01-31 13:45:00+05:30:15", "2024-01-31 08:14:45+00"),
        ("2024-01-01 00:30:00.25+01", "2023-12-31 23:30:00.25+00"),
        ("2024-01-31 13:45:00 +5", "2024-01-31 08:45:00+00"),
        ("0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
        ("-infinity", "-infinity"),
    ] {
        assert_eq!(canon(Timestamptz, input), expected, "{input:?}");
    }
    let e = refused(Timestamptz, b"2024-01-31 13:45:00");
    assert!(e.reason.contains("offset"), "{e}");
    for input in ["2024-01-31 13:45:00+16", "2024-01-31 13:45:00+05:60", "2024-01-31 13:45:00+123"]
    {
        refused(Timestamptz, input.as_bytes());
    }
}

#[test]
fn timestamp_binary_is_microseconds_since_2000() {
    assert_eq!(binary(Timestamp, "2000-01-01 00:00:00"), 0i64.to_be_bytes());
    assert_eq!(binary(Timestamptz, "2000-01-01 00:00:00.000001+00"), 1i64.to_be_bytes());
    let expected = 8796 * USECS_PER_DAY + (13 * 3600 + 45 * 60) * 1_000_000 + 500_000;
    assert_eq!(binary(Timestamp, "2024-01-31 13:45:00.5"), expected.to_be_bytes());
    assert_eq!(
        binary(Timestamp, "4714-11-24 00:00:00 BC"),
        (-211_813_488_000_000_000i64).to_be_bytes()
    );
    assert_eq!(
        binary(Timestamp, "294276-12-31 23:59:59.999999"),
        (9_223_371_331_200_000_000i64 - 1).to_be_bytes()
    );
    assert_eq!(binary(Timestamptz, "infinity"), i64::MAX.to_be_bytes());
    assert_eq!(from_binary(Timestamp, &i64::MIN.to_be_bytes()), "-infinity");
    assert!(canonicalize_binary(Timestamp, &9_223_371_331_200_000_000i64.to_be_bytes()).is_err());
    assert!(canonicalize_binary(Timestamptz, &[0; 4]).is_err());
    let mut state = 11u64;
    let span = (9_223_371_331_200_000_000i128 + 211_813_488_000_000_000) as u64;
    for _ in 0..3000 {
        let mut usecs = (-211_813_488_000_000_000i128 + i128::from(next(&mut state) % span)) as i64;
        if next(&mut state).is_multiple_of(3) {
            usecs -= usecs.rem_euclid(1_000_000);
        }
        for ty in [Timestamp, Timestamptz] {
            let canonical = from_binary(ty, &usecs.to_be_bytes());
            assert_eq!(binary(ty, &canonical), usecs.to_be_bytes(), "{canonical}");
            assert_round_trips(ty, &canonical);
        }
    }
}
