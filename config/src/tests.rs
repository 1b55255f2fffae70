use std::path::Path;
use std::time::Duration;

use crate::{load_str, Config, ConfigError, Secret};

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn problems(text: &str) -> Vec<String> {
    match load_str(text, no_env()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    }
}

#[test]
fn empty_file_is_a_complete_pass_through_config() {
    let c = load_str("", no_env()).unwrap();
    assert_eq!(c.listen.address, "0.0.0.0:6432");
    assert_eq!(c.listen.max_connections, 1000);
    assert_eq!(c.listen.handshake_timeout.get(), Duration::from_secs(30));
    assert_eq!(c.listen.idle_timeout(), None);
    assert_eq!(c.upstream.port, 5432);
    assert!(c.upstream.admin_password.is_none());
}

#[test]
fn durations_take_units() {
    let c = load_str("[listen]\nhandshake_timeout = \"250ms\"\nidle_timeout = \"15m\"\n", no_env())
        .unwrap();
    assert_eq!(c.listen.handshake_timeout.get(), Duration::from_millis(250));
    assert_eq!(c.listen.idle_timeout(), Some(Duration::from_secs(900)));
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_path() {
    let p = problems(
        r#"
[listen]
address = "not an address"
handshake_timeout = "soon"
idle_timeout = 30
colour = "blue"

[upstream]
port = 0
tls = "verify-full"
admin_password = "hunter2"

[nonsense]
x = 1
"#,
    );
    let joined = p.join("\n");
    for key in [
        "listen.address:",
        "listen.handshake_timeout:",
        "listen.idle_timeout:",
        "listen.colour: unknown key",
        "upstream.port:",
        "upstream.ca:",
        "upstream.admin_password:",
        "nonsense: unknown key",
    ] {
        assert!(joined.contains(key), "missing {key} in:\n{joined}");
    }
    assert!(!joined.contains("hunter2"), "an inline secret was echoed:\n{joined}");
}

#[test]
fn a_wrong_type_names_its_key() {
    let p = problems("[listen]\nmax_connections = \"many\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("max_connections"), "{p:?}");
}

#[test]
fn invalid_toml_is_reported() {
    let p = problems("[listen\n");
    assert!(p[0].contains("not valid TOML"), "{p:?}");
}

#[test]
fn environment_overrides_keys() {
    let env = vec![
        ("PGWARDEN__LISTEN__ADDRESS".to_string(), "127.0.0.1:7000".to_string()),
        ("PGWARDEN__UPSTREAM__PORT".to_string(), "5999".to_string()),
        ("PGWARDEN_ADMIN_PASSWORD".to_string(), "not an override".to_string()),
    ];
    let c = load_str("[listen]\naddress = \"0.0.0.0:1\"\n", env).unwrap();
    assert_eq!(c.listen.address, "127.0.0.1:7000");
    assert_eq!(c.upstream.port, 5999);
}

#[test]
fn an_unknown_override_is_an_error() {
    let env = vec![("PGWARDEN__LISTEN__ADRESS".to_string(), "x".to_string())];
    let err = load_str("", env).unwrap_err();
    assert!(err.to_string().contains("listen.adress: unknown key"), "{err}");
}

#[test]
fn secrets_come_from_env_or_file_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "s3cret\n").unwrap();
    let s = Secret::File(path.display().to_string()).resolve().unwrap();
    assert_eq!(s.expose(), "s3cret");
    assert_eq!(format!("{s:?}"), "[redacted]");

    let err = Secret::Env("PGWARDEN_TEST_SURELY_UNSET_VAR".into()).resolve().unwrap_err();
    assert!(err.contains("PGWARDEN_TEST_SURELY_UNSET_VAR is not set"));

    let text = format!(
        "[upstream]\nadmin_user = \"pgwarden\"\nadmin_password = \"file:{}\"\n",
        path.display()
    );
    let c = load_str(&text, no_env()).unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn max_message_bytes_is_bounded() {
    let p = problems("[listen]\nmax_message_bytes = 10\n");
    assert!(p[0].starts_with("listen.max_message_bytes"), "{p:?}");
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Secrets come from the operator's environment, which this test
            // does not have; the check-config test in integration/ sets them.
            match load_str(&text, no_env()) {
                Ok(_) => {}
                Err(ConfigError::Invalid(problems)) => {
                    let real: Vec<&String> =
                        problems.iter().filter(|p| !p.contains("is not set")).collect();
                    assert!(real.is_empty(), "{} is invalid: {real:?}", path.display());
                }
                Err(e) => panic!("{} is invalid: {e}", path.display()),
            }
            seen += 1;
        }
    }
    assert!(seen >= 1, "no example configs in {}", dir.display());
}

