//! `upstream.reuse_idle`: server connections of logins Postgres admits
//! without asking the client anything (trust) are kept for the next client
//! with the same startup packet, reset by `DISCARD ALL`; every other login,
//! and every connection left in a transaction, gets a connection of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::time::{Duration, Instant};

use pgwarden_integration::wire::{self, Msg, Wire};
use pgwarden_integration::{connect, roles, TestEnv};
use tokio_postgres::NoTls;

async fn reusing(idle: u32, tweak: impl FnOnce(&mut pgwarden_config::Config)) -> TestEnv {
    TestEnv::start_with(|c| {
        c.upstream.reuse_idle = idle;
        tweak(c);
    })
    .await
}

/// Waits until the proxy keeps `n` connections; how many it keeps then.
async fn wait_kept(env: &TestEnv, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.handle.kept_connections() != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.handle.kept_connections()
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

/// The backend pid of a session that connects to `url` and ends (Terminate).
async fn session_pid(url: &str) -> i32 {
    pid(&connect(url).await).await
}

async fn backend_alive(env: &TestEnv, pid: i32) -> bool {
    let direct = env.direct_client().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0);
    n == 1
}

async fn wait_gone(env: &TestEnv, pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_alive(env, pid).await {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

async fn metric(env: &TestEnv, name: &str) -> f64 {
    let (_, body) = env.admin_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn params(msgs: &[Msg]) -> Vec<Msg> {
    let mut p: Vec<Msg> = msgs.iter().filter(|m| m.tag == b'S').cloned().collect();
    p.sort_by(|a, b| a.body.cmp(&b.body));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_login_gets_the_connection_its_last_client_left_reset() {
    let env = reusing(4, |_| {}).await;
    let url = env.proxy_url(roles::TRUST, "postgres");
    let first = connect(&url).await;
    let first_pid = pid(&first).await;
    first
        .batch_execute(
            "SET search_path = nowhere; SET application_name = 'changed'; \
             SET statement_timeout = '5min'; CREATE TEMP TABLE left_behind (x int); \
             PREPARE left_prepared AS SELECT 1; SELECT pg_advisory_lock(42); LISTEN somewhere; \
             SET ROLE pg_monitor",
        )
        .await
        .unwrap();
    let old_cancel = first.cancel_token();
    drop(first);
    assert_eq!(wait_kept(&env, 1).await, 1, "the connection was not kept");

    let second = connect(&url).await;
    assert_eq!(pid(&second).await, first_pid, "the kept connection was not reused");
    assert_eq!(env.handle.kept_connections(), 0);
    let row = second
        .query_one(
            "SELECT current_setting('search_path'), current_setting('application_name'), \
             current_setting('statement_timeout'), current_user::text, \
             to_regclass('pg_temp.left_behind') IS NULL, \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'left_prepared'), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_listening_channels())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "\"$user\", public");
    assert_eq!(row.get::<_, String>(1), "");
    assert_eq!(row.get::<_, String>(2), "0");
    assert_eq!(row.get::<_, String>(3), roles::TRUST, "SET ROLE survived");
    assert!(row.get::<_, bool>(4), "the temporary table survived");
    assert_eq!(row.get::<_, i64>(5), 0, "a prepared statement survived");
    assert_eq!(row.get::<_, i64>(6), 0, "an advisory lock survived");
    assert_eq!(row.get::<_, i64>(7), 0, "a LISTEN survived");
    assert_eq!(metric(&env, "pgwarden_upstream_reused_total").await, 1.0);

    // The first client's cancel key is gone with it; the second's works.
    let sleeping = second.query("SELECT pg_sleep(1)", &[]);
    let stale = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        old_cancel.cancel_query(NoTls).await
    };
    let (slept, _) = tokio::join!(sleeping, stale);
    slept.expect("the old client's cancel key cancelled the new client's statement");
    let cancel = second.cancel_token();
    let sleeping = second.query("SELECT pg_sleep(30)", &[]);
    let cancelling = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel_query(NoTls).await.unwrap();
    };
    let (slept, ()) = tokio::join!(sleeping, cancelling);
    let e = slept.expect_err("the cancel did not reach the kept connection");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_greets_its_client_as_postgres_greeted_the_first() {
    let env = reusing(4, |_| {}).await;
    let (mut first, greeting) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    first.send(&wire::query("SET application_name = 'changed'; SET DateStyle = 'SQL, DMY'")).await;
    let answers = first.until_ready(1).await;
    assert!(answers.iter().any(|m| m.tag == b'S'), "no ParameterStatus for the SETs");
    first.send(&wire::terminate()).await;
    assert!(first.until_eof().await.is_empty());
    assert_eq!(wait_kept(&env, 1).await, 1);

    let (mut second, again) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let tags = |m: &[Msg]| m.iter().map(|m| m.tag).filter(|t| *t != b'S').collect::<Vec<_>>();
    assert_eq!(tags(&again), tags(&greeting), "{again:?}");
    assert_eq!(params(&again), params(&greeting), "parameters after DISCARD ALL differ");
    let key = |m: &[Msg]| m.iter().find(|m| m.tag == b'K').unwrap().body.clone();
    assert_ne!(key(&again)[4..], key(&greeting)[4..], "a cancel secret was given twice");
    second.send(&wire::query("SELECT 1")).await;
    let rows = second.until_ready(1).await;
    assert!(rows.iter().any(|m| m.tag == b'D'), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_logins_open_transactions_and_other_startups_never_share_a_connection() {
    let env = reusing(4, |_| {}).await;
    // SCRAM: Postgres checked this client's password; the next must be checked too.
    let scram = env.proxy_url(roles::SCRAM, "postgres");
    let scram_pid = session_pid(&scram).await;
    assert!(wait_gone(&env, scram_pid).await, "the SCRAM login's backend stayed");
    let c = connect(&scram).await;
    assert_ne!(pid(&c).await, scram_pid);
    drop(c);
    // md5 too.
    let md5 = env.proxy_url(roles::MD5, "postgres");
    let md5_pid = session_pid(&md5).await;
    assert!(wait_gone(&env, md5_pid).await, "the md5 login's backend stayed");

    // A transaction left open is not handed on.
    let trust = env.proxy_url(roles::TRUST, "postgres");
    let c = connect(&trust).await;
    let open_pid = pid(&c).await;
    c.batch_execute("BEGIN; CREATE TABLE half_done (x int)").await.unwrap();
    drop(c);
    assert!(wait_gone(&env, open_pid).await, "a connection in a transaction was kept");
    assert_eq!(env.handle.kept_connections(), 0);
    let direct = env.direct_client().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 'half_done'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the abandoned transaction committed");

    // A connection is kept for its own startup packet only.
    let named = format!("{trust}&application_name=other");
    let named_pid = session_pid(&named).await;
    assert_eq!(wait_kept(&env, 1).await, 1);
    let c = connect(&trust).await;
    assert_ne!(pid(&c).await, named_pid, "another startup packet's connection was handed on");
    drop(c);
    assert_eq!(wait_kept(&env, 2).await, 2);
    let c = connect(&named).await;
    assert_eq!(pid(&c).await, named_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_that_died_expired_or_outlived_the_proxy_are_closed() {
    let mut env = reusing(2, |c| {
        c.upstream.reuse_idle_timeout = pgwarden_config::DurationValue::from_secs(1);
    })
    .await;
    let url = env.proxy_url(roles::TRUST, "postgres");

    // Terminated by Postgres while kept: the next client gets a new one.
    let dead = session_pid(&url).await;
    assert_eq!(wait_kept(&env, 1).await, 1);
    let direct = env.direct_client().await;
    direct.execute("SELECT pg_terminate_backend($1)", &[&dead]).await.unwrap();
    assert!(wait_gone(&env, dead).await);
    let c = connect(&url).await;
    assert_ne!(pid(&c).await, dead);
    c.query_one("SELECT 1", &[]).await.unwrap();

    // Unused for reuse_idle_timeout: closed, its backend gone.
    let idle = pid(&c).await;
    drop(c);
    assert_eq!(wait_kept(&env, 1).await, 1);
    assert!(wait_gone(&env, idle).await, "an expired connection stayed");
    assert_eq!(env.handle.kept_connections(), 0);

    // At most reuse_idle are kept; shutdown closes them.
    let clients = [connect(&url).await, connect(&url).await, connect(&url).await];
    let mut pids = vec![];
    for c in &clients {
        pids.push(pid(c).await);
    }
    drop(clients);
    assert_eq!(wait_kept(&env, 2).await, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.handle.kept_connections(), 2, "more than reuse_idle kept");
    env.shutdown().await.unwrap();
    for p in pids {
        assert!(wait_gone(&env, p).await, "backend {p} outlived the proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_idle_every_client_gets_its_own_connection() {
    let env = reusing(0, |_| {}).await;
    let url = env.proxy_url(roles::TRUST, "postgres");
    let first = session_pid(&url).await;
    assert!(wait_gone(&env, first).await);
    let c = connect(&url).await;
    assert_ne!(pid(&c).await, first);
    assert_eq!(env.handle.kept_connections(), 0);
    assert_eq!(metric(&env, "pgwarden_upstream_reused_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_serves_the_encryption_pipeline_as_a_new_one() {
    use pgwarden_integration::{copy_out, encrypted};
    let (pg, mut config, _dir) = encrypted::prepare(
        "CREATE TABLE people (id int PRIMARY KEY, ssn bytea); GRANT ALL ON people TO PUBLIC;",
        "[[columns]]\nname = \"public.people.ssn\"\ntype = \"text\"\nmode = \"deterministic\"\n\
         key = \"pii\"\n\n[access]\ndefault = \"full\"\n",
    )
    .await;
    encrypted::init(&pg, &config).await;
    config.upstream.reuse_idle = 2;
    let env = TestEnv::start_on(pg, config).await;
    let url = env.proxy_url(roles::TRUST, "postgres");

    let first = connect(&url).await;
    let first_pid = pid(&first).await;
    let insert = first.prepare("INSERT INTO people (id, ssn) VALUES ($1, $2)").await.unwrap();
    first.execute(&insert, &[&1i32, &"123-45-6789"]).await.unwrap();
    let copied = copy_out(&first, "COPY people TO STDOUT").await;
    assert_eq!(copied, b"1\t123-45-6789\n");
    drop(first);
    assert_eq!(wait_kept(&env, 1).await, 1);

    let second = connect(&url).await;
    assert_eq!(pid(&second).await, first_pid, "not reused");
    let insert = second.prepare("INSERT INTO people (id, ssn) VALUES ($1, $2)").await.unwrap();
    second.execute(&insert, &[&2i32, &"987-65-4321"]).await.unwrap();
    let rows =
        second.query("SELECT id, ssn FROM people WHERE ssn = $1", &[&"987-65-4321"]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "987-65-4321");
    assert_eq!(
        copy_out(&second, "COPY people TO STDOUT").await,
        b"1\t123-45-6789\n2\t987-65-4321\n"
    );
    // Postgres holds envelopes only.
    let direct = env.direct_client().await;
    let stored: Vec<u8> =
        direct.query_one("SELECT ssn FROM people WHERE id = 2", &[]).await.unwrap().get(0);
    assert!(stored.starts_with(b"PW"), "{stored:?}");
}

/// The (pid, secret) of a greeting's BackendKeyData.
fn key_data(greeting: &[Msg]) -> [u8; 8] {
    let k = greeting.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    k.body[..8].try_into().unwrap()
}

/// Sends a CancelRequest with `key` to the proxy.
async fn cancel_with(addr: std::net::SocketAddr, key: [u8; 8]) {
    use tokio::io::AsyncWriteExt;
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(&key);
    if let Ok(mut c) = tokio::net::TcpStream::connect(addr).await {
        let _ = c.write_all(&packet).await;
        let _ = c.shutdown().await;
    }
}

/// A client that leaves keeps sending CancelRequests with its key while the
/// next client gets its connection: none reaches the next client's
/// statements, and the next client is told its backend's own pid. (The
/// audit log makes a session's end slower, which is when a key used to
/// outlive its session's hold on the connection: 31 of 100 statements were
/// cancelled then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_clients_cancel_key_is_dead_before_its_connection_serves_the_next() {
    const KEY: &str = "audit-test-key-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    std::fs::write(&key, KEY).unwrap();
    let env = reusing(2, |c| {
        c.audit.sinks = vec![pgwarden_config::AuditSink::File];
        c.audit.file = dir.path().join("audit.jsonl").display().to_string();
        c.audit.key = Some(pgwarden_config::Secret::File(key.display().to_string()));
    })
    .await;
    let addr = env.proxy_addr;
    let (mut cancelled, mut wrong_pid) = (0, 0);
    for _ in 0..40 {
        let (mut leaving, greeting) = Wire::startup(addr, roles::TRUST, "postgres").await;
        let old = key_data(&greeting);
        leaving.send(&wire::terminate()).await;
        let stale = tokio::spawn(async move {
            for _ in 0..30 {
                cancel_with(addr, old).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let (mut next, greeting) = Wire::startup(addr, roles::TRUST, "postgres").await;
        let told = i32::from_be_bytes(key_data(&greeting)[..4].try_into().unwrap());
        next.send(&wire::query("SELECT pg_backend_pid(), pg_sleep(0.05)")).await;
        let answers = next.until_ready(1).await;
        if answers.iter().any(|m| m.sqlstate().as_deref() == Some("57014")) {
            cancelled += 1;
        } else {
            let row = answers.iter().find(|m| m.tag == b'D').expect("a row");
            let len = i32::from_be_bytes(row.body[2..6].try_into().unwrap()) as usize;
            let real: i32 = std::str::from_utf8(&row.body[6..6 + len]).unwrap().parse().unwrap();
            wrong_pid += i32::from(real != told);
        }
        next.send(&wire::terminate()).await;
        stale.await.unwrap();
    }
    assert_eq!(cancelled, 0, "statements cancelled by the previous client's key");
    assert_eq!(wrong_pid, 0, "clients told another pid than their backend's");
    assert!(metric(&env, "pgwarden_upstream_reused_total").await >= 30.0);
}

/// Postgres answers a startup packet asking for protocol options it does
/// not know with NegotiateProtocolVersion; a kept connection's next client
/// (same packet) is told the same, before AuthenticationOk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_repeats_postgres_protocol_negotiation() {
    let env = reusing(2, |_| {}).await;
    let packet = wire::startup(&[
        ("user", roles::TRUST),
        ("database", "postgres"),
        ("_pq_.pgwarden_test", "1"),
    ]);
    let mut greetings = vec![];
    for _ in 0..2 {
        let mut w = Wire::connect(env.proxy_addr).await;
        w.send(&packet).await;
        greetings.push(w.until_ready(1).await);
        w.send(&wire::terminate()).await;
        assert!(w.until_eof().await.is_empty());
        assert_eq!(wait_kept(&env, 1).await, 1);
    }
    assert_eq!(metric(&env, "pgwarden_upstream_reused_total").await, 1.0);
    for g in &greetings {
        assert_eq!(g.first().map(|m| m.tag), Some(b'v'), "{g:?}");
    }
    assert_eq!(greetings[0][0].body, greetings[1][0].body);
}
