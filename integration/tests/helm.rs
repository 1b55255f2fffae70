//! The Helm chart and the Grafana dashboard, checked without helm or Grafana:
//! the config the chart mounts by default passes `pgwarden check-config`, the
//! templates only read values that exist, and every metric the dashboard
//! queries is one pgwarden exports. (The dashboard's queries also run against
//! a real Prometheus in `metrics.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgwarden_integration::pgwarden_binary;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/pgwarden")
}

fn yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values() -> serde_yaml::Value {
    yaml(&chart().join("values.yaml"))
}

/// Port of an `IP:port` address.
fn port(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_config_the_chart_mounts_by_default_passes_check_config() {
    let values = values();
    let toml = values["config"].as_str().expect("values.yaml `config` is a TOML string");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgwarden.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(pgwarden_binary()).arg("check-config").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "pgwarden check-config rejects the chart's default config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The container ports the chart declares are the ones pgwarden listens on.
    let config = pgwarden_config::load_str(toml, std::iter::empty()).unwrap();
    assert_eq!(port(&config.listen.address), values["ports"]["postgres"].as_u64().unwrap());
    let metrics = config.metrics.address.as_deref().expect("the chart sets metrics.address");
    assert_eq!(port(metrics), values["ports"]["metrics"].as_u64().unwrap());
    assert!(metrics.starts_with("0.0.0.0:"), "probes cannot reach {metrics}");

    // Pods get time to drain: grace period > preStop + shutdown_grace.
    let grace = config.listen.shutdown_grace.get().as_secs();
    let pre_stop = values["preStopSleepSeconds"].as_u64().unwrap();
    let termination = values["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > pre_stop + grace, "{termination}s <= {pre_stop}s + {grace}s");
}

#[test]
fn the_chart_deploys_this_version_of_pgwarden() {
    let chart_yaml = yaml(&chart().join("Chart.yaml"));
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}

/// Every `.Values.a.b` path the templates read.
fn value_paths(template: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in template.match_indices(".Values.") {
        let rest = &template[i + ".Values.".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .collect();
        out.insert(path.trim_end_matches('.').to_string());
    }
    out
}

#[test]
fn templates_read_only_values_that_values_yaml_defines() {
    let values = values();
    let mut checked = 0;
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{}: unbalanced template braces",
            path.display()
        );
        for p in value_paths(&text) {
            let mut v = &values;
            for key in p.split('.') {
                v = v.get(key).unwrap_or_else(|| {
                    panic!("{} reads .Values.{p}, which values.yaml lacks", path.display())
                });
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} value references found");
}

#[test]
fn the_deployment_probes_the_admin_endpoints_and_runs_locked_down() {
    let deployment = std::fs::read_to_string(chart().join("templates/deployment.yaml")).unwrap();
    for needle in ["readinessProbe", "livenessProbe", "securityContext", "checksum/config"] {
        assert!(deployment.contains(needle), "deployment.yaml lacks {needle}");
    }
    let values = values();
    assert_eq!(values["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(values["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(values["podSecurityContext"]["runAsNonRoot"], true);
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(values["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(values["dashboard"]["labels"]["grafana_dashboard"], "1");
}

/// Every `expr` in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `pgwarden_…` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("pgwarden_")
        .map(|(i, _)| {
            expr[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()
        })
        .collect()
}

/// The dashboard's queries.
fn dashboard_exprs() -> Vec<String> {
    let path = chart().join("dashboards/pgwarden.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    exprs(&json, &mut out);
    out
}

#[test]
fn the_dashboard_queries_only_metrics_pgwarden_exports() {
    let metrics = pgwarden::metrics::Metrics::new().unwrap();
    // The per-column families have series once a column is registered.
    let _columns = metrics.columns(["public.customers.ssn"]);
    let exposition = String::from_utf8(metrics.encode()).unwrap();
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(exported.contains(&name), "the dashboard queries {name}, not exported: {e}");
            used.insert(name);
        }
    }
    for family in [
        "pgwarden_connections_active",
        "pgwarden_statements_total",
        "pgwarden_statement_duration_seconds_bucket",
        "pgwarden_bytes_total",
        "pgwarden_auth_failures_total",
        "pgwarden_denied_total",
        "pgwarden_crypto_operations_total",
        "pgwarden_masked_values_total",
        "pgwarden_crypto_duration_seconds_bucket",
        "pgwarden_lockouts_active",
        "pgwarden_rate_limited_total",
        "pgwarden_audit_events_total",
        "pgwarden_audit_queue_depth",
        "pgwarden_audit_dropped_total",
    ] {
        assert!(used.contains(family), "the dashboard has no panel over {family}");
    }
}