#[test]
fn config_error_lists_problems_one_per_line() {
    let e = ConfigError::Invalid(vec!["a: x".into(), "b: y".into()]);
    assert_eq!(e.to_string(), "invalid configuration:\n  a: x\n  b: y");
    let _ = Config::default();
}

#[test]
fn encrypted_columns_are_read_with_their_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "x").unwrap();
    let c = load_str(
        &format!(
            r#"
[upstream]
admin_user = "pgwarden"

[keys]
master_key = "file:{}"

[[columns]]
name = "public.customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"
compliance = ["PCI_DSS", "GDPR"]

[[columns]]
name = "public.customers.card_number"
type = "int8"
mode = "randomized"
key = "pci"
classification = "restricted"
"#,
            key.display()
        ),
        no_env(),
    )
    .unwrap();
    assert_eq!(c.columns.len(), 2);
    assert_eq!(c.columns[0].parts(), Some(("public", "customers", "ssn")));
    assert_eq!(c.columns[0].logical_type, crate::LogicalType::Text);
    assert_eq!(c.columns[0].classification, crate::Classification::Confidential);
    assert_eq!(c.columns[1].mode, crate::ColumnMode::Randomized);
}

#[test]
fn column_problems_are_reported_with_their_index() {
    let p = problems(
        r#"
[[columns]]
name = "customers.ssn"
type = "text"
mode = "deterministic"
key = "Bad Key"
compliance = ["PCI"]

[[columns]]
name = "customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"
"#,
    )
    .join("\n");
    for want in [
        "columns[0].name:",
        "columns[0].key:",
        "columns[0].compliance[0]: unknown framework",
        "columns[1].name: customers.ssn is registered twice",
        "keys.master_key: required",
        "upstream.admin_user: required",
    ] {
        assert!(p.contains(want), "missing {want} in:\n{p}");
    }
}

#[test]
fn an_unknown_logical_type_names_its_key() {
    let p = problems(
        "[[columns]]\nname = \"a.b.c\"\ntype = \"money\"\nmode = \"deterministic\"\nkey = \"k\"\n",
    );
    assert!(p[0].contains("money") && p[0].contains("type"), "{p:?}");
}

#[test]
fn metrics_address_defaults_to_best_effort_loopback_and_empty_turns_it_off() {
    use crate::AdminListen;
    let default = load_str("", no_env()).unwrap();
    assert_eq!(default.metrics.listen(), AdminListen::Default("127.0.0.1:9187".parse().unwrap()));

    let set = load_str("[metrics]\naddress = \"0.0.0.0:9999\"\n", no_env()).unwrap();
    assert_eq!(set.metrics.listen(), AdminListen::Configured("0.0.0.0:9999".parse().unwrap()));

    let off = load_str("[metrics]\naddress = \"\"\n", no_env()).unwrap();
    assert_eq!(off.metrics.listen(), AdminListen::Off);

    let env = vec![("PGWARDEN__METRICS__ADDRESS".to_string(), String::new())];
    assert_eq!(load_str("", env).unwrap().metrics.listen(), AdminListen::Off);
}

#[test]
fn metrics_address_must_parse_and_differ_from_the_listen_address() {
    let p = problems("[metrics]\naddress = \"localhost\"\nport = 1\n").join("\n");
    assert!(p.contains("metrics.address: \"localhost\" is not an IP address"), "{p}");
    assert!(p.contains("metrics.port: unknown key"), "{p}");

    let p =
        problems("[listen]\naddress = \"0.0.0.0:7000\"\n[metrics]\naddress = \"127.0.0.1:7000\"\n");
    assert_eq!(p, vec!["metrics.address: must differ from listen.address".to_string()]);
}

