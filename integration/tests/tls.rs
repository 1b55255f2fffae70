//! TLS toward clients, with certificates made at test time, through psql and
//! psycopg: server certificates, client certificates and their CN, versions.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::path::{Path, PathBuf};
use std::process::Command;

use pgwarden_integration::certs::TestCa;
use pgwarden_integration::python;
use pgwarden_integration::wire::{self, Wire};
use pgwarden_integration::{roles, TestEnv, PASSWORD};

/// A CA and a server certificate for `localhost` and 127.0.0.1.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new("pgwarden test CA");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]).write(dir, "server");
    (ca.write(dir, "ca"), cert, key)
}

/// psql through the proxy with extra connection options; (success, output).
async fn psql(port: u16, options: &str, sql: &str) -> (bool, String) {
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} dbname=postgres {options}",
        roles::SCRAM
    );
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-d", &conninfo, "-c", sql]).env("PGPASSWORD", PASSWORD);
    run(cmd).await
}

/// Runs a client without PGSSLMODE from the environment; (success, stdout
/// then stderr).
async fn run(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = cmd.env_remove("PGSSLMODE").output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

async fn env_with_tls(dir: &Path, tweak: impl FnOnce(&mut pgwarden_config::Config)) -> TestEnv {
    let (_, cert, key) = certificates(dir);
    TestEnv::start_with(move |c| {
        c.listen.tls_cert = cert.display().to_string();
        c.listen.tls_key = key.display().to_string();
        tweak(c);
    })
    .await
}

/// [`env_with_tls`] with the audit log's file sink on, in `dir`; the log.
async fn audited_env_with_tls(
    dir: &Path,
    tweak: impl FnOnce(&mut pgwarden_config::Config),
) -> (TestEnv, PathBuf) {
    let key = dir.join("audit.key");
    std::fs::write(&key, "an audit key for the tls tests, 32+ bytes").unwrap();
    let log = dir.join("audit.jsonl");
    let (log_path, key_path) = (log.display().to_string(), key.display().to_string());
    let env = env_with_tls(dir, |c| {
        c.audit.sinks = vec![pgwarden_config::AuditSink::File];
        c.audit.file = log_path;
        c.audit.key = Some(pgwarden_config::Secret::File(key_path));
        tweak(c);
    })
    .await;
    (env, log)
}

/// The denied records of the audit log at `log`, and its whole text.
fn denied_records(log: &Path) -> (Vec<serde_json::Value>, String) {
    let text = std::fs::read_to_string(log).unwrap();
    let denied = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "denied")
        .collect();
    (denied, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_verify_full_against_a_ca_made_in_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |_| {}).await;
    let ca = dir.path().join("ca.pem");
    let port = env.proxy_addr.port();
    let (ok, out) =
        psql(port, &format!("sslmode=verify-full sslrootcert={}", ca.display()), "SELECT 42").await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    // The server certificate does not name this host: verify-full refuses.
    let (ok, out) = psql(
        port,
        &format!("sslmode=verify-full sslrootcert={} host=wrong.example", ca.display()),
        "SELECT 1",
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("does not match host name"), "{out}");
    // Plaintext still works while TLS is not required.
    let (ok, out) = psql(port, "sslmode=disable", "SELECT 1").await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_a_plaintext_client_with_28000() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |c| c.listen.require_tls = true).await;
    let port = env.proxy_addr.port();
    let (ok, out) = psql(port, "sslmode=disable", "SELECT 1").await;
    assert!(!ok);
    assert!(out.contains("requires TLS") && out.contains("sslmode=require"), "{out}");
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_refused_when_the_minimum_is_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |c| c.listen.min_tls_version = "1.3".into()).await;
    let port = env.proxy_addr.port();
    let (ok, out) =
        psql(port, "sslmode=require ssl_max_protocol_version=TLSv1.2", "SELECT 1").await;
    assert!(!ok, "TLS 1.2 accepted: {out}");
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sent_behind_an_ssl_request_is_never_taken_as_a_startup() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |_| {}).await;
    let mut w = Wire::connect(env.proxy_addr).await;
    // SSLRequest and a StartupMessage in one write, before any TLS handshake.
    let mut bytes = vec![0, 0, 0, 8, 4, 210, 22, 47];
    bytes.extend(wire::startup(&[("user", roles::TRUST), ("database", "postgres")]));
    w.send(&bytes).await;
    assert_eq!(w.recv_byte().await, Some(b'S'));
    // The startup bytes are fed to the TLS handshake, which fails: the
    // connection closes and no session starts.
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut w.stream, &mut rest).await;
    assert!(!rest.windows(4).any(|b| b == b"R\0\0\0"), "a plaintext session started");
    assert_eq!(env.wait_for_no_connections(std::time::Duration::from_secs(5)).await, 0);
    let c = env.direct_client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&roles::TRUST])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_picks_up_rotated_certificates_without_dropping_connections() {
    let first = tempfile::tempdir().unwrap();
    let env = env_with_tls(first.path(), |_| {}).await;
    let port = env.proxy_addr.port();
    let old_ca = first.path().join("ca.pem");
    let (mut open, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;

    // A new CA and certificate, written over the configured files.
    let second = tempfile::tempdir().unwrap();
    let (new_ca, cert, key) = certificates(second.path());
    let config = env.handle.config();
    std::fs::copy(&cert, &config.listen.tls_cert).unwrap();
    std::fs::copy(&key, &config.listen.tls_key).unwrap();
    let restart = env.handle.reload((*config).clone()).unwrap();
    assert!(restart.is_empty(), "{restart:?}");

    let verify = |ca: &Path| format!("sslmode=verify-full sslrootcert={}", ca.display());
    let (ok, out) = psql(port, &verify(&new_ca), "SELECT 1").await;
    assert!(ok, "new certificate not in use: {out}");
    let (ok, _) = psql(port, &verify(&old_ca), "SELECT 1").await;
    assert!(!ok, "old certificate still served");
    // The connection opened before the reload still works.
    open.send(&wire::query("SELECT 'still here'")).await;
    let msgs = open.until_ready(1).await;
    assert!(msgs.iter().any(|m| m.tag == b'D'));
}

/// psycopg through the proxy with `options`; (success, output). Prints
/// whether TLS is in use and the answer to `SELECT 42`.
async fn psycopg(port: u16, options: &str) -> (bool, String) {
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} password={PASSWORD} \
         dbname=postgres {options}",
        roles::SCRAM
    );
    let script = "import sys, psycopg\n\
                  with psycopg.connect(sys.argv[1]) as c:\n    \
                  print(c.pgconn.ssl_in_use, c.execute('SELECT 42').fetchone()[0])\n";
    let mut cmd = Command::new(python::interpreter());
    cmd.args(["-c", script, &conninfo]);
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_connects_with_sslmode_require_and_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |_| {}).await;
    let port = env.proxy_addr.port();
    let ca = dir.path().join("ca.pem");
    let (ok, out) = psycopg(port, "sslmode=require").await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "True 42");
    let (ok, out) =
        psycopg(port, &format!("sslmode=verify-full sslrootcert={}", ca.display())).await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "True 42");
    // A CA that did not sign the proxy's certificate: refused by the client.
    let other = TestCa::new("another CA").write(dir.path(), "other-ca");
    let (ok, out) =
        psycopg(port, &format!("sslmode=verify-full sslrootcert={}", other.display())).await;
    assert!(!ok, "{out}");
    assert!(out.contains("certificate verify failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_must_be_signed_by_client_ca_and_name_the_login_role() {
    let dir = tempfile::tempdir().unwrap();
    let clients = TestCa::new("pgwarden client CA");
    let client_ca = clients.write(dir.path(), "client-ca");
    let env =
        env_with_tls(dir.path(), |c| c.listen.client_ca = client_ca.display().to_string()).await;
    let port = env.proxy_addr.port();
    let with_cert = |(cert, key): (PathBuf, PathBuf)| {
        format!("sslmode=require sslcert={} sslkey={}", cert.display(), key.display())
    };
    let right = clients.client(roles::SCRAM).write(dir.path(), "right");
    let (ok, out) = psql(port, &with_cert(right), "SELECT 42").await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");

    let wrong = clients.client(roles::TRUST).write(dir.path(), "wrong");
    let (ok, out) = psql(port, &with_cert(wrong), "SELECT 1").await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("certificate is for \"{}\"", roles::TRUST))
            && out.contains(&format!("role \"{}\"", roles::SCRAM)),
        "{out}"
    );

    // Signed by another CA: the TLS handshake fails.
    let stranger = TestCa::new("stranger").client(roles::SCRAM).write(dir.path(), "stranger");
    let (ok, out) = psql(port, &with_cert(stranger), "SELECT 1").await;
    assert!(!ok, "{out}");
    // No certificate, over TLS or plaintext.
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(!ok, "{out}");
    let (ok, out) = psql(port, "sslmode=disable", "SELECT 1").await;
    assert!(!ok, "{out}");
    assert!(out.contains("requires a client certificate"), "{out}");
    let metrics = String::from_utf8(env.handle.metrics().encode()).unwrap();
    // Wrong CN and plaintext after startup; another CA and no certificate in
    // the handshake.
    assert!(metrics.contains("pgwarden_denied_total{reason=\"certificate\"} 4\n"), "{metrics}");
}

