//! Byte-level transcripts: the same messages sent through the proxy and directly
//! to Postgres must get the same answers, message for message, except the cancel
//! key (BackendKeyData), which the proxy replaces with its own.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use pgwarden_integration::wire::{self, Msg, Wire};
use pgwarden_integration::{roles, TestEnv};

/// Runs `script` on a fresh trust session through the proxy and directly and
/// returns both transcripts (startup excluded) after `ready` ReadyForQuery.
async fn both(env: &TestEnv, script: &[Vec<u8>], ready: usize) -> (Vec<Msg>, Vec<Msg>) {
    let mut out = Vec::new();
    for addr in [env.proxy_addr, ([127, 0, 0, 1], env.pg.port()).into()] {
        let (mut w, _) = Wire::startup(addr, roles::TRUST, "postgres").await;
        w.send(&script.concat()).await;
        out.push(w.until_ready(ready).await);
    }
    let direct = out.pop().unwrap();
    (out.pop().unwrap(), direct)
}

fn show(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("\n")
}

async fn assert_same(env: &TestEnv, script: &[Vec<u8>], ready: usize) -> Vec<Msg> {
    let (via, direct) = both(env, script, ready).await;
    assert_eq!(show(&via), show(&direct));
    assert_eq!(via, direct);
    via
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_is_relayed_with_parameters_and_the_proxys_own_cancel_key() {
    let env = TestEnv::start().await;
    let params = [
        ("user", roles::TRUST),
        ("database", "postgres"),
        ("application_name", "wire-test"),
        ("options", "-c search_path=pg_catalog -c DateStyle=German"),
    ];
    let mut transcripts = Vec::new();
    for addr in [env.proxy_addr, ([127, 0, 0, 1], env.pg.port()).into()] {
        let mut w = Wire::connect(addr).await;
        w.send(&wire::startup(&params)).await;
        let mut msgs = w.until_ready(1).await;
        w.send(&wire::query("SHOW search_path; SHOW application_name")).await;
        msgs.extend(w.until_ready(1).await);
        transcripts.push(msgs);
    }
    let (via, direct) = (&transcripts[0], &transcripts[1]);
    let key = |m: &Vec<Msg>| m.iter().find(|m| m.tag == b'K').cloned().expect("BackendKeyData");
    let (kv, kd) = (key(via).body, key(direct).body);
    assert_ne!(kv[4..], kd[4..], "the upstream cancel secret leaked to the client");
    // The process id is Postgres' own, as pg_backend_pid() reports it.
    let mut w = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let pid = i32::from_be_bytes(
        w.1.iter().find(|m| m.tag == b'K').unwrap().body[..4].try_into().unwrap(),
    );
    w.0.send(&wire::query("SELECT pg_backend_pid()")).await;
    let msgs = w.0.until_ready(1).await;
    let row = msgs.iter().find(|m| m.tag == b'D').unwrap();
    assert!(String::from_utf8_lossy(&row.body).ends_with(&pid.to_string()), "{row}");
    let strip = |m: &Vec<Msg>| m.iter().filter(|m| m.tag != b'K').cloned().collect::<Vec<_>>();
    assert_eq!(show(&strip(via)), show(&strip(direct)));
    assert!(show(via).contains("DateStyle\0German"), "options not forwarded:\n{}", show(via));
    assert!(show(via).contains("wire-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_and_startup_proceeds() {
    let env = TestEnv::start().await;
    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&[0, 0, 0, 8, 4, 210, 22, 48]).await; // GSSENCRequest
    assert_eq!(w.recv_byte().await, Some(b'N'));
    w.send(&[0, 0, 0, 8, 4, 210, 22, 47]).await; // SSLRequest
    assert_eq!(w.recv_byte().await, Some(b'N'));
    w.send(&wire::startup(&[("user", roles::TRUST), ("database", "postgres")])).await;
    let msgs = w.until_ready(1).await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_query_with_an_error_in_the_middle_matches_postgres() {
    let env = TestEnv::start().await;
    let via = assert_same(
        &env,
        &[
            wire::query("SELECT 1 AS a; SELECT 1/0; SELECT 3"),
            // The error aborts the transaction; COMMIT in the same string is skipped.
            wire::query("BEGIN; SELECT 1; SELECT nope; COMMIT"),
            wire::query("ROLLBACK"),
            wire::query("SELECT 'after' AS still_usable"),
            wire::query(""),
            wire::query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$"),
        ],
        6,
    )
    .await;
    let errors: Vec<_> = via.iter().filter_map(Msg::sqlstate).collect();
    assert!(errors.contains(&"22012".to_string()), "{errors:?}");
    assert!(errors.contains(&"42703".to_string()), "{errors:?}");
    assert!(via.iter().any(|m| m.tag == b'I'), "EmptyQueryResponse missing");
    assert!(via.iter().any(|m| m.tag == b'N'), "NoticeResponse missing:\n{}", show(&via));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_status_in_ready_for_query_is_relayed() {
    let env = TestEnv::start().await;
    let via = assert_same(
        &env,
        &[wire::query("BEGIN"), wire::query("SELECT 1/0"), wire::query("ROLLBACK")],
        3,
    )
    .await;
    let states: Vec<u8> = via.iter().filter(|m| m.tag == b'Z').map(|m| m.body[0]).collect();
    assert_eq!(states, b"TEI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_protocol_with_named_and_unnamed_objects_matches_postgres() {
    let env = TestEnv::start().await;
    let script = vec![
        // Named statement, described, bound twice into named portals.
        wire::parse("s1", "SELECT $1::int + 1 AS n, $2::text AS t"),
        wire::describe(b'S', "s1"),
        wire::bind("p1", "s1", &[Some("41"), Some("x")]),
        wire::bind("p2", "s1", &[Some("1"), None]),
        wire::describe(b'P', "p1"),
        wire::execute("p1", 0),
        wire::execute("p2", 0),
        // Unnamed statement and portal, partially executed (PortalSuspended).
        wire::parse("", "SELECT g FROM generate_series(1, 5) g"),
        wire::bind("", "", &[]),
        wire::execute("", 2),
        wire::execute("", 0),
        wire::close(b'P', "p1"),
        wire::close(b'S', "s1"),
        wire::sync(),
        // A Flush before the Sync: results arrive without ReadyForQuery.
        wire::parse("s2", "SELECT 'flushed'"),
        wire::bind("", "s2", &[]),
        wire::execute("", 0),
        wire::flush(),
        wire::sync(),
    ];
    let via = assert_same(&env, &script, 2).await;
    assert!(via.iter().any(|m| m.tag == b's'), "PortalSuspended missing");
    assert_eq!(via.iter().filter(|m| m.tag == b'D').count(), 2 + 5 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_error_skips_to_sync_like_postgres() {
    let env = TestEnv::start().await;
    let script = vec![
        wire::parse("", "SELECT 1/$1::int"),
        wire::bind("", "", &[Some("0")]),
        wire::execute("", 0),
        // Skipped by the server after the error, up to the Sync.
        wire::parse("", "SELECT 'skipped'"),
        wire::bind("", "", &[]),
        wire::execute("", 0),
        wire::sync(),
        wire::parse("", "SELECT 'after sync'"),
        wire::bind("", "", &[]),
        wire::execute("", 0),
        wire::sync(),
    ];
    let via = assert_same(&env, &script, 2).await;
    let text = show(&via);
    assert!(!text.contains("skipped"), "{text}");
    assert!(text.contains("after sync"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_in_every_format_and_copy_fail_match_postgres() {
    let env = TestEnv::start().await;
    let data = |b: &[u8]| wire::msg(b'd', b);
    let script = vec![
        wire::query("CREATE TEMP TABLE t (a int, b text)"),
        wire::query("COPY t FROM STDIN"),
        data(b"1\tone\n2\ttwo\n"),
        wire::msg(b'c', &[]),
        wire::query("COPY t FROM STDIN (FORMAT csv)"),
        data(b"3,\"th,ree\"\n"),
        wire::msg(b'c', &[]),
        wire::query("COPY t FROM STDIN"),
        data(b"9\tnever\n"),
        wire::msg(b'f', b"client gave up\0"),
        wire::query("BEGIN"),
        wire::query("COPY t FROM STDIN"),
        data(b"4\tfour\n"),
        wire::msg(b'c', &[]),
        wire::query("ROLLBACK"),
        wire::query("COPY (SELECT * FROM t ORDER BY a) TO STDOUT"),
        wire::query("COPY (SELECT * FROM t ORDER BY a) TO STDOUT (FORMAT csv)"),
        wire::query("COPY (SELECT * FROM t ORDER BY a) TO STDOUT (FORMAT binary)"),
    ];
    let (via, direct) = both(&env, &script, 9).await;
    assert_eq!(via.len(), direct.len(), "{}\n---\n{}", show(&via), show(&direct));
    // Temp tables get different OIDs per session; CopyOutResponse and data must
    // still match exactly.
    assert_eq!(show(&via), show(&direct));
    let text = show(&via);
    assert!(text.contains("client gave up"), "CopyFail not relayed: {text}");
    assert!(text.contains("th,ree"));
    assert!(!text.contains("four"), "rolled-back COPY visible: {text}");
    assert!(via.iter().any(|m| m.tag == b'G'), "CopyInResponse missing");
    assert!(via.iter().any(|m| m.tag == b'H'), "CopyOutResponse missing");
}
