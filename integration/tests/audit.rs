//! The audit log end to end: exactly the expected records per session, in
//! seq order, from concurrent clients through both protocols; a chain that
//! `pgwarden audit verify` accepts whole and refuses when tampered with; and
//! no plaintext of an encrypted column in any record.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgwarden_config::{AuditSink, Config, Secret, StatementLiterals};
use pgwarden_integration::{connect, encrypted, url, TestEnv, PASSWORD};
use serde_json::Value;

const KEY: &str = "audit-test-key-0123456789abcdef0123456789";

/// Turns the file sink on, into `dir`, rotating small files.
fn audit_to(config: &mut Config, dir: &Path) {
    let key = dir.join("audit.key");
    std::fs::write(&key, KEY).unwrap();
    config.audit.sinks = vec![AuditSink::File];
    config.audit.file = dir.join("audit.jsonl").display().to_string();
    config.audit.rotate_bytes = 16 * 1024;
    config.audit.key = Some(Secret::File(key.display().to_string()));
}

/// Every audit file in `dir`, and every record in them.
fn records(dir: &Path) -> (Vec<PathBuf>, Vec<Value>, String) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("audit.jsonl"))
        .collect();
    files.sort();
    let mut all = String::new();
    let mut recs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            recs.push(
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")),
            );
        }
        all.push_str(&text);
    }
    recs.sort_by_key(|r| r["seq"].as_u64().unwrap());
    (files, recs, all)
}

