//! Connection policy, decided before Postgres is contacted: `[[network]]`
//! address rules and hours per role, per-role connection caps, and the
//! failed-login lockout.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::net::SocketAddr;
use std::time::Duration;

use pgwarden_config::{parse_net, NetworkRule};
use pgwarden_integration::wire::{self, Msg, Wire};
use pgwarden_integration::{roles, TestEnv, PASSWORD};
use tokio::net::TcpSocket;

/// Starts up as `user` from the local address `from`; the messages until the
/// server closes or is ready.
async fn startup_from(proxy: SocketAddr, from: &str, user: &str) -> Vec<Msg> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let mut w = Wire::from_stream(stream);
    w.send(&wire::startup(&[("user", user), ("database", "postgres")])).await;
    // Up to the first ReadyForQuery, ErrorResponse or password request.
    let mut msgs = Vec::new();
    while let Some(m) = w.recv().await {
        let done =
            matches!(m.tag, b'Z' | b'E' | b'R') && !(m.tag == b'R' && m.body == [0, 0, 0, 0]);
        msgs.push(m);
        if done {
            break;
        }
    }
    msgs
}

fn last_error(msgs: &[Msg]) -> (String, String) {
    let e = msgs.iter().rev().find(|m| m.tag == b'E').expect("no ErrorResponse");
    (e.sqlstate().unwrap(), e.field(b'M').unwrap())
}

