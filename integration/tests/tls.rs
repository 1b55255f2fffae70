//! TLS toward clients, with certificates made at test time, through psql.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::path::{Path, PathBuf};
use std::process::Command;

use pgwarden_integration::wire::{self, Wire};
use pgwarden_integration::{roles, TestEnv, PASSWORD};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and a server certificate for `localhost` and 127.0.0.1.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "pgwarden test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &Issuer::from_params(&ca_params, &ca_key)).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// psql through the proxy with extra connection options; (success, output).
async fn psql(port: u16, options: &str, sql: &str) -> (bool, String) {
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} dbname=postgres {options}",
        roles::SCRAM
    );
    let sql = sql.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-d", &conninfo, "-c", &sql])
            .env("PGPASSWORD", PASSWORD)
            .env_remove("PGSSLMODE")
            .output()
            .unwrap();
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
