//! Bad input, limits and timeouts: the offending client gets an ErrorResponse
//! with the documented SQLSTATE (where the protocol allows one) and a closed
//! connection; every other client keeps being served.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use pgwarden_integration::wire::{self, Msg, Wire};
use pgwarden_integration::{roles, TestEnv};

/// A session on `env` still answers queries.
async fn still_serving(env: &TestEnv) {
    let rows = env.proxy_client().await.query("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
}

/// The messages a connection gets before it is closed; the last must be an
/// ErrorResponse with `sqlstate`.
fn assert_fatal(msgs: &[Msg], sqlstate: &str) -> Msg {
    let last = msgs.last().unwrap_or_else(|| panic!("closed without an error, wanted {sqlstate}"));
    assert_eq!(last.sqlstate().as_deref(), Some(sqlstate), "{last}");
    assert_eq!(last.field(b'S').as_deref(), Some("FATAL"));
    last.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_08p01_and_a_closed_connection() {
    let env = TestEnv::start().await;
    let cases: Vec<Vec<u8>> = vec![
        // Length below the minimum.
        vec![0, 0, 0, 4],
        // Length far above Postgres' 10,000-byte startup limit.
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        // An HTTP request: "GET " read as a length.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // Protocol 3 with parameters missing their terminator.
        {
            let mut s = wire::startup(&[("user", "x")]);
            s.pop();
            let len = (s.len() as u32).to_be_bytes();
            s[..4].copy_from_slice(&len);
            s
        },
        // No user.
        wire::startup(&[("database", "postgres")]),
        // Unknown protocol version.
        vec![0, 0, 0, 8, 0, 9, 0, 0],
    ];
    for bytes in cases {
        let mut w = Wire::connect(env.proxy_addr).await;
        w.send(&bytes).await;
        let msgs = w.until_eof().await;
        let err = assert_fatal(&msgs, "08P01");
        assert!(err.field(b'M').unwrap().contains("protocol"), "{err}");
    }
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_startup_packet_closes_only_that_connection() {
    let env = TestEnv::start().await;
    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&wire::startup(&[("user", roles::TRUST)])[..10]).await;
    w.stream.shutdown().await.ok();
    let msgs = w.until_eof().await;
    assert_fatal(&msgs, "08P01");
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_startup_gets_08p01_and_the_upstream_session_ends() {
    let env = TestEnv::start().await;
    let garbage: Vec<(Vec<u8>, &str)> = vec![
        (b"\x01\x02\x03\x04\x05\x06\x07".to_vec(), "invalid frontend message type"),
        (vec![b'Q', 0, 0, 0, 2], "invalid message length"),
        (wire::msg(b'~', b"??"), "invalid frontend message type"),
    ];
    for (bytes, text) in garbage {
        let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
        // A valid query first, in the same packet: it is still answered.
        let mut packet = wire::query("SELECT 1");
        packet.extend(bytes);
        w.send(&packet).await;
        let msgs = w.until_eof().await;
        assert!(msgs.iter().any(|m| m.tag == b'D'), "the valid query before was lost");
        let err = assert_fatal(&msgs, "08P01");
        assert!(err.field(b'M').unwrap().contains(text), "{err}");
    }
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(5)).await, 0);
    let backends = env
        .direct_client()
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&roles::TRUST])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(backends, 0, "upstream sessions outlived their clients");
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_is_refused_before_it_is_read() {
    let env = TestEnv::start_with(|c| c.listen.max_message_bytes = 64 * 1024).await;
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    // Claims 100 MB and sends only the header: refused from the header alone.
    w.send(&[b'Q', 0x06, 0x00, 0x00, 0x00]).await;
    let err = assert_fatal(&w.until_eof().await, "08P01");
    assert!(err.field(b'M').unwrap().contains("listen.max_message_bytes"), "{err}");

    // Just under the limit is fine.
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let sql = format!("SELECT length('{}')", "x".repeat(60 * 1024));
    w.send(&wire::query(&sql)).await;
    let msgs = w.until_ready(1).await;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{:?}", msgs);
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_message_leaves_nothing_behind() {
    let env = TestEnv::start().await;
    for _ in 0..5 {
        let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
        // Header promises 1000 bytes; 3 arrive; the client disappears.
        w.send(&[b'Q', 0, 0, 3, 232, b'S', b'E', b'L']).await;
        drop(w);
    }
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(5)).await, 0);
    assert_eq!(env.handle.registered_cancel_keys(), 0);
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_gives_08006_without_its_address() {
    let closed_port = pgwarden::cluster::free_port().unwrap();
    let env = TestEnv::start_with(|c| c.upstream.port = closed_port).await;
    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&wire::startup(&[("user", roles::TRUST), ("database", "postgres")])).await;
    let err = assert_fatal(&w.until_eof().await, "08006");
    let text = err.to_string();
    assert!(!text.contains(&closed_port.to_string()), "upstream port leaked: {text}");
    assert!(!text.contains("127.0.0.1"), "upstream address leaked: {text}");

    // And through a real client.
    let e = pgwarden_integration::connect_err(&env.proxy_url(roles::TRUST, "postgres")).await;
    assert_eq!(e.code().map(|c| c.code()), Some("08006"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let env = TestEnv::start_with(|c| {
        c.listen.handshake_timeout = pgwarden_config::DurationValue::parse("300ms");
    })
    .await;
    let mut w = Wire::connect(env.proxy_addr).await;
    let err = assert_fatal(&w.until_eof().await, "08P01");
    assert!(err.field(b'M').unwrap().contains("handshake_timeout"));
    // A trust login: a SCRAM exchange may not fit in 300ms on a busy machine.
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    w.send(&wire::query("SELECT 40 + 2")).await;
    assert!(w.until_ready(1).await.iter().any(|m| m.tag == b'D'), "not serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_after_idle_timeout_but_a_long_statement_is_not() {
    let env = TestEnv::start_with(|c| {
        c.listen.idle_timeout = pgwarden_config::DurationValue::parse("1s")
    })
    .await;
    let busy = env.proxy_client().await;
    // A statement longer than the idle timeout is not idleness.
    busy.simple_query("SELECT pg_sleep(1.5)").await.unwrap();

    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let err = assert_fatal(&w.until_eof().await, "57P05");
    assert!(err.field(b'M').unwrap().contains("idle_timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_53300_and_the_cap_frees_up() {
    let env = TestEnv::start_with(|c| c.listen.max_connections = 2).await;
    let a = env.proxy_client().await;
    let b = env.proxy_client().await;
    let e = pgwarden_integration::connect_err(&env.proxy_url(roles::SCRAM, "postgres")).await;
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e:?}");
    drop(a);
    drop(b);
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(5)).await, 0);
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_by_postgres_through_the_proxy_for_each_method() {
    let env = TestEnv::start().await;
    for user in [roles::SCRAM, roles::MD5, roles::PASSWORD] {
        let url = format!(
            "postgresql://{user}:wrong@127.0.0.1:{}/postgres?sslmode=disable",
            env.proxy_addr.port()
        );
        let e = pgwarden_integration::connect_err(&url).await;
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{user}: {e:?}");
    }
    still_serving(&env).await;
}
