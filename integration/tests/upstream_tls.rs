//! TLS toward Postgres (`upstream.tls`, `upstream.ca`) against clusters
//! started with `ssl = on` and certificates made in the test: what each
//! libpq mode accepts and refuses, sessions and the proxy's own connection.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pgwarden::Proxy;
use pgwarden_config::{Config, Secret, UpstreamTls};
use pgwarden_integration::certs::TestCa;
use pgwarden_integration::{base_config_toml, connect, start_cluster, try_connect, url, Cluster};
use pgwarden_integration::{roles, PASSWORD};
use tokio_util::sync::CancellationToken;

/// A proxy in front of a cluster the test keeps; stopped on drop.
struct Front {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config(pg: &Cluster, tls: UpstreamTls, ca: Option<&Path>) -> Config {
    let mut c = pgwarden_config::load_str(&base_config_toml(pg), std::iter::empty()).unwrap();
    c.metrics.address = Some(String::new());
    c.upstream.tls = tls;
    c.upstream.ca = ca.map(|p| p.display().to_string()).unwrap_or_default();
    c
}

async fn front(config: Config) -> Front {
    let problems = config.validate();
    assert!(problems.is_empty(), "{problems:?}");
    let proxy = Proxy::bind(Arc::new(config)).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.run(stop.clone()));
    Front { addr, stop }
}

/// A cluster with TLS on, its certificate for `names`, signed by `ca`.
async fn tls_cluster(ca: &TestCa, names: &[&str]) -> Cluster {
    let issued = ca.server(names);
    tokio::task::spawn_blocking(move || {
        let pg = start_cluster();
        pg.enable_ssl(&issued.cert, &issued.key).unwrap();
        pg
    })
    .await
    .unwrap()
}

/// Whether the session's own backend connection is encrypted, asked through
/// the proxy.
async fn session_ssl(front: &Front) -> Result<bool, tokio_postgres::Error> {
    let c = try_connect(&url(front.addr.port(), roles::SCRAM, "postgres")).await?;
    let row = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_require_and_prefer_use_tls_against_a_server_that_offers_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("upstream CA");
    let ca_path = ca.write(dir.path(), "ca");
    let pg = tls_cluster(&ca, &["localhost", "127.0.0.1"]).await;

    let full = front(config(&pg, UpstreamTls::VerifyFull, Some(&ca_path))).await;
    assert!(session_ssl(&full).await.unwrap(), "verify-full session not encrypted");
    // require checks no certificate: a CA of its own is not needed.
    let require = front(config(&pg, UpstreamTls::Require, None)).await;
    assert!(session_ssl(&require).await.unwrap(), "require session not encrypted");
    let prefer = front(config(&pg, UpstreamTls::Prefer, None)).await;
    assert!(session_ssl(&prefer).await.unwrap(), "prefer did not use the TLS offered");

    // The proxy's own connection honours the same setting.
    let password = dir.path().join("admin-password");
    std::fs::write(&password, PASSWORD).unwrap();
    let mut admin = config(&pg, UpstreamTls::VerifyFull, Some(&ca_path));
    admin.upstream.admin_user = roles::SCRAM.into();
    admin.upstream.admin_password = Some(Secret::File(password.display().to_string()));
    let db = pgwarden::keys::connect_admin(&admin).await.unwrap();
    let row = db
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the admin connection is not encrypted");
    // And refuses a server its CA did not sign.
    let other = TestCa::new("another CA").write(dir.path(), "other");
    admin.upstream.ca = other.display().to_string();
    assert!(pgwarden::keys::connect_admin(&admin).await.is_err(), "admin trusted a stranger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_for_another_host_with_08006_and_verify_ca_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("upstream CA");
    let ca_path = ca.write(dir.path(), "ca");
    let pg = tls_cluster(&ca, &["db.example"]).await;
    let port = pg.port().to_string();

    let full = front(config(&pg, UpstreamTls::VerifyFull, Some(&ca_path))).await;
    let e = session_ssl(&full).await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("upstream.tls"), "{}", db.message());
    assert!(!db.message().contains("127.0.0.1") && !db.message().contains(&port), "{db:?}");

    let chain = front(config(&pg, UpstreamTls::VerifyCa, Some(&ca_path))).await;
    assert!(session_ssl(&chain).await.unwrap(), "verify-ca session not encrypted");
    // verify-ca still checks the chain: another CA is refused.
    let other = TestCa::new("another CA").write(dir.path(), "other");
    let stranger = front(config(&pg, UpstreamTls::VerifyCa, Some(&other))).await;
    let e = session_ssl(&stranger).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("08006"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_falls_back_to_plaintext_when_the_server_has_no_tls_and_require_refuses() {
    let pg = tokio::task::spawn_blocking(start_cluster).await.unwrap();
    let prefer = front(config(&pg, UpstreamTls::Prefer, None)).await;
    assert!(!session_ssl(&prefer).await.unwrap());
    let require = front(config(&pg, UpstreamTls::Require, None)).await;
    let e = session_ssl(&require).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("08006"), "{e:?}");
    // Direct connections are unaffected.
    let c = connect(&url(pg.port(), roles::SCRAM, "postgres")).await;
    c.simple_query("SELECT 1").await.unwrap();
}

/// A TCP relay to `to` that records the first 8 bytes of every connection
/// made through it: an SSLRequest, a StartupMessage or a CancelRequest.
struct Tap {
    addr: SocketAddr,
    openings: Arc<std::sync::Mutex<Vec<[u8; 8]>>>,
}

async fn tap(to: SocketAddr) -> Tap {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let openings = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = openings.clone();
    tokio::spawn(async move {
        while let Ok((mut from, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if from.read_exact(&mut head).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(head);
                let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                server.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut from, &mut server).await;
            });
        }
    });
    Tap { addr, openings }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_a_tls_session_reaches_postgres_over_tls_too() {
    // SSLRequest: length 8, code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let ca = TestCa::new("upstream CA");
    let pg = tls_cluster(&ca, &["localhost", "127.0.0.1"]).await;
    let tap = tap(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await;
    let mut c = config(&pg, UpstreamTls::Require, None);
    c.upstream.port = tap.addr.port();
    let front = front(c).await;

    let client = connect(&url(front.addr.port(), roles::SCRAM, "postgres")).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    let direct = connect(&url(pg.port(), roles::SCRAM, "postgres")).await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'";
    for _ in 0..400 {
        if direct.query_one(running, &[]).await.unwrap().get::<_, i64>(0) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let before = tap.openings.lock().unwrap().len();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let wait = std::time::Duration::from_secs(20);
    let e = tokio::time::timeout(wait, sleeper).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");

    let openings = tap.openings.lock().unwrap().clone();
    assert!(openings.len() > before, "the cancel never reached Postgres");
    for head in &openings {
        assert_eq!(head, &SSL_REQUEST, "a connection to Postgres began in plaintext");
    }
}