fn verify(files: &[PathBuf]) -> std::process::Output {
    std::process::Command::new(pgwarden_integration::pgwarden_binary())
        .args(["audit", "verify", "--key", "env:AUDIT_TEST_KEY"])
        .args(files)
        .env("AUDIT_TEST_KEY", KEY)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_exactly_their_records_in_seq_order_and_the_chain_verifies() {
    const CLIENTS: usize = 4;
    const PREPARED: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let mut env = TestEnv::start_with(|c| audit_to(c, dir.path())).await;
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let url = env.proxy_url(pgwarden_integration::roles::SCRAM, "postgres");
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            c.simple_query(&format!("SELECT {n}; SELECT 'secret-{n}'")).await.unwrap();
            let stmt = c.prepare("SELECT $1::int + 0").await.unwrap();
            for i in 0..PREPARED {
                let row = c.query_one(&stmt, &[&(i as i32)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i as i32);
            }
            let e = c.simple_query("SELECT 1/0; SELECT 2").await.unwrap_err();
            assert_eq!(e.code().unwrap().code(), "22012");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    env.shutdown().await.unwrap();

    let (files, recs, all) = records(dir.path());
    assert!(files.len() > 1, "16 KiB files must have rotated: {files:?}");
    assert!(!all.contains("secret-"), "literals are redacted by default");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>());

    let mut sessions: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["session"].is_string()) {
        sessions.entry(r["session"].as_str().unwrap().to_string()).or_default().push(r);
    }
    assert_eq!(sessions.len(), CLIENTS, "one session per client");
    for (id, rs) in &sessions {
        let events: Vec<&str> = rs.iter().map(|r| r["event"].as_str().unwrap()).collect();
        let mut expected = vec!["connect", "auth_ok"];
        expected.extend(std::iter::repeat_n("statement", 2 + PREPARED + 2));
        expected.push("disconnect");
        assert_eq!(events, expected, "session {id}");
        let st: Vec<&&Value> = rs.iter().filter(|r| r["event"] == "statement").collect();
        assert_eq!(st[0]["statement"], "SELECT $1");
        assert_eq!(st[0]["protocol"], "simple");
        assert_eq!(st[0]["rows"], 1);
        assert_eq!(st[1]["statement"], "SELECT $1");
        assert_eq!(st[0]["fingerprint"], st[1]["fingerprint"]);
        for p in &st[2..2 + PREPARED] {
            assert_eq!(p["statement"], "SELECT $1::int + $2");
            assert_eq!(p["protocol"], "extended");
            assert_eq!(p["params"], "redacted");
            assert_eq!(p["outcome"], "ok");
            assert_eq!(p["rows"], 1);
            assert!(p["duration_us"].as_u64().is_some());
            assert_eq!(p["fingerprint"], st[2]["fingerprint"]);
        }
        let failed = st[2 + PREPARED];
        assert_eq!(
            (failed["outcome"].as_str(), failed["sqlstate"].as_str()),
            (Some("error"), Some("22012"))
        );
        assert_eq!(failed["severity"], "ERROR");
        assert_eq!(st[3 + PREPARED]["outcome"], "skipped");
        assert_eq!(rs[0]["user"], pgwarden_integration::roles::SCRAM);
        assert_eq!(rs[0]["category"], "AUTHENTICATION");
    }
    assert_eq!(recs.last().unwrap()["event"], "seal");

    let out = verify(&files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Retention: the first file verified on its own (`--open`), then removed;
    // the rest verifies from the anchor that printed, and not without it.
    let with = |extra: &[&str], files: &[PathBuf]| {
        std::process::Command::new(pgwarden_integration::pgwarden_binary())
            .args(["audit", "verify", "--key", "env:AUDIT_TEST_KEY"])
            .args(extra)
            .args(files)
            .env("AUDIT_TEST_KEY", KEY)
            .output()
            .unwrap()
    };
    let first_seq = |f: &PathBuf| {
        let text = std::fs::read_to_string(f).unwrap();
        serde_json::from_str::<Value>(text.lines().next().unwrap()).unwrap()["seq"].as_u64()
    };
    let mut ordered = files.clone();
    ordered.sort_by_key(first_seq);
    let out = with(&["--open"], &ordered[..1]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    let anchor = printed.split('`').nth(1).expect("the anchor to keep").to_string();
    let rest = &ordered[1..];
    assert!(!verify(rest).status.success(), "a missing first file went unnoticed");
    let out = with(&["--after", &anchor], rest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(with(&["--after", "12:nothex"], rest).status.code(), Some(2));

    // Remove one record from the middle of a rotated file.
    let victim = &files[1];
    let text = std::fs::read_to_string(victim).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let removed = lines.remove(2).to_string();
    std::fs::write(victim, lines.join("\n") + "\n").unwrap();
    let out = verify(&files);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not follow"), "{err}");
    assert!(err.contains(&victim.display().to_string()), "{err}");
    // Put it back edited.
    lines.insert(2, &removed);
    let edited = removed.replace("\"ok\"", "\"error\"");
    lines[2] = &edited;
    std::fs::write(victim, lines.join("\n") + "\n").unwrap();
    let err = String::from_utf8_lossy(&verify(&files).stderr).to_string();
    assert!(err.contains("MAC does not match"), "{err}");
}

const SCHEMA: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text, ssn bytea);";

const ROLES: &str = "
CREATE ROLE app LOGIN PASSWORD '{pw}';
CREATE ROLE nosy LOGIN PASSWORD '{pw}';
GRANT ALL ON customers TO app, nosy;
";

const REGISTRY: &str = r#"
[[columns]]
name = "public.customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"

[[policies]]
roles = ["app"]
columns = ["public.customers.*"]
access = "full"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_of_encrypted_columns_never_reaches_the_audit_log_even_with_all_literals() {
    let (pg, mut config, keys) = encrypted::prepare(SCHEMA, REGISTRY).await;
    pg.psql("postgres", &ROLES.replace("{pw}", PASSWORD)).unwrap();
    encrypted::init(&pg, &config).await;
    let dir = tempfile::tempdir().unwrap();
    audit_to(&mut config, dir.path());
    config.audit.statement_literals = StatementLiterals::All;
    let mut env = TestEnv::start_on(pg, config).await;
    let port = env.proxy_addr.port();

    let app = connect(&url(port, "app", "postgres")).await;
    app.simple_query(
        "INSERT INTO customers (id, name, ssn) VALUES (1, 'Visible Ann', '111-22-3333')",
    )
    .await
    .unwrap();
    app.execute(
        "INSERT INTO customers (id, name, ssn) VALUES ($1, $2, $3)",
        &[&2i32, &"Bob", &"444-55-6666"],
    )
    .await
    .unwrap();
    let rows =
        app.simple_query("SELECT ssn FROM customers WHERE ssn = '111-22-3333'").await.unwrap();
    assert!(!rows.is_empty());
    let nosy = connect(&url(port, "nosy", "postgres")).await;
    let e =
        nosy.simple_query("SELECT ssn FROM customers WHERE ssn = '777-88-9999'").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42501");
    drop((app, nosy));
    env.shutdown().await.unwrap();

    let (files, recs, all) = records(dir.path());
    for secret in ["111-22-3333", "444-55-6666", "777-88-9999"] {
        assert!(!all.contains(secret), "{secret} is in the audit log:\n{all}");
    }
    assert!(all.contains("'Visible Ann'"), "literals = all keeps the others:\n{all}");
    let insert = recs
        .iter()
        .find(|r| r["statement"].as_str().is_some_and(|s| s.contains("Visible Ann")))
        .unwrap();
    assert_eq!(
        insert["statement"],
        "INSERT INTO customers (id, name, ssn) VALUES (1, 'Visible Ann', $1)"
    );
    assert_eq!(insert["encrypted_columns"][0], "public.customers.ssn");
    let denied: Vec<&Value> = recs.iter().filter(|r| r["event"] == "denied").collect();
    assert_eq!(denied.len(), 1, "{recs:?}");
    assert_eq!(denied[0]["reason"], "column_access");
    assert_eq!(denied[0]["user"], "nosy");
    assert_eq!(denied[0]["sqlstate"], "42501");
    let refused = recs.iter().find(|r| r["user"] == "nosy" && r["event"] == "statement").unwrap();
    assert_eq!(refused["sqlstate"], "42501");
    assert!(verify(&files).status.success());
    drop(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_going_down_and_coming_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, mut config) = with_auditor(dir.path()).await;
    config.audit.sinks = vec![AuditSink::File, AuditSink::Postgres];
    let mut env = TestEnv::start_on(pg, config).await;
    let direct = env.direct_client().await;
    let client = env.proxy_client().await;
    for i in 0..20 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    cut_the_sink(&direct).await;
    for i in 0..50 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    // While the sink fails, the proxy is not ready (records wait in the queue).
    let failing = "not ready: the audit postgres sink is failing; records wait in its queue";
    assert_eq!(readyz_until(&env, 503).await, failing);
    direct.batch_execute("ALTER ROLE auditor LOGIN").await.unwrap();
    assert_eq!(readyz_until(&env, 200).await, "ready");
    drop(client);
    env.shutdown().await.unwrap();

    let (_, recs, _) = records(dir.path());
    let rows = direct.query("SELECT line FROM pgwarden.audit_log ORDER BY seq", &[]).await.unwrap();
    let lines: Vec<Value> =
        rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap()).collect();
    assert_eq!(lines.len(), recs.len(), "the table holds every record the file holds");
    assert_eq!(lines, recs);
    assert!(recs.iter().filter(|r| r["event"] == "statement").count() >= 70);
    // No record of the sink's own writes.
    assert!(!recs.iter().any(|r| r["user"] == "auditor"));
    let table = dir.path().join("table.jsonl");
    let mut text: String = rows.iter().map(|r| format!("{}\n", r.get::<_, &str>(0))).collect();
    std::fs::write(&table, std::mem::take(&mut text)).unwrap();
    assert!(verify(&[table]).status.success());
    let partitions = direct
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pgwarden.audit_log'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert!(partitions.get::<_, i64>(0) >= 4, "default + this month + 2 ahead");
}

/// `/readyz` polled until it answers `status` (a hang guard of 30 s), and
/// its body.
async fn readyz_until(env: &TestEnv, status: u16) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (got, body) = env.admin_get("/readyz").await;
        if got == status || std::time::Instant::now() > deadline {
            assert_eq!(got, status, "{body}");
            return body.trim().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Known plaintexts of the encrypted column, written and searched for.
const SECRETS: [&str; 4] = ["123-45-6789", "987-65-4321", "555-12-3456", "000-11-2222"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_finished_statement_and_no_plaintext_reaches_log_file_or_table() {
    let (pg, toml, keys) = encrypted::prepare_toml(SCHEMA, REGISTRY).await;
    pg.psql("postgres", &ROLES.replace("{pw}", PASSWORD)).unwrap();
    encrypted::init(&pg, &encrypted::load(&toml)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit.key"), KEY).unwrap();
    let port = pgwarden::cluster::free_port().unwrap();
    let toml = format!(
        "{}\n[audit]\nsinks = [\"file\", \"postgres\"]\nfile = \"{}\"\nkey = \"file:{}\"\n\
         statement_literals = \"all\"\n",
        toml.replace(
            "127.0.0.1:0\"\nshutdown_grace",
            &format!("127.0.0.1:{port}\"\nshutdown_grace")
        ),
        dir.path().join("audit.jsonl").display(),
        dir.path().join("audit.key").display(),
    );
    // The proxy's own log at its most verbose, as JSON.
    let mut proxy = tokio::task::spawn_blocking(move || {
        pgwarden_integration::ProxyProcess::start_logging(
            &toml,
            port,
            &["--log-format", "json"],
            "trace",
        )
    })
    .await
    .unwrap();

    let app = connect(&url(port, "app", "postgres")).await;
    app.simple_query(&format!(
        "INSERT INTO customers (id, name, ssn) VALUES (1, 'a', '{}'), (2, 'b', '{}')",
        SECRETS[0], SECRETS[1]
    ))
    .await
    .unwrap();
    app.execute(
        "INSERT INTO customers (id, name, ssn) VALUES ($1, 'c', $2)",
        &[&3i32, &SECRETS[2]],
    )
    .await
    .unwrap();
    let mut statements = 2;
    for s in SECRETS {
        let rows = app.query("SELECT ssn FROM customers WHERE ssn = $1", &[&s]).await.unwrap();
        assert_eq!(rows.len(), usize::from(s != SECRETS[3]));
        statements += 1;
    }
    let ssns = app.simple_query("SELECT ssn FROM customers ORDER BY id").await.unwrap();
    statements += 1;
    assert_eq!(
        ssns.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(),
        3
    );
    let nosy = connect(&url(port, "nosy", "postgres")).await;
    let probe = format!("SELECT id FROM customers WHERE ssn = '{}'", SECRETS[3]);
    let refused = nosy.simple_query(&probe).await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501");
    statements += 1;
    drop((app, nosy));

    // SIGTERM: the proxy exits cleanly after writing every record.
    proxy.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = proxy.wait_exit(std::time::Duration::from_secs(60));
        (s, proxy.log())
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    let (files, recs, all) = records(dir.path());
    let done = recs.iter().filter(|r| r["event"] == "statement").count();
    assert_eq!(done, statements, "{all}");
    assert!(verify(&files).status.success(), "the sealed log verifies");
    let direct = connect(&url(pg.port(), pgwarden_integration::roles::SCRAM, "postgres")).await;
    let table: Vec<String> = direct
        .query("SELECT line FROM pgwarden.audit_log ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(table.len(), recs.len(), "the table holds every record");
    assert!(log.contains("\"level\":\"TRACE\"") || log.contains("\"level\":\"DEBUG\""), "{log}");
    for secret in SECRETS {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(secret)).take(3).collect();
        assert!(lines.is_empty(), "{secret} is in the proxy's log:\n{}", lines.join("\n"));
        assert!(!all.contains(secret), "{secret} is in the audit file");
        assert!(!table.iter().any(|l| l.contains(secret)), "{secret} is in the audit table");
    }
    // Nor key material or passwords: the master key, the audit key, the
    // password the sessions and the admin connection log in with.
    let master = std::fs::read_to_string(keys.path().join("master.key")).unwrap();
    for secret in [master.trim(), KEY, PASSWORD] {
        assert!(!log.contains(secret), "key material or a password is in the proxy's log");
        assert!(!all.contains(secret), "key material or a password is in the audit file");
        assert!(!table.iter().any(|l| l.contains(secret)), "… in the audit table");
    }
    drop(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_audited_and_excluded_fingerprints_are_silenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = TestEnv::start_with(|c| audit_to(c, dir.path())).await;
    let client = env.proxy_client().await;
    client.simple_query("SELECT 42").await.unwrap();
    env.handle.flush_audit().await;
    let (_, recs, _) = records(dir.path());
    let probe = recs.iter().find(|r| r["statement"] == "SELECT $1").expect("the probe's record");
    let fingerprint = probe["fingerprint"].as_str().unwrap().to_string();

    // A health check's fingerprint is silenced from the next statement on.
    let mut config = (*env.handle.config()).clone();
    config.audit.exclude_fingerprints = vec![fingerprint.clone()];
    env.handle.reload(config.clone()).unwrap();
    client.simple_query("SELECT 43").await.unwrap();
    client.simple_query("SELECT rolname FROM pg_roles WHERE false").await.unwrap();
    // An invalid file is refused, and that is recorded too.
    let mut bad = config.clone();
    bad.listen.max_message_bytes = 1;
    assert!(env.handle.reload(bad).is_err());
    drop(client);
    env.shutdown().await.unwrap();

    let (files, recs, _) = records(dir.path());
    let same: Vec<&Value> = recs.iter().filter(|r| r["fingerprint"] == fingerprint).collect();
    assert_eq!(same.len(), 1, "only the statement before the reload: {same:?}");
    let other = |r: &&Value| r["statement"].as_str().is_some_and(|s| s.contains("pg_roles"));
    assert_eq!(recs.iter().filter(other).count(), 1, "other statements are still recorded");
    let reloads: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "config_reload")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(reloads, ["ok", "error"]);
    assert!(verify(&files).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_overflow_drop_a_stuck_sink_costs_records_not_clients_and_the_loss_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, mut config) = with_auditor(dir.path()).await;
    config.audit.sinks = vec![AuditSink::Postgres];
    config.audit.on_overflow = pgwarden_config::Overflow::Drop;
    config.audit.queue_capacity = 1;
    let env = TestEnv::start_on(pg, config).await;
    let direct = env.direct_client().await;
    let client = env.proxy_client().await;
    cut_the_sink(&direct).await;
    // The sink is stuck; clients go on (a generous hang guard, not a timing).
    let statements = async {
        for i in 0..2000 {
            client.simple_query(&format!("SELECT {i}")).await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), statements)
        .await
        .expect("clients waited on a stuck sink with on_overflow = drop");
    let (_, metrics) = env.admin_get("/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgwarden_audit_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pgwarden_audit_dropped_total in\n{metrics}"));
    assert!(dropped > 0.0, "nothing counted as dropped:\n{metrics}");
    direct.batch_execute("ALTER ROLE auditor LOGIN").await.unwrap();
}

/// A session waiting for room in a full queue (`on_overflow = "block"`, a
/// stuck sink) when its client hangs up: the records of the statements the
/// client got answers for are still written, once the sink is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_its_records_wait_for_room_loses_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, mut config) = with_auditor(dir.path()).await;
    config.audit.sinks = vec![AuditSink::Postgres];
    config.audit.queue_capacity = 1;
    let mut env = TestEnv::start_on(pg, config).await;
    let direct = env.direct_client().await;
    cut_the_sink(&direct).await;
    // Many statements at once; answers come until the session waits for room
    // for their records, then stop. The client takes what came and hangs up.
    let addr = env.proxy_addr;
    let (mut client, _) = pgwarden_integration::wire::Wire::startup(
        addr,
        pgwarden_integration::roles::TRUST,
        "postgres",
    )
    .await;
    let batch: Vec<u8> = (0..2000)
        .flat_map(|i| pgwarden_integration::wire::query(&format!("SELECT {i} AS answered")))
        .collect();
    client.send(&batch).await;
    let mut answered = 0i64;
    while let Ok(Some(m)) = client.recv_within(std::time::Duration::from_secs(1)).await {
        answered += i64::from(m.tag == b'C');
    }
    assert!((1..2000).contains(&answered), "{answered} answers: the session never waited");
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    direct.batch_execute("ALTER ROLE auditor LOGIN").await.unwrap();
    env.shutdown().await.unwrap();
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pgwarden.audit_log WHERE event = 'statement' \
             AND line LIKE '%AS answered%' AND line LIKE '%\"outcome\":\"ok\"%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Statements Postgres answered after the client left are recorded too.
    assert!(n >= answered, "{n} records for {answered} answered statements");
}

/// The postgres sink's login stops working and its connection is cut.
async fn cut_the_sink(direct: &tokio_postgres::Client) {
    direct
        .batch_execute(
            "ALTER ROLE auditor NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = 'auditor'",
        )
        .await
        .unwrap();
}

/// A cluster with a login `auditor` that may create the audit schema, and a
/// pass-through config whose own connection (the postgres sink's) is
/// `auditor`, auditing to a file in `dir`.
async fn with_auditor(dir: &Path) -> (pgwarden_integration::Cluster, Config) {
    let pg = tokio::task::spawn_blocking(pgwarden_integration::start_cluster).await.unwrap();
    let role = format!(
        "CREATE ROLE auditor LOGIN PASSWORD '{PASSWORD}'; GRANT CREATE ON DATABASE postgres TO auditor;"
    );
    pg.psql("postgres", &role).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut config =
        pgwarden_config::load_str(&pgwarden_integration::base_config_toml(&pg), std::iter::empty())
            .unwrap();
    config.upstream.admin_user = "auditor".into();
    config.upstream.admin_password = Some(Secret::File(pw.display().to_string()));
    audit_to(&mut config, dir);
    (pg, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_before_or_after_their_startup_are_audited_as_denied() {
    use pgwarden_integration::wire::{self, Wire};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut env = TestEnv::start_with(|c| {
        audit_to(c, dir.path());
        c.listen.max_connections = 2;
        c.listen.handshake_timeout = pgwarden_config::DurationValue::from_secs(1);
        c.listen.idle_timeout = pgwarden_config::DurationValue::from_secs(1);
    })
    .await;
    let user = pgwarden_integration::roles::TRUST;
    // A startup packet of a length no client sends: a protocol error.
    let mut garbage = tokio::net::TcpStream::connect(env.proxy_addr).await.unwrap();
    garbage.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).await.unwrap();
    // Nothing at all: the handshake timeout.
    let silent = tokio::net::TcpStream::connect(env.proxy_addr).await.unwrap();
    let mut silent = Wire::from_stream(silent);
    assert!(silent.until_eof().await.iter().any(|m| m.tag == b'E'));
    let mut garbage = Wire::from_stream(garbage);
    garbage.until_eof().await;
    assert_eq!(env.wait_for_no_connections(std::time::Duration::from_secs(10)).await, 0);
    // Two sessions fill listen.max_connections; a third is refused.
    let (mut one, _) = Wire::startup(env.proxy_addr, user, "postgres").await;
    let (mut two, _) = Wire::startup(env.proxy_addr, user, "postgres").await;
    let mut third = Wire::connect(env.proxy_addr).await;
    third.send(&wire::startup(&[("user", user), ("database", "postgres")])).await;
    let refused = third.until_eof().await;
    assert_eq!(refused.first().and_then(|m| m.sqlstate()).as_deref(), Some("53300"));
    // An idle session is cut by the idle timeout.
    let cut = two.until_eof().await;
    assert_eq!(cut.first().and_then(|m| m.sqlstate()).as_deref(), Some("57P05"), "{cut:?}");
    let cut = one.until_eof().await;
    assert_eq!(cut.first().and_then(|m| m.sqlstate()).as_deref(), Some("57P05"), "{cut:?}");
    env.shutdown().await.unwrap();

    let (files, recs, _) = records(dir.path());
    let denied: Vec<&Value> = recs.iter().filter(|r| r["event"] == "denied").collect();
    let reason = |r: &Value| r["reason"].as_str().unwrap().to_string();
    let mut reasons: Vec<String> = denied.iter().map(|r| reason(r)).collect();
    reasons.sort();
    let want = ["capacity", "handshake_timeout", "idle_timeout", "idle_timeout", "protocol"];
    assert_eq!(reasons, want, "{denied:?}");
    for r in &denied {
        assert_eq!(r["outcome"], "denied");
        assert!(r["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        match reason(r).as_str() {
            "protocol" | "handshake_timeout" => assert!(r["user"].is_null(), "{r}"),
            _ => assert_eq!(r["user"], user, "{r}"),
        }
    }
    let out = verify(&files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