#[test]
fn policy_problems_are_reported_with_their_key_paths() {
    let p = problems(
        r#"
[keys]
master_key = "env:PGWARDEN_TEST_UNSET_KEY"
[upstream]
admin_user = "pgwarden"
[[columns]]
name = "public.customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"
[[columns]]
name = "public.customers.born"
type = "date"
mode = "randomized"
key = "pii"

[access]
default = "masked"

[[policies]]
roles = ["support"]
columns = ["public.customers.*"]
access = "masked"
mask = "lats4"

[[policies]]
roles = []
columns = ["public.orders.*", "customers.ssn"]
access = "full"
mask = "last4"

[[policies]]
roles = ["analyst"]
columns = ["public.customers.*"]
access = "masked"
mask = "year"
"#,
    );
    let joined = p.join("\n");
    for expected in [
        "access.mask: access \"masked\" needs a mask",
        "policies[0].mask: \"lats4\" is not a mask",
        "policies[1].roles: name at least one role",
        "policies[1].columns[0]: \"public.orders.*\" matches no registered column",
        "policies[1].columns[1]: \"customers.ssn\" is not schema.table.column",
        "policies[1].mask: only access \"masked\" takes a mask",
        "policies[2].mask: year applies to date, timestamp and timestamptz columns; \
         public.customers.ssn is text",
    ] {
        assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
    }
    assert!(!joined.contains("public.customers.born is"), "{joined}");
}

#[test]
fn access_defaults_to_deny_and_policies_to_writable() {
    let c = load_str(
        "[[policies]]\nroles = [\"*\"]\ncolumns = [\"*\"]\naccess = \"ciphertext\"\n",
        no_env(),
    )
    .unwrap_err();
    // No registered column for "*" to match: an error, but the defaults parse.
    assert!(c.problems().iter().any(|p| p.contains("matches no registered column")));
    let c: Config =
        toml::from_str("[[policies]]\nroles = [\"a\"]\ncolumns = [\"*\"]\naccess = \"full\"\n")
            .unwrap();
    assert_eq!(c.access.default, crate::AccessLevel::Deny);
    assert!(c.policies[0].write);
}

#[test]
fn audit_is_off_by_default_and_existing_configs_are_unchanged() {
    let c = load_str("[listen]\naddress = \"127.0.0.1:6432\"\n", no_env()).unwrap();
    assert!(!c.audit.enabled());
    assert_eq!(c.audit.on_overflow, crate::Overflow::Block);
    assert_eq!(c.audit.statement_literals, crate::StatementLiterals::Redacted);
}

#[test]
fn audit_problems_name_their_key_paths() {
    let p = problems(
        "[audit]\nsinks = [\"file\", \"file\", \"postgres\"]\nrotate_bytes = 10\n\
         exclude_fingerprints = [\"xyz\"]\nqueue_capacity = 0\nfsync_interval = \"soon\"\n",
    );
    for key in [
        "audit.sinks: File is listed twice",
        "audit.key: required",
        "audit.rotate_bytes",
        "audit.exclude_fingerprints",
        "audit.queue_capacity",
        "audit.fsync_interval",
        "audit.sinks: the postgres sink needs upstream.admin_user",
    ] {
        assert!(p.iter().any(|x| x.starts_with(key)), "{key} missing from {p:?}");
    }
}

#[test]
fn audit_key_must_be_a_secret_reference_of_at_least_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "tooshort").unwrap();
    let text = format!("[audit]\nsinks = [\"stdout\"]\nkey = \"file:{}\"\n", short.display());
    let p = problems(&text);
    assert!(p.iter().any(|x| x.starts_with("audit.key: must be at least 32")), "{p:?}");
    let p =
        problems("[audit]\nsinks = [\"stdout\"]\nkey = \"inline-secret-value-0123456789abcdef\"\n");
    assert!(p.iter().any(|x| x.starts_with("audit.key: a secret must be")), "{p:?}");
    assert!(!p.iter().any(|x| x.contains("inline-secret")), "{p:?}");
    let long = dir.path().join("long.key");
    std::fs::write(&long, "0123456789abcdef0123456789abcdef\n").unwrap();
    let text = format!("[audit]\nsinks = [\"stdout\"]\nkey = \"file:{}\"\n", long.display());
    assert!(problems(&text).is_empty());
}