/// Clients refused in the TLS handshake are denials like any other: counted
/// and audited, with their address (their role is not known yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refused_in_the_tls_handshake_are_counted_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let clients = TestCa::new("pgwarden client CA");
    let client_ca = clients.write(dir.path(), "client-ca");
    let (mut env, log) = audited_env_with_tls(dir.path(), |c| {
        c.listen.min_tls_version = "1.3".into();
        c.listen.client_ca = client_ca.display().to_string();
    })
    .await;
    let port = env.proxy_addr.port();
    let cert = clients.client(roles::SCRAM).write(dir.path(), "right");
    let with_cert =
        format!("sslmode=require sslcert={} sslkey={}", cert.0.display(), cert.1.display());
    let (ok, out) =
        psql(port, &format!("{with_cert} ssl_max_protocol_version=TLSv1.2"), "SELECT 1").await;
    assert!(!ok, "TLS 1.2 accepted: {out}");
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(!ok, "no certificate accepted: {out}");
    let (ok, out) = psql(port, &with_cert, "SELECT 1").await;
    assert!(ok, "{out}");
    let metrics = String::from_utf8(env.handle.metrics().encode()).unwrap();
    assert!(metrics.contains("pgwarden_denied_total{reason=\"tls\"} 1\n"), "{metrics}");
    assert!(metrics.contains("pgwarden_denied_total{reason=\"certificate\"} 1\n"), "{metrics}");
    // Each refusal is one denial, not also a protocol error's.
    assert!(metrics.contains("pgwarden_denied_total{reason=\"protocol\"} 0\n"), "{metrics}");
    let refused = "pgwarden_connections_total{outcome=\"refused_policy\"} 2\n";
    assert!(metrics.contains(refused), "{metrics}");
    env.shutdown().await.unwrap();

    let (denied, text) = denied_records(&log);
    let reasons: Vec<&str> = denied.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["tls", "certificate"], "{text}");
    for r in &denied {
        assert!(r["user"].is_null() && r["database"].is_null(), "{r}");
        assert!(r["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        assert_eq!(r["outcome"], "denied");
    }
}

/// A client that completes the TLS handshake and then sends a malformed
/// startup packet is cut like any other, and its denied record says it came
/// over TLS (openssl s_client does the SSLRequest and the handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_inside_tls_is_audited_as_a_tls_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut env, log) = audited_env_with_tls(dir.path(), |_| {}).await;
    let port = env.proxy_addr.port();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-starttls", "postgres", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_client");
        // A startup packet claiming 3 bytes: shorter than its own header.
        child.stdin.take().unwrap().write_all(&[0, 0, 0, 3]).unwrap();
        child.wait().unwrap();
    })
    .await
    .unwrap();
    env.shutdown().await.unwrap();
    let (denied, text) = denied_records(&log);
    assert_eq!(denied.len(), 1, "{text}");
    assert_eq!(denied[0]["reason"], "protocol", "{text}");
    assert_eq!(denied[0]["tls"], true, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_set_by_a_reload_applies_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_tls(dir.path(), |_| {}).await;
    let port = env.proxy_addr.port();
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(ok, "{out}");
    let clients = TestCa::new("pgwarden client CA");
    let mut config = (*env.handle.config()).clone();
    config.listen.client_ca = clients.write(dir.path(), "client-ca").display().to_string();
    assert!(env.handle.reload(config).unwrap().is_empty());
    let (ok, out) = psql(port, "sslmode=require", "SELECT 1").await;
    assert!(!ok, "a client without a certificate was let in after the reload: {out}");
    let (cert, key) = clients.client(roles::SCRAM).write(dir.path(), "client");
    let options = format!("sslmode=require sslcert={} sslkey={}", cert.display(), key.display());
    let (ok, out) = psql(port, &options, "SELECT 1").await;
    assert!(ok, "{out}");
}
