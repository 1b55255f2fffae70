//! How sessions end: Terminate, abrupt disconnects of either side, and graceful
//! shutdown (in-process and of the real binary on SIGTERM).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::time::{Duration, Instant};

use pgwarden_integration::wire::{self, Wire};
use pgwarden_integration::{roles, ProxyProcess, TestEnv};

async fn backends_of(env: &TestEnv, user: &str) -> i64 {
    env.direct_client()
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

async fn wait_for_backends(env: &TestEnv, user: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = backends_of(env, user).await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_abrupt_client_disconnects_end_the_upstream_session() {
    let env = TestEnv::start().await;
    let (mut polite, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let (rude, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let (mut busy, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    assert_eq!(backends_of(&env, roles::TRUST).await, 3);

    polite.send(&wire::terminate()).await;
    assert!(polite.until_eof().await.is_empty());
    drop(rude);
    // Gone in the middle of a long statement: it is cancelled, not left running.
    busy.send(&wire::query("SELECT pg_sleep(60)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(busy);

    assert_eq!(wait_for_backends(&env, roles::TRUST, 0).await, 0);
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(5)).await, 0);
    assert_eq!(env.handle.registered_cancel_keys(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminating_a_backend_closes_the_client_with_its_error() {
    let env = TestEnv::start().await;
    let (mut w, startup) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let _ = startup;
    env.direct_client()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&roles::TRUST],
        )
        .await
        .unwrap();
    let msgs = w.until_eof().await;
    let last = msgs.last().expect("client got nothing before the close");
    assert_eq!(last.sqlstate().as_deref(), Some("57P01"), "{last}");
    assert!(last.field(b'M').unwrap().contains("administrator command"));
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_statement_finish_then_sends_57p01() {
    let mut env = TestEnv::start().await;
    let (mut idle, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let (mut running, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    running.send(&wire::query("SELECT pg_sleep(1), 'finished'")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let proxy_addr = env.proxy_addr;
    let stopping = tokio::spawn(async move {
        env.shutdown().await.unwrap();
        env
    });

    // The idle session is closed at once with 57P01.
    let msgs = idle.until_eof().await;
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("57P01"));
    assert!(started.elapsed() < Duration::from_millis(900), "idle session was not closed first");

    // The running one gets its result, then 57P01.
    let msgs = running.until_eof().await;
    let text: Vec<String> = msgs.iter().map(|m| m.to_string()).collect();
    assert!(text.iter().any(|m| m.contains("finished")), "statement cut short: {text:?}");
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("57P01"));

    let env = stopping.await.unwrap();
    assert_eq!(env.handle.active_connections(), 0);
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err());
    assert_eq!(wait_for_backends(&env, roles::TRUST, 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_statement_that_outlives_the_grace_period() {
    let mut env = TestEnv::start_with(|c| {
        c.listen.shutdown_grace = pgwarden_config::DurationValue::parse("500ms");
    })
    .await;
    let (mut running, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    running.send(&wire::query("SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    env.shutdown().await.unwrap();
    let msgs = running.until_eof().await;
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("57P01"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The upstream backend does not keep running the abandoned statement.
    assert_eq!(wait_for_backends(&env, roles::TRUST, 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_shuts_down_gracefully_on_sigterm() {
    let pg = tokio::task::spawn_blocking(pgwarden_integration::start_cluster).await.unwrap();
    let port = pgwarden::cluster::free_port().unwrap();
    let toml = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\nshutdown_grace = \"10s\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port()
    );
    let mut proxy =
        tokio::task::spawn_blocking(move || ProxyProcess::start(&toml, port)).await.unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    let (mut running, _) = Wire::startup(addr, roles::TRUST, "postgres").await;
    running.send(&wire::query("SELECT pg_sleep(1), 'finished'")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    let msgs = running.until_eof().await;
    let text: Vec<String> = msgs.iter().map(|m| m.to_string()).collect();
    assert!(text.iter().any(|m| m.contains("finished")), "{text:?}");
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("57P01"));
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("pgwarden did not exit after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\naddress = \"nowhere\"\nbogus = 1\n[upstream]\nport = 0\n")
        .unwrap();
    let out = std::process::Command::new(pgwarden_integration::pgwarden_binary())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["listen.address", "listen.bogus", "upstream.port"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    for example in ["pgwarden.toml", "encryption.toml", "audit.toml"] {
        let path = format!("{}/../config/examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(pgwarden_integration::pgwarden_binary())
            .args(["check-config", &path])
            .env("PGWARDEN_MASTER_KEY", "Wk1Lz3dQ0vN8sYt2cR6hJ4aX9bE5uF7gI1oP3mT8qV0=")
            .env("PGWARDEN_ADMIN_PASSWORD", "secret")
            .env("PGWARDEN_AUDIT_KEY", "0123456789abcdef0123456789abcdef-audit")
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_session_id_and_never_a_password_even_at_trace_level() {
    let pg = tokio::task::spawn_blocking(pgwarden_integration::start_cluster).await.unwrap();
    let port = pgwarden::cluster::free_port().unwrap();
    let toml =
        format!("[listen]\naddress = \"127.0.0.1:{port}\"\n\n[upstream]\nport = {}\n", pg.port());
    let mut proxy = tokio::task::spawn_blocking(move || {
        ProxyProcess::start_logging(&toml, port, &["--log-format", "json"], "trace")
    })
    .await
    .unwrap();
    // Cleartext, md5 and SCRAM logins, one wrong password, and a failing query.
    for user in [roles::PASSWORD, roles::MD5, roles::SCRAM] {
        let c =
            pgwarden_integration::connect(&pgwarden_integration::url(port, user, "postgres")).await;
        let _ = c.simple_query("SELECT 1/0").await;
    }
    let wrong = format!(
        "postgresql://{}:Hunter2-wrong@127.0.0.1:{port}/postgres?sslmode=disable",
        roles::PASSWORD
    );
    pgwarden_integration::connect_err(&wrong).await;
    proxy.signal("TERM");
    tokio::task::spawn_blocking(move || {
        proxy.wait_exit(Duration::from_secs(10)).expect("no exit");
        let log = proxy.log();
        assert!(log.lines().count() > 3, "too little logged:\n{log}");
        for line in log.lines() {
            assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
        }
        assert!(log.contains("\"name\":\"session\""), "no session span:\n{log}");
        for secret in [pgwarden_integration::PASSWORD, "Hunter2-wrong"] {
            assert!(!log.contains(secret), "a password reached the log:\n{log}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_new_sessions_keeps_restart_only_settings_and_refuses_bad_configs() {
    let env = TestEnv::start().await;
    let running = env.handle.config();

    let mut next = (*running).clone();
    next.listen.handshake_timeout = pgwarden_config::DurationValue::parse("300ms");
    next.listen.address = "127.0.0.1:1".into();
    let restart = env.handle.reload(next).unwrap();
    assert_eq!(restart, vec!["listen.address"]);
    assert_eq!(env.handle.config().listen.address, running.listen.address);

    // The new handshake timeout holds for the next connection.
    let mut silent = Wire::connect(env.proxy_addr).await;
    let started = Instant::now();
    let msgs = silent.until_eof().await;
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("08P01"));
    assert!(started.elapsed() < Duration::from_secs(5), "old 30s timeout still in force");

    let mut bad = (*env.handle.config()).clone();
    bad.listen.max_connections = 0;
    let problems = env.handle.reload(bad).unwrap_err();
    assert!(problems[0].contains("listen.max_connections"), "{problems:?}");
    assert_eq!(env.handle.config().listen.max_connections, running.listen.max_connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_keeps_running_on_an_invalid_file() {
    let pg = tokio::task::spawn_blocking(pgwarden_integration::start_cluster).await.unwrap();
    let port = pgwarden::cluster::free_port().unwrap();
    let base =
        format!("[listen]\naddress = \"127.0.0.1:{port}\"\n\n[upstream]\nport = {}\n", pg.port());
    let toml = base.clone();
    let proxy =
        tokio::task::spawn_blocking(move || ProxyProcess::start_logging(&toml, port, &[], "info"))
            .await
            .unwrap();
    let addr = ([127, 0, 0, 1], port).into();

    // idle_timeout 1s, by reload.
    std::fs::write(
        proxy.config_path(),
        base.replace("[listen]\n", "[listen]\nidle_timeout = \"1s\"\n"),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("configuration reloaded") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut idle, _) = Wire::startup(addr, roles::TRUST, "postgres").await;
    let msgs = idle.until_eof().await;
    assert_eq!(msgs.last().and_then(|m| m.sqlstate()).as_deref(), Some("57P05"), "{}", proxy.log());

    // An invalid file is refused and the proxy keeps serving.
    std::fs::write(proxy.config_path(), "[listen]\nmax_connections = 0\nbogus = 1\n").unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("reload refused") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = proxy.log();
    assert!(log.contains("listen.bogus") && log.contains("listen.max_connections"), "{log}");
    let c =
        pgwarden_integration::connect(&pgwarden_integration::url(port, roles::SCRAM, "postgres"))
            .await;
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
