#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::{self, Chain, GENESIS};
use super::record::{Event, Record, SessionInfo, Statement};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn session() -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        id: "s1".into(),
        user: "app \"quoted\"".into(),
        database: "shop".into(),
        application: "psql\n".into(),
        client_addr: "127.0.0.1:5000".into(),
        tls: false,
        json: Default::default(),
    })
}

/// Writes `n` statement records and a shutdown seal, rotating after every
/// `per_file` records (with a rotation seal); the files, in order.
fn log(dir: &Path, n: usize, per_file: usize) -> Vec<PathBuf> {
    let mut chain = Chain::new(KEY, 0, GENESIS.into()).unwrap();
    let mut files = vec![String::new()];
    for i in 0..n {
        let mut r = Record::new(Event::Statement, Some(session()), "ok");
        r.statement = Some(Arc::new(Statement {
            text: format!("SELECT $1 -- {i} \"x\" \\"),
            fingerprint: "0123456789abcdef".into(),
            ..Default::default()
        }));
        chain.append(&r, files.last_mut().unwrap());
        if (i + 1) % per_file == 0 && i + 1 < n {
            chain.append(
                &Record::new(Event::Seal, None, "ok").reason("rotate"),
                files.last_mut().unwrap(),
            );
            files.push(String::new());
        }
    }
    chain.append(
        &Record::new(Event::Seal, None, "ok").reason("shutdown"),
        files.last_mut().unwrap(),
    );
    files
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let p = dir.join(format!("audit.jsonl.{i}"));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

fn verify(files: &[PathBuf]) -> Result<chain::Verified, String> {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    chain::verify(KEY, &paths, false, None)
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    f(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(path, out).unwrap();
}

#[test]
fn records_are_json_with_every_design_field_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 5, 100);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let first = text.lines().next().unwrap();
    for field in [
        "ts",
        "seq",
        "event",
        "category",
        "severity",
        "session",
        "user",
        "database",
        "application",
        "client_addr",
        "tls",
        "protocol",
        "statement",
        "fingerprint",
        "params",
        "tables",
        "encrypted_columns",
        "access",
        "rows",
        "duration_us",
        "outcome",
        "sqlstate",
        "threats",
        "prev",
        "mac",
    ] {
        assert!(first.contains(&format!("\"{field}\":")), "{field} missing in {first}");
    }
    assert!(first.contains(r#""user":"app \"quoted\"""#), "{first}");
    assert!(first.contains(r#""application":"psql\n""#), "{first}");
    let v = verify(&files).unwrap();
    assert_eq!((v.records, v.last_seq), (6, 6));
}

#[test]
fn rotated_files_verify_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = log(dir.path(), 10, 3);
    assert_eq!(files.len(), 4);
    files.reverse();
    assert_eq!(verify(&files).unwrap().records, 14);
}

#[test]
fn an_edited_record_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    edit(&files[1], |l| l[1] = l[1].replace("\"ok\"", "\"error\""));
    let e = verify(&files).unwrap_err();
    assert!(e.contains("audit.jsonl.1:2: record seq 6: MAC does not match"), "{e}");
}

#[test]
fn a_removed_record_fails_at_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    edit(&files[1], |l| {
        l.remove(0);
    });
    let e = verify(&files).unwrap_err();
    assert!(e.contains("record seq 6: does not follow seq 4"), "{e}");
}

#[test]
fn an_inserted_or_duplicated_record_fails() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    edit(&files[1], |l| {
        let copy = l[0].clone();
        l.insert(1, copy);
    });
    let e = verify(&files).unwrap_err();
    assert!(e.contains("audit.jsonl.1:2: record seq 5: does not follow seq 5"), "{e}");
    // A forged record, with a MAC made without the key.
    let files = log(dir.path(), 10, 3);
    edit(&files[0], |l| {
        let forged = l[0].replace("SELECT", "DELETE");
        l.insert(1, forged);
    });
    assert!(verify(&files).unwrap_err().contains("MAC does not match"));
}

#[test]
fn reordered_records_fail() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    edit(&files[0], |l| l.swap(0, 1));
    let e = verify(&files).unwrap_err();
    assert!(e.contains("audit.jsonl.0:1: record seq 2: does not follow the start"), "{e}");
}

