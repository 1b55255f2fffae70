//! The admin endpoints against real Postgres: what `/metrics` counts after a
//! workload, `/healthz` and `/readyz`, and a real Prometheus scraping pgwarden.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_integration::wire::{self, Msg, Wire};
use pgwarden_integration::{connect_err, http_get, roles, TestEnv, PASSWORD};

/// The value of one series (`name{labels}` exactly as exported), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

/// Every `name="value"` label pair of the exposition.
fn labels(metrics: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else { continue };
        let Some((inner, _)) = rest.rsplit_once('}') else { continue };
        for pair in inner.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            out.insert((k.to_string(), v.trim_end_matches('"').to_string()));
        }
    }
    out
}

async fn metrics(env: &TestEnv) -> String {
    let (status, body) = env.admin_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// FunctionCall (F) of a function taking no arguments, with a text result.
fn function_call(oid: u32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend([0, 0, 0, 0, 0, 0]); // no formats, no arguments, text result
    wire::msg(b'F', &body)
}

fn errors(msgs: &[Msg]) -> usize {
    msgs.iter().filter(|m| m.tag == b'E').count()
}

/// Waits until the proxy serves nothing, so that every connection has been
/// counted as ended.
async fn settle(env: &TestEnv) {
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_is_counted_exactly_and_no_label_carries_user_or_statement() {
    let env = TestEnv::start().await;
    let oid: u32 = env
        .direct_client()
        .await
        .query_one("SELECT 'pg_backend_pid'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);

    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    // Simple protocol: one statement, two in one Query, one that fails.
    w.send(&wire::query("SELECT 1")).await;
    assert_eq!(errors(&w.until_ready(1).await), 0);
    w.send(&wire::query("SELECT 1; SELECT 'secret-statement-text'")).await;
    assert_eq!(errors(&w.until_ready(1).await), 0);
    w.send(&wire::query("SELECT 1/0")).await;
    assert_eq!(errors(&w.until_ready(1).await), 1);
    // Extended protocol, pipelined: a prepare-only round trip (no statement),
    // an executed statement, and a parse error.
    let mut pipeline = Vec::new();
    for m in [
        wire::parse("s1", "SELECT $1::int + 1"),
        wire::describe(b'S', "s1"),
        wire::sync(),
        wire::bind("", "s1", &[Some("41")]),
        wire::execute("", 0),
        wire::sync(),
        wire::parse("", "SELEC broken"),
        wire::sync(),
    ] {
        pipeline.extend(m);
    }
    w.send(&pipeline).await;
    assert_eq!(errors(&w.until_ready(3).await), 1);
    // A FunctionCall.
    w.send(&function_call(oid)).await;
    let answer = w.until_ready(1).await;
    assert!(answer.iter().any(|m| m.tag == b'V'), "{answer:?}");
    w.send(&wire::terminate()).await;
    assert!(w.until_eof().await.is_empty());

    // A failed login, and a protocol violation after a good startup.
    let bad = format!(
        "postgresql://{}:wrong-password@{}/postgres?sslmode=disable",
        roles::SCRAM,
        env.proxy_addr
    );
    let e = connect_err(&bad).await;
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"), "{e:?}");
    let (mut rude, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    rude.send(&wire::msg(b'~', b"x")).await;
    assert_eq!(rude.until_eof().await.last().and_then(Msg::sqlstate).as_deref(), Some("08P01"));
    settle(&env).await;

    let m = metrics(&env).await;
    for (series, want) in [
        ("pgwarden_statements_total{kind=\"simple\",outcome=\"ok\"}", 3.0),
        ("pgwarden_statements_total{kind=\"simple\",outcome=\"error\"}", 1.0),
        ("pgwarden_statements_total{kind=\"extended\",outcome=\"ok\"}", 1.0),
        ("pgwarden_statements_total{kind=\"extended\",outcome=\"error\"}", 1.0),
        ("pgwarden_statements_total{kind=\"function\",outcome=\"ok\"}", 1.0),
        ("pgwarden_statements_total{kind=\"function\",outcome=\"error\"}", 0.0),
        // One per round trip that ran a statement: 3 Query, 2 Sync, 1 call.
        ("pgwarden_statement_duration_seconds_count", 6.0),
        ("pgwarden_connections_total{outcome=\"ok\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"auth_failed\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"protocol_error\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"refused_capacity\"}", 0.0),
        ("pgwarden_connections_active", 0.0),
        ("pgwarden_auth_failures_total", 1.0),
        ("pgwarden_denied_total{reason=\"protocol\"}", 1.0),
        ("pgwarden_denied_total{reason=\"capacity\"}", 0.0),
        ("pgwarden_upstream_connect_seconds_count", 3.0),
    ] {
        assert_eq!(value(&m, series), want, "{series} in:\n{m}");
    }
    assert!(value(&m, "pgwarden_bytes_total{direction=\"client_to_upstream\"}") > 100.0);
    assert!(value(&m, "pgwarden_bytes_total{direction=\"upstream_to_client\"}") > 100.0);
    let version = format!("pgwarden_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&m, &version), 1.0);

    // Labels come from fixed sets: no user, password, address or statement.
    let allowed_keys = ["outcome", "kind", "direction", "reason", "version", "le", "sink"];
    for (k, v) in labels(&m) {
        assert!(allowed_keys.contains(&k.as_str()), "unexpected label {k}={v}");
        let lower = v.to_lowercase();
        for secret in [roles::TRUST, roles::SCRAM, PASSWORD, "wrong-password", "select", "127.0.0"]
        {
            assert!(!lower.contains(&secret.to_lowercase()), "label {k}={v} carries {secret}");
        }
    }
    assert!(!m.contains("secret-statement-text") && !m.contains(roles::TRUST));

    let (status, body) = env.admin_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = env.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(env.admin_get("/nothing-here").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_and_clients_count_as_upstream_unreachable_when_postgres_is_down() {
    let closed = pgwarden::cluster::free_port().unwrap();
    let env = TestEnv::start_with(|c| {
        c.upstream.port = closed;
        c.upstream.connect_timeout = pgwarden_config::DurationValue::from_secs(2);
    })
    .await;
    let (status, body) = env.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Postgres is unreachable"), "{body}");
    assert!(!body.contains(&closed.to_string()), "the reason names the address: {body}");
    assert_eq!(env.admin_get("/healthz").await.0, 200, "alive even though not ready");

    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&wire::startup(&[("user", roles::TRUST), ("database", "postgres")])).await;
    assert_eq!(w.until_eof().await.last().and_then(Msg::sqlstate).as_deref(), Some("08006"));
    settle(&env).await;
    let m = metrics(&env).await;
    assert_eq!(value(&m, "pgwarden_connections_total{outcome=\"upstream_unreachable\"}"), 1.0);
    assert_eq!(value(&m, "pgwarden_upstream_connect_seconds_count"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_shutdown_drains_sessions_and_healthz_stays_200() {
    let mut env = TestEnv::start().await;
    assert_eq!(env.admin_get("/readyz").await.0, 200);
    let (mut running, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    running.send(&wire::query("SELECT pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    env.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = env.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: pgwarden is shutting down\n"));
    assert_eq!(env.admin_get("/healthz").await.0, 200);
    let m = metrics(&env).await;
    assert_eq!(value(&m, "pgwarden_connections_active"), 1.0, "{m}");

    let admin = env.admin_addr.unwrap();
    env.shutdown().await.unwrap();
    let msgs = running.until_eof().await;
    assert_eq!(msgs.last().and_then(Msg::sqlstate).as_deref(), Some("57P01"));
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin server outlived the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_connection_cap_counts_as_refused_and_denied() {
    let env = TestEnv::start_with(|c| c.listen.max_connections = 1).await;
    let (_held, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let mut w = Wire::connect(env.proxy_addr).await;
    w.send(&wire::startup(&[("user", roles::TRUST), ("database", "postgres")])).await;
    assert_eq!(w.until_eof().await.last().and_then(Msg::sqlstate).as_deref(), Some("53300"));
    // The refusal is counted once its task ends, just after the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = metrics(&env).await;
        if sample(&m, "pgwarden_denied_total{reason=\"capacity\"}") == Some(1.0)
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(value(&m, "pgwarden_denied_total{reason=\"capacity\"}"), 1.0, "{m}");
    assert_eq!(value(&m, "pgwarden_connections_total{outcome=\"refused_capacity\"}"), 1.0);
    assert_eq!(value(&m, "pgwarden_connections_active"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cancel_requests_and_abandoned_connections_have_their_own_outcomes() {
    let env = TestEnv::start_with(|c| {
        c.listen.handshake_timeout = pgwarden_config::DurationValue::parse("300ms");
        c.listen.idle_timeout = pgwarden_config::DurationValue::parse("300ms");
    })
    .await;
    // Says nothing: handshake timeout (08P01).
    let mut silent = Wire::connect(env.proxy_addr).await;
    // Starts up, then idles: idle timeout (57P05).
    let (mut idle, startup) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    // Connects and leaves before a startup packet: abandoned.
    drop(Wire::connect(env.proxy_addr).await);
    // A CancelRequest with the idle session's key (nothing runs; harmless).
    let key = startup.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&key.body);
    let mut c = Wire::connect(env.proxy_addr).await;
    c.send(&cancel).await;
    assert!(c.until_eof().await.is_empty());

    assert_eq!(silent.until_eof().await.last().and_then(Msg::sqlstate).as_deref(), Some("08P01"));
    assert_eq!(idle.until_eof().await.last().and_then(Msg::sqlstate).as_deref(), Some("57P05"));
    settle(&env).await;
    let m = metrics(&env).await;
    for (series, want) in [
        ("pgwarden_connections_total{outcome=\"handshake_timeout\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"idle_timeout\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"abandoned\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"cancel_request\"}", 1.0),
        ("pgwarden_connections_total{outcome=\"ok\"}", 0.0),
        ("pgwarden_denied_total{reason=\"handshake_timeout\"}", 1.0),
        ("pgwarden_denied_total{reason=\"idle_timeout\"}", 1.0),
        ("pgwarden_denied_total{reason=\"protocol\"}", 0.0),
    ] {
        assert_eq!(value(&m, series), want, "{series} in:\n{m}");
    }
}

#[tokio::test]
async fn a_configured_metrics_address_that_is_taken_stops_the_proxy_from_starting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let toml = format!("[listen]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"{addr}\"\n");
    let config = pgwarden_config::load_str(&toml, std::iter::empty()).unwrap();
    let err = match pgwarden::Proxy::bind(std::sync::Arc::new(config)).await {
        Ok(_) => panic!("the proxy started without its admin endpoints on {addr}"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with(&format!("metrics.address {addr}: ")), "{err}");

    let off = "[listen]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"\"\n";
    let config = pgwarden_config::load_str(off, std::iter::empty()).unwrap();
    let proxy = pgwarden::Proxy::bind(std::sync::Arc::new(config)).await.unwrap();
    assert_eq!(proxy.admin_addr(), None);
}

/// The Prometheus server binary: `$PGWARDEN_PROMETHEUS`, or `prometheus` on
/// `PATH`. Missing, the test fails saying how to install it.
fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PGWARDEN_PROMETHEUS") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the Prometheus server is not installed, and this test scrapes pgwarden with it. \
             Install it with `apt-get install prometheus` (Debian/Ubuntu; .ci/run does this), \
             or point PGWARDEN_PROMETHEUS at a prometheus binary"
        )
    })
}

/// A Prometheus server scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pgwarden\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = pgwarden::cluster::free_port().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited at start ({status}):\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && http_get(self.addr, "/-/ready").await.0 == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 60s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query: the `data.result` array of the API's answer.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let (status, body) =
            http_get(self.addr, &format!("/api/v1/query?query={}", percent_encode(promql))).await;
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A result's value as a number (`[timestamp, "value"]`).
fn number(result: &serde_json::Value) -> f64 {
    result["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_series_during_a_workload() {
    let binary = prometheus_binary();
    assert!(binary.is_file(), "{} does not exist", binary.display());
    let env = TestEnv::start().await;
    let mut prometheus = Prometheus::start(env.admin_addr.unwrap());
    prometheus.wait_ready().await;

    // A steady workload across several scrapes.
    let client = env.proxy_client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u32;
    let result = loop {
        for _ in 0..20 {
            client.query("SELECT 1", &[]).await.unwrap();
            sent += 1;
        }
        assert!(client.batch_execute("SELECT no_such_column").await.is_err());
        let r = prometheus.query("pgwarden_statements_total{kind=\"extended\"}").await;
        let ok = r.iter().find(|s| s["metric"]["outcome"] == "ok").map(number).unwrap_or(0.0);
        if ok >= 100.0 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let ok = result.iter().find(|s| s["metric"]["outcome"] == "ok").map(number);
    let ok = ok.unwrap_or_else(|| panic!("no extended ok series in {result:?}"));
    assert!(
        (100.0..=f64::from(sent)).contains(&ok),
        "Prometheus saw {ok} extended statements of {sent} sent:\n{}",
        prometheus.log()
    );
    for s in &result {
        assert_eq!(s["metric"]["job"], "pgwarden");
        assert_eq!(s["metric"]["__name__"], "pgwarden_statements_total");
    }

    let up = prometheus.query("up{job=\"pgwarden\"}").await;
    assert_eq!(up.iter().map(number).collect::<Vec<_>>(), vec![1.0]);
    let simple_errors =
        prometheus.query("pgwarden_statements_total{kind=\"simple\",outcome=\"error\"}").await;
    assert!(simple_errors.iter().map(number).sum::<f64>() >= 1.0, "{simple_errors:?}");
    let active = prometheus.query("pgwarden_connections_active").await;
    assert_eq!(active.iter().map(number).collect::<Vec<_>>(), vec![1.0]);
    let bytes = prometheus.query("sum(pgwarden_bytes_total)").await;
    assert!(bytes.iter().map(number).sum::<f64>() > 1000.0, "{bytes:?}");
    // The dashboard's latency panel: a finite p99 from the histogram, once
    // two scrapes apart have seen statements.
    let p99_query = "histogram_quantile(0.99, sum by (le) \
                     (rate(pgwarden_statement_duration_seconds_bucket[1m])))";
    let deadline = Instant::now() + Duration::from_secs(30);
    let p99 = loop {
        client.query("SELECT 1", &[]).await.unwrap();
        let r = prometheus.query(p99_query).await;
        let p99 = r.first().map(number).unwrap_or(f64::NAN);
        if p99.is_finite() || Instant::now() > deadline {
            break p99;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(p99.is_finite() && p99 > 0.0 && p99 < 10.0, "p99 {p99}");
    // Every query of the Grafana dashboard is valid PromQL and finds series.
    for expr in dashboard_exprs() {
        let promql = expr.replace("$job", ".*").replace("$__rate_interval", "1m");
        let r = prometheus.query(&promql).await;
        assert!(!r.is_empty(), "the dashboard's {expr} finds nothing");
    }
    let info = prometheus.query("pgwarden_build_info").await;
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
}

/// Every `expr` of the chart's Grafana dashboard.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| match v {
                serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                _ => walk(v, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/pgwarden/dashboards/pgwarden.json");
    let json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}