async fn upstream_logins(env: &TestEnv, user: &str) -> i64 {
    let c = env.direct_client().await;
    c.query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rules_allow_and_deny_by_client_address_per_role() {
    let env = TestEnv::start_with(|c| {
        c.network.push(NetworkRule {
            roles: vec![roles::TRUST.into()],
            allow: vec!["127.0.0.1/32".into()],
            ..NetworkRule::default()
        });
        c.network.push(NetworkRule { deny: vec!["127.0.0.3".into()], ..NetworkRule::default() });
    })
    .await;
    assert!(parse_net("127.0.0.3").is_ok());
    let ok = startup_from(env.proxy_addr, "127.0.0.1", roles::TRUST).await;
    assert_eq!(ok.last().unwrap().tag, b'Z', "allowed address refused");

    let refused = startup_from(env.proxy_addr, "127.0.0.2", roles::TRUST).await;
    let (code, msg) = last_error(&refused);
    assert_eq!(code, "28000");
    assert!(
        msg.contains("may not connect from this address") && msg.contains("network[0]"),
        "{msg}"
    );

    // The same address for a role the first rule does not name is fine...
    let other = startup_from(env.proxy_addr, "127.0.0.2", roles::SUPERUSER).await;
    assert!(other.iter().any(|m| m.tag == b'R'), "role without a rule was refused");
    // ...but the deny rule for every role holds.
    let (code, _) = last_error(&startup_from(env.proxy_addr, "127.0.0.3", roles::SUPERUSER).await);
    assert_eq!(code, "28000");
    let (_, metrics) = env.admin_get("/metrics").await;
    assert!(metrics.contains("pgwarden_denied_total{reason=\"network\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_window_that_excludes_now_refuses_the_role() {
    let now_hour =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            / 3600)
            % 24;
    let (from, to) = ((now_hour + 2) % 24, (now_hour + 3) % 24);
    let hours = format!("{from:02}:00-{to:02}:00 UTC");
    let rule_hours = hours.clone();
    let env = TestEnv::start_with(move |c| {
        c.network.push(NetworkRule {
            roles: vec![roles::TRUST.into()],
            hours: rule_hours,
            ..NetworkRule::default()
        });
    })
    .await;
    let (code, msg) = last_error(&startup_from(env.proxy_addr, "127.0.0.1", roles::TRUST).await);
    assert_eq!(code, "28000");
    assert!(msg.contains(&hours), "{msg}");
    assert_eq!(upstream_logins(&env, roles::TRUST).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_capped_at_max_connections_per_user() {
    let env = TestEnv::start_with(|c| c.limits.max_connections_per_user = 2).await;
    let url = env.proxy_url(roles::SCRAM, "postgres");
    let a = pgwarden_integration::connect(&url).await;
    let _b = pgwarden_integration::connect(&url).await;
    let e = pgwarden_integration::connect_err(&url).await;
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e:?}");
    // Another role is not affected, and a closed session frees its slot.
    pgwarden_integration::connect(&env.proxy_url(roles::MD5, "postgres")).await;
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match pgwarden_integration::try_connect(&url).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never freed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_lock_the_role_out_from_that_address_for_a_while() {
    let env = TestEnv::start_with(|c| {
        c.limits.max_failed_logins = 3;
        c.limits.lockout = pgwarden_config::DurationValue::parse("2s");
    })
    .await;
    let port = env.proxy_addr.port();
    let url = |pw: &str| {
        format!("postgresql://{}:{pw}@127.0.0.1:{port}/postgres?sslmode=disable", roles::SCRAM)
    };
    // A success in between resets the count.
    for _ in 0..2 {
        let e = pgwarden_integration::connect_err(&url("wrong")).await;
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"));
    }
    pgwarden_integration::connect(&url(PASSWORD)).await;
    for _ in 0..3 {
        let e = pgwarden_integration::connect_err(&url("wrong")).await;
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"));
    }
    // Locked: even the right password is refused, without asking Postgres.
    let e = pgwarden_integration::connect_err(&url(PASSWORD)).await;
    assert_eq!(e.code().map(|c| c.code()), Some("28000"), "{e:?}");
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("too many failed logins"), "{e:?}");
    let (_, metrics) = env.admin_get("/metrics").await;
    assert!(metrics.contains("\npgwarden_lockouts_active 1\n"), "{metrics}");
    // Other roles are not locked.
    pgwarden_integration::connect(&env.proxy_url(roles::MD5, "postgres")).await;
    // And the lockout ends.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pgwarden_integration::connect(&url(PASSWORD)).await;
    let (_, metrics) = env.admin_get("/metrics").await;
    assert!(metrics.contains("pgwarden_denied_total{reason=\"lockout\"} 1"), "{metrics}");
    assert!(metrics.contains("\npgwarden_lockouts_active 0\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rules_match_ipv6_clients() {
    let env = TestEnv::start_with(|c| {
        c.listen.address = "[::1]:0".into();
        c.network.push(NetworkRule {
            roles: vec![roles::TRUST.into()],
            allow: vec!["::1/128".into()],
            ..NetworkRule::default()
        });
        c.network.push(NetworkRule {
            roles: vec![roles::SUPERUSER.into()],
            deny: vec!["::1".into()],
            ..NetworkRule::default()
        });
    })
    .await;
    assert!(env.proxy_addr.is_ipv6());
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    w.send(&wire::query("SELECT 1")).await;
    assert!(w.until_ready(1).await.iter().any(|m| m.tag == b'D'));

    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&wire::startup(&[("user", roles::SUPERUSER), ("database", "postgres")])).await;
    let (code, _) = last_error(&w.until_eof().await);
    assert_eq!(code, "28000");
}

/// Sends `sql` until it is answered with rows (the bucket refilled), at most
/// a minute: a hang guard, not a measured time.
async fn until_served(w: &mut Wire, sql: &str) -> Vec<Msg> {
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        w.send(&wire::query(sql)).await;
        let msgs = w.until_ready(1).await;
        if msgs.iter().any(|m| m.tag == b'D') {
            return msgs;
        }
    }
    panic!("{sql} still refused after a minute");
}

fn rate_limited_total(env: &TestEnv) -> u64 {
    let text = String::from_utf8(env.handle.metrics().encode()).unwrap();
    let line = text.lines().find(|l| l.starts_with("pgwarden_rate_limited_total ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_roles_rate_get_53400_and_the_session_stays_usable() {
    let env = TestEnv::start_with(|c| c.limits.queries_per_second_per_user = 1).await;
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let (mut other, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    // Three queries in one write: the clock does not move within one batch,
    // so the burst of one lets exactly the first through.
    let mut three = wire::query("SELECT 'first'");
    three.extend(wire::query("SELECT 'second'"));
    three.extend(wire::query("SELECT 'third'"));
    w.send(&three).await;
    let msgs = w.until_ready(3).await;
    let rows = msgs.iter().filter(|m| m.tag == b'D').count();
    let errors: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!((rows, errors.len()), (1, 2), "{msgs:?}");
    for e in &errors {
        assert_eq!(e.sqlstate().as_deref(), Some("53400"), "{e}");
        let text = e.field(b'M').unwrap();
        assert!(text.contains("queries_per_second_per_user"), "{text}");
        assert_eq!(e.field(b'S').as_deref(), Some("ERROR"), "must not end the session");
    }
    assert!(msgs.iter().filter(|m| m.tag == b'Z').all(|z| z.body == b"I"), "{msgs:?}");
    assert_eq!(rate_limited_total(&env), 2);

    // The bucket is the role's: another session of it is limited too...
    other.send(&wire::query("SELECT 1")).await;
    let msgs = other.until_ready(1).await;
    assert!(msgs.iter().any(|m| m.sqlstate().as_deref() == Some("53400")), "{msgs:?}");
    // ...and once tokens refill, the first session is served again.
    let msgs = until_served(&mut w, "SELECT 'again'").await;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_statements_over_the_rate_fail_with_53400_and_later_ones_work() {
    let env = TestEnv::start_with(|c| c.limits.queries_per_second_per_user = 1).await;
    let url = env.proxy_url(roles::SCRAM, "postgres");
    // Extended protocol (psycopg binds parameters): five statements back to
    // back on a rate of one per second; then retries until one is served.
    let script = r#"
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    refused = 0
    for i in range(5):
        try:
            c.execute("SELECT %s::int", (i,)).fetchone()
        except psycopg.errors.ConfigurationLimitExceeded as e:
            refused += 1
            assert "queries_per_second_per_user" in str(e), str(e)
    for _ in range(60):
        time.sleep(1.1)
        try:
            print(refused, c.execute("SELECT %s::int", (42,)).fetchone()[0])
            break
        except psycopg.errors.ConfigurationLimitExceeded:
            pass
"#;
    let python = pgwarden_integration::python::interpreter();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).args(["-c", script, &url]).output().unwrap()
    })
    .await
    .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let (refused, answer) = text.trim().split_once(' ').unwrap();
    assert!(refused.parse::<u32>().unwrap() >= 1, "{text}");
    assert_eq!(answer, "42");
    assert!(rate_limited_total(&env) >= 1);
}