#[test]
fn a_truncated_tail_or_a_missing_last_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    edit(&files[3], |l| {
        l.pop();
    });
    let e = verify(&files).unwrap_err();
    assert!(e.contains("without a seal"), "{e}");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(chain::verify(KEY, &paths, true, None).is_ok(), "--open accepts an unsealed end");

    let files = log(dir.path(), 10, 3);
    let e = verify(&files[..3]).unwrap_err();
    assert!(e.contains("rotation seal: the files after it are missing"), "{e}");
    // A middle file missing.
    let e = verify(&[files[0].clone(), files[2].clone(), files[3].clone()]).unwrap_err();
    assert!(e.contains("does not follow seq 4"), "{e}");
    // A first file missing.
    assert!(verify(&files[1..]).unwrap_err().contains("does not follow the start"));
    // Cut mid-record.
    let text = std::fs::read_to_string(&files[3]).unwrap();
    std::fs::write(&files[3], &text[..text.len() - 10]).unwrap();
    assert!(verify(&files).unwrap_err().contains("incomplete"));
}

#[test]
fn another_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 2, 100);
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let e = chain::verify(b"another key, another key, another", &paths, false, None).unwrap_err();
    assert!(e.contains("MAC does not match"), "{e}");
}

#[test]
fn garbage_lines_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    for text in ["{}\n", "\n", "{\"seq\":1,\"prev\":\"zz\",\"mac\":\"\"}\n", "é\n"] {
        std::fs::write(&p, text).unwrap();
        assert!(verify(std::slice::from_ref(&p)).is_err());
    }
}

#[test]
fn removed_old_files_verify_from_an_anchor_and_only_from_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = log(dir.path(), 10, 3);
    // What a verify of the first file printed before it was removed.
    let first: Vec<&Path> = vec![files[0].as_path()];
    let kept = chain::verify(KEY, &first, true, None).unwrap();
    let rest: Vec<&Path> = files[1..].iter().map(PathBuf::as_path).collect();
    let anchor = Some((kept.last_seq, kept.last_mac.as_str()));
    let v = chain::verify(KEY, &rest, false, anchor).unwrap();
    assert_eq!((v.first_seq, v.last_seq), (kept.last_seq + 1, 14));
    // Without the anchor, or with another one, the start does not follow.
    let e = chain::verify(KEY, &rest, false, None).unwrap_err();
    assert!(e.contains("does not follow the start"), "{e}");
    let other = Some((kept.last_seq, chain::GENESIS));
    let e = chain::verify(KEY, &rest, false, other).unwrap_err();
    assert!(e.contains("does not follow the anchor"), "{e}");
    // The anchor does not excuse a file missing after it.
    let gap: Vec<&Path> = files[2..].iter().map(PathBuf::as_path).collect();
    assert!(chain::verify(KEY, &gap, false, anchor).is_err());
}

#[test]
fn escape_writes_json_strings_that_parse_back_to_the_text() {
    for text in [
        "plain",
        "",
        "quote \" backslash \\ newline \n cr \r tab \t",
        "control \u{1} \u{1f} and \u{7f}",
        "line sep \u{2028} para sep \u{2029}, other e2: \u{2020} \u{20ac}",
        "héllo 日本 🙂",
    ] {
        let mut out = String::new();
        super::record::escape(text, &mut out);
        let back: String = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(back, text);
        assert!(!out.contains('\u{2028}') && !out.contains('\u{2029}'), "{out}");
        assert!(out.bytes().all(|b| b >= 0x20), "{out:?}");
    }
}

#[test]
fn timestamps_are_written_as_humantime_writes_them() {
    use std::time::{Duration, SystemTime};
    let mut secs: Vec<u64> = vec![
        0,
        59,
        86_399,
        86_400,
        951_782_399,   // 2000-02-28T23:59:59
        951_868_800,   // 2000-03-01: 2000 is a leap year
        4_107_456_000, // 2100-02-28: 2100 is not
        4_107_542_400,
        1_796_234_567,
        253_402_300_799, // 9999-12-31T23:59:59, humantime's last
    ];
    // And a spread of others, from a fixed LCG.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        secs.push(x % 253_402_300_800);
    }
    for (i, s) in secs.into_iter().enumerate() {
        let micros = (i as u32).wrapping_mul(7919) % 1_000_000;
        let ts = SystemTime::UNIX_EPOCH + Duration::new(s, micros * 1000 + 999);
        let mut out = String::new();
        super::record::write_timestamp(ts, &mut out);
        assert_eq!(out, humantime::format_rfc3339_micros(ts).to_string(), "{s}.{micros}");
    }
}
