//! Access per role end to end: one table, several login roles, and what each
//! sees of its encrypted columns through the simple and the extended
//! protocol — the value, a mask, the envelope, or a 42501 — and what it may
//! write; `SET ROLE` never widens it; a reloaded policy applies from the next
//! statement, prepared ones included.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use pgwarden_config::{AccessLevel, Policy};
use pgwarden_integration::encrypted;
use pgwarden_integration::{connect, url, TestEnv, PASSWORD};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn bytea, card bytea, email bytea);
CREATE TABLE masks (id int PRIMARY KEY, t bytea, i8 bytea, num bytea, f8 bytea, d bytea,
  ts bytea, tstz bytea, i4 bytea);
";

/// Login roles, all with the harness' password. `reader` and `boss` are
/// granted to others, so that SET ROLE to them is allowed by Postgres.
const ROLES: &str = "
CREATE ROLE full_r LOGIN PASSWORD '{pw}';
CREATE ROLE masked_r LOGIN PASSWORD '{pw}';
CREATE ROLE denied_r LOGIN PASSWORD '{pw}';
CREATE ROLE etl_r LOGIN PASSWORD '{pw}';
CREATE ROLE masker LOGIN PASSWORD '{pw}';
CREATE ROLE super_masked SUPERUSER LOGIN PASSWORD '{pw}';
GRANT full_r TO masked_r, denied_r;
GRANT ALL ON customers, masks TO full_r, masked_r, denied_r, etl_r, masker;
";

const REGISTRY: &str = r#"
[[columns]]
name = "public.customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"

[[columns]]
name = "public.customers.card"
type = "text"
mode = "randomized"
key = "pci"

[[columns]]
name = "public.customers.email"
type = "text"
mode = "deterministic"
key = "pii"

[[columns]]
name = "public.masks.t"
type = "text"
mode = "deterministic"
key = "pii"

[[columns]]
name = "public.masks.i8"
type = "int8"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.num"
type = "numeric"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.f8"
type = "float8"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.d"
type = "date"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.ts"
type = "timestamp"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.tstz"
type = "timestamptz"
mode = "randomized"
key = "pii"

[[columns]]
name = "public.masks.i4"
type = "int4"
mode = "randomized"
key = "pii"
"#;

/// The policies the tests start with; `default` is left at deny.
const POLICIES: &str = r#"
[[policies]]
roles = ["full_r", "pgw_scram"]
columns = ["*"]
access = "full"

[[policies]]
roles = ["masked_r", "super_masked"]
columns = ["public.customers.ssn"]
access = "masked"
mask = "partial(0, '***-**-', 4)"
write = false

[[policies]]
roles = ["masked_r", "super_masked"]
columns = ["public.customers.card"]
access = "masked"
mask = "last4"
write = false

[[policies]]
roles = ["masked_r", "super_masked"]
columns = ["public.customers.email"]
access = "masked"
mask = "email"

[[policies]]
roles = ["denied_r"]
columns = ["public.customers.*"]
access = "full"

[[policies]]
roles = ["denied_r"]
columns = ["public.customers.ssn"]
access = "deny"

[[policies]]
roles = ["etl_r"]
columns = ["public.customers.*"]
access = "ciphertext"

[[policies]]
roles = ["masker"]
columns = ["public.masks.t"]
access = "masked"
mask = "hash"

[[policies]]
roles = ["masker"]
columns = ["public.masks.i8"]
access = "masked"
mask = "last4"

[[policies]]
roles = ["masker"]
columns = ["public.masks.num", "public.masks.f8"]
access = "masked"
mask = "round(-3)"

[[policies]]
roles = ["masker"]
columns = ["public.masks.i4"]
access = "masked"
mask = "round(1)"

[[policies]]
roles = ["masker"]
columns = ["public.masks.d", "public.masks.ts", "public.masks.tstz"]
access = "masked"
mask = "year"
"#;

const ROWS: &str = "
INSERT INTO customers (id, name, ssn, card, email) VALUES
  (1, 'Ann', '123-45-6789', '4111111111111111', 'ann@example.com'),
  (2, 'Bob', '987-65-4321', '5500005555555559', 'bob.smith@example.org');
INSERT INTO masks (id, t, i8, num, f8, d, ts, tstz, i4) VALUES
  (1, 'same', 1234567890, 52345.678, 1499.5, '1984-06-01', '2001-02-03 04:05:06',
   '1999-12-31 23:30:00-02', 7),
  (2, 'same', -42, -999.9, 2500.25, '0044-03-15 BC', '2026-12-04 00:00:00',
   '2026-01-01 00:00:00+00', -12),
  (3, 'other', 99, 0.4, 1.5e-7, '2020-02-29', '2020-02-29 12:00:00', '2020-02-29 12:00:00Z', 0);
";

struct Env {
    env: TestEnv,
    config: pgwarden_config::Config,
    _dir: tempfile::TempDir,
}

async fn start() -> Env {
    let (pg, config, dir) = encrypted::prepare(SCHEMA, &format!("{REGISTRY}{POLICIES}")).await;
    pg.psql("postgres", &ROLES.replace("{pw}", PASSWORD)).unwrap();
    encrypted::init(&pg, &config).await;
    let env = TestEnv::start_on(pg, config.clone()).await;
    let writer = connect(&env.proxy_url("full_r", "postgres")).await;
    writer.batch_execute(ROWS).await.unwrap();
    Env { env, config, _dir: dir }
}

impl Env {
    async fn client(&self, role: &str) -> Client {
        connect(&url(self.env.proxy_addr.port(), role, "postgres")).await
    }

    /// Puts `policies` in force in place of the starting ones, as SIGHUP
    /// with an edited file does.
    fn reload(&self, policies: Vec<Policy>) {
        let mut config = self.config.clone();
        config.policies = policies;
        self.env.handle.reload(config).unwrap();
    }
}

/// The rows of the simple query's result, as text.
async fn simple(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| sqlstate(&e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn row(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_sees_what_its_policy_grants_in_both_protocols() {
    let env = start().await;
    let sql = "SELECT name, ssn, card, email FROM customers ORDER BY id";
    let full = env.client("full_r").await;
    assert_eq!(
        simple(&full, sql).await.unwrap(),
        vec![
            row(&["Ann", "123-45-6789", "4111111111111111", "ann@example.com"]),
            row(&["Bob", "987-65-4321", "5500005555555559", "bob.smith@example.org"]),
        ]
    );
    let masked = env.client("masked_r").await;
    let expected = vec![
        row(&["Ann", "***-**-6789", "************1111", "a***@example.com"]),
        row(&["Bob", "***-**-4321", "************5559", "b***@example.org"]),
    ];
    assert_eq!(simple(&masked, sql).await.unwrap(), expected);
    assert_eq!(
        simple(&masked, "SELECT * FROM customers ORDER BY id").await.unwrap()[0][2],
        Some("***-**-6789".into())
    );
    // Extended protocol, binary results: masked columns are text to the client.
    let stmt = masked.prepare(sql).await.unwrap();
    assert!(stmt.columns().iter().skip(1).all(|c| *c.type_() == Type::TEXT));
    let rows = masked.query(&stmt, &[]).await.unwrap();
    let got: Vec<Vec<Option<String>>> =
        rows.iter().map(|r| (0..4).map(|i| r.get::<_, Option<String>>(i)).collect()).collect();
    assert_eq!(got, expected);
    // Equality search still works for a masked role; what it gets back is masked.
    let r = masked.query_one("SELECT ssn FROM customers WHERE ssn = $1", &[&"987-65-4321"]).await;
    assert_eq!(r.unwrap().get::<_, &str>(0), "***-**-4321");

    // Ciphertext: the envelope itself, as bytea.
    let etl = env.client("etl_r").await;
    let stmt = etl.prepare("SELECT ssn, card FROM customers ORDER BY id").await.unwrap();
    assert!(stmt.columns().iter().all(|c| *c.type_() == Type::BYTEA));
    for r in etl.query(&stmt, &[]).await.unwrap() {
        for i in 0..2 {
            assert!(r.get::<_, &[u8]>(i).starts_with(b"PW\x01"), "not an envelope");
        }
    }
    let text = simple(&etl, "SELECT ssn FROM customers ORDER BY id").await.unwrap();
    assert!(text[0][0].as_deref().unwrap().starts_with("\\x505701"), "{text:?}");

    // No rule for the role: [access] default, deny.
    let nobody = connect(&url(env.env.proxy_addr.port(), "pgw_md5", "postgres")).await;
    assert_eq!(simple(&nobody, "SELECT card FROM customers").await.unwrap_err(), "42501");
    assert_eq!(simple(&nobody, "SELECT name FROM customers ORDER BY id").await.unwrap().len(), 2);
}

/// `SELECT * FROM customers`, spelt so that the analysis never sees the
/// table: only the RowDescription tells.
const BACKSTOPPED: &str = r#"SELECT * FROM U&"cust\006fmers""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_column_fails_every_statement_that_reads_or_filters_on_it() {
    let env = start().await;
    let denied = env.client("denied_r").await;
    for sql in [
        "SELECT ssn FROM customers",
        "SELECT * FROM customers",
        "SELECT c.* FROM customers c",
        "SELECT name FROM customers WHERE ssn = '123-45-6789'",
        "SELECT name FROM customers WHERE ssn IS NULL",
        "SELECT a.name FROM customers a JOIN customers b ON a.ssn = b.ssn",
        "SELECT ssn, count(*) FROM customers GROUP BY ssn",
        "SELECT name FROM (SELECT * FROM customers) s",
        "WITH c AS (SELECT ssn FROM customers) SELECT count(*) FROM c",
        "SELECT name FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn = 'x')",
        "UPDATE customers SET name = name WHERE id = 1 RETURNING *",
        "DELETE FROM customers WHERE id = 99 RETURNING ssn",
        "COPY customers TO STDOUT",
        "COPY (SELECT ssn FROM customers) TO STDOUT",
        // The table's name escaped past the analyser's pre-filter: refused by
        // the backstop on the result.
        BACKSTOPPED,
    ] {
        assert_eq!(simple(&denied, sql).await.unwrap_err(), "42501", "{sql}");
        let err = denied.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "extended: {sql}");
        let message = err.as_db_error().unwrap().message();
        assert!(message.contains("public.customers.ssn"), "{message}");
        assert!(!message.contains("123-45-6789"), "{message}");
    }
    // The other columns are the role's, and the session is still usable.
    let rows = simple(&denied, "SELECT name, card FROM customers ORDER BY id").await.unwrap();
    assert_eq!(rows[0], row(&["Ann", "4111111111111111"]));
    // Writing the column is allowed (write = true): an intake form that can
    // not read back.
    denied
        .batch_execute("INSERT INTO customers (id, name, ssn) VALUES (3, 'Cy', '111-22-3333')")
        .await
        .unwrap();

    // Inside a transaction, the refusal aborts it as a Postgres error would.
    denied.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(&denied, "SELECT ssn FROM customers").await.unwrap_err(), "42501");
    assert_eq!(simple(&denied, "SELECT 1").await.unwrap_err(), "25P02");
    denied.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(simple(&denied, "SELECT 1").await.unwrap(), vec![row(&["1"])]);
    // The same when the backstop refuses the result, in either protocol.
    for extended in [false, true] {
        denied.batch_execute("BEGIN").await.unwrap();
        let refused = if extended {
            sqlstate(&denied.query(BACKSTOPPED, &[]).await.unwrap_err())
        } else {
            simple(&denied, BACKSTOPPED).await.unwrap_err()
        };
        assert_eq!(refused, "42501");
        assert_eq!(simple(&denied, "SELECT 1").await.unwrap_err(), "25P02", "extended: {extended}");
        denied.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(simple(&denied, "SELECT 2").await.unwrap(), vec![row(&["2"])]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_false_refuses_writes_of_the_column_and_nothing_else() {
    let env = start().await;
    let masked = env.client("masked_r").await;
    for sql in [
        "UPDATE customers SET ssn = '000-00-0000' WHERE id = 1",
        "INSERT INTO customers (id, name, ssn) VALUES (9, 'Eve', '000-00-0000')",
        "INSERT INTO customers (id, card) VALUES (1, '4000000000000002') \
         ON CONFLICT (id) DO UPDATE SET card = EXCLUDED.card",
    ] {
        assert_eq!(simple(&masked, sql).await.unwrap_err(), "42501", "{sql}");
        let err = masked.execute(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "extended: {sql}");
    }
    let copy = masked.copy_in::<_, bytes::Bytes>("COPY customers (id, ssn) FROM STDIN").await;
    assert_eq!(sqlstate(&copy.err().expect("COPY FROM is refused")), "42501");
    // Columns the rule does not forbid are written as usual.
    masked
        .execute("UPDATE customers SET name = 'Anna', email = 'anna@example.com' WHERE id = 1", &[])
        .await
        .unwrap();
    let full = env.client("full_r").await;
    let rows = simple(&full, "SELECT name, email, ssn FROM customers WHERE id = 1").await.unwrap();
    assert_eq!(rows, vec![row(&["Anna", "anna@example.com", "123-45-6789"])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_and_session_authorization_never_widen_access() {
    let env = start().await;
    let sql = "SELECT ssn FROM customers WHERE id = 1";
    let masked = env.client("masked_r").await;
    masked.batch_execute("SET ROLE full_r").await.unwrap();
    assert_eq!(simple(&masked, "SELECT current_user").await.unwrap(), vec![row(&["full_r"])]);
    assert_eq!(simple(&masked, sql).await.unwrap(), vec![row(&["***-**-6789"])]);
    masked.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(simple(&masked, sql).await.unwrap(), vec![row(&["***-**-6789"])]);

    let denied = env.client("denied_r").await;
    denied.batch_execute("SET ROLE full_r").await.unwrap();
    assert_eq!(simple(&denied, sql).await.unwrap_err(), "42501");

    let superuser = env.client("super_masked").await;
    superuser.batch_execute("SET SESSION AUTHORIZATION full_r").await.unwrap();
    assert_eq!(simple(&superuser, "SELECT session_user").await.unwrap(), vec![row(&["full_r"])]);
    assert_eq!(simple(&superuser, sql).await.unwrap(), vec![row(&["***-**-6789"])]);
    assert_eq!(superuser.query_one(sql, &[]).await.unwrap().get::<_, &str>(0), "***-**-6789");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mask_on_its_types_in_text_and_binary() {
    let env = start().await;
    let masker = env.client("masker").await;
    let sql = "SELECT t, i8, num, f8, d, ts, tstz, i4 FROM masks ORDER BY id";
    let text = simple(&masker, sql).await.unwrap();
    let hash = |r: usize| text[r][0].clone().unwrap();
    assert_eq!(hash(0).len(), 64);
    assert!(hash(0).bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(hash(0), hash(1), "equal values give equal hashes");
    assert_ne!(hash(0), hash(2));
    assert!(!hash(0).contains("same"));
    let rest: Vec<Vec<Option<String>>> = text.iter().map(|r| r[1..].to_vec()).collect();
    assert_eq!(
        rest,
        vec![
            row(&["******7890", "52000", "1000", "1984", "2001", "2000", "7.0"]),
            row(&["***", "-1000", "3000", "0044 BC", "2026", "2026", "-12.0"]),
            row(&["**", "0", "0", "2020", "2020", "2020", "0.0"]),
        ]
    );
    // Binary results give the same text.
    let rows = masker.query(sql, &[]).await.unwrap();
    for (r, expected) in rows.iter().zip(&text) {
        let got: Vec<Option<String>> = (0..8).map(|i| r.get(i)).collect();
        assert_eq!(&got, expected);
    }
    // Hashed values still group, as the ciphertext they come from does.
    let groups = simple(&masker, "SELECT t, count(*) FROM masks GROUP BY t ORDER BY 2").await;
    let counts: Vec<Option<String>> = groups.unwrap().into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(counts, vec![Some("1".into()), Some("2".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_applies_from_the_next_statement_prepared_ones_included() {
    let env = start().await;
    let client = env.client("pgw_scram").await;
    let stmt = client.prepare("SELECT ssn FROM customers WHERE id = $1").await.unwrap();
    let ssn = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, String>(0);
    assert_eq!(ssn(client.query(&stmt, &[&1i32]).await.unwrap()), "123-45-6789");

    let policy = |access: AccessLevel, mask: Option<&str>| {
        vec![Policy {
            roles: vec!["pgw_scram".into()],
            columns: vec!["public.customers.*".into()],
            access,
            mask: mask.map(str::to_string),
            write: true,
        }]
    };
    env.reload(policy(AccessLevel::Masked, Some("last4")));
    assert_eq!(ssn(client.query(&stmt, &[&1i32]).await.unwrap()), "*******6789");
    assert_eq!(
        simple(&client, "SELECT ssn FROM customers WHERE id = 1").await.unwrap(),
        vec![row(&["*******6789"])]
    );

    env.reload(policy(AccessLevel::Deny, None));
    let err = client.query(&stmt, &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(
        simple(&client, "SELECT name FROM customers WHERE id = 1").await.unwrap(),
        vec![row(&["Ann"])]
    );

    env.reload(policy(AccessLevel::Full, None));
    assert_eq!(ssn(client.query(&stmt, &[&1i32]).await.unwrap()), "123-45-6789");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_each_role_its_own_view_including_copy() {
    let env = start().await;
    let port = env.env.proxy_addr.port();
    let psql = |role: &str, script: &str| {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0"])
            .arg(url(port, role, "postgres"))
            .args(["-c", script])
            .output()
            .expect("psql runs (apt-get install postgresql-client)");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, _) = psql("masked_r", "\\copy (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT");
    assert_eq!(out, "1\t***-**-6789\n2\t***-**-4321\n");
    let (out, _) = psql("full_r", "SELECT ssn FROM customers WHERE ssn = '987-65-4321'");
    assert_eq!(out, "987-65-4321\n");
    let (out, _) = psql("masker", "\\copy masks (id, d, i4) TO STDOUT");
    assert_eq!(out.lines().nth(1), Some("2\t0044 BC\t-12.0"), "{out}");
    let (out, err) = psql("denied_r", "\\copy customers TO STDOUT");
    assert_eq!(out, "");
    assert!(err.contains("may not read encrypted column public.customers.ssn"), "{err}");

    // COPY prepared through the extended protocol (tokio-postgres) masks too.
    let masked = env.client("masked_r").await;
    let sql = "COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT";
    let text = pgwarden_integration::copy_out(&masked, sql).await;
    assert_eq!(String::from_utf8(text).unwrap(), "1\t***-**-6789\n2\t***-**-4321\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_sees_masks_with_prepared_statements_and_binary_results() {
    let env = start().await;
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        for _ in range(3):  # the third execution runs a server-side prepared statement
            cur.execute("SELECT ssn, card FROM customers WHERE id = %s", (2,), prepare=True)
            print(binary, cur.fetchone())
    try:
        conn.execute("SELECT ssn FROM customers WHERE ssn = %s", ("987-65-4321",), prepare=True)
        conn.execute("UPDATE customers SET ssn = %s WHERE id = 2", ("000",))
    except psycopg.errors.InsufficientPrivilege as e:
        print("refused", e.sqlstate)
"#;
    let out = std::process::Command::new(pgwarden_integration::python::interpreter())
        .args(["-c", script, &url(env.env.proxy_addr.port(), "masked_r", "postgres")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let expected = "('***-**-4321', '************5559')";
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    for line in &lines[..6] {
        assert!(line.ends_with(expected), "{stdout}");
    }
    assert_eq!(lines[6], "refused 42501");
}

/// One sample of the Prometheus text, by its exact series.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crypto_masking_and_denials_are_counted_per_column() {
    let env = start().await;
    let (_, before) = env.env.admin_get("/metrics").await;
    // The rows written at start: one ssn per customer, one t per masks row.
    let enc =
        |c: &str| format!("pgwarden_crypto_operations_total{{column=\"{c}\",op=\"encrypt\"}}");
    let dec =
        |c: &str| format!("pgwarden_crypto_operations_total{{column=\"{c}\",op=\"decrypt\"}}");
    let masked = |c: &str| format!("pgwarden_masked_values_total{{column=\"{c}\"}}");
    let denied = "pgwarden_denied_total{reason=\"column_access\"}";
    assert_eq!(sample(&before, &enc("public.customers.ssn")), 2.0);
    assert_eq!(sample(&before, &enc("public.masks.t")), 3.0);
    assert_eq!(sample(&before, &dec("public.customers.ssn")), 0.0);

    let full = env.client("full_r").await;
    simple(&full, "SELECT ssn FROM customers").await.unwrap();
    full.query("SELECT ssn, card FROM customers WHERE ssn = $1", &[&"123-45-6789"]).await.unwrap();
    let masked_r = env.client("masked_r").await;
    simple(&masked_r, "SELECT ssn FROM customers").await.unwrap();
    let denied_r = env.client("denied_r").await;
    simple(&denied_r, "SELECT ssn FROM customers").await.unwrap_err();
    denied_r.query("SELECT * FROM customers", &[]).await.unwrap_err();

    let (_, after) = env.env.admin_get("/metrics").await;
    assert_eq!(sample(&after, &dec("public.customers.ssn")), 5.0);
    assert_eq!(sample(&after, &dec("public.customers.card")), 1.0);
    // The equality parameter was encrypted.
    assert_eq!(sample(&after, &enc("public.customers.ssn")), 3.0);
    assert_eq!(sample(&after, &masked("public.customers.ssn")), 2.0);
    assert_eq!(sample(&after, &masked("public.customers.card")), 0.0);
    assert_eq!(sample(&after, denied) - sample(&before, denied), 2.0);
    assert!(!after.contains("123-45-6789") && !after.contains("full_r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_registered_column_has_no_active_key() {
    let env = start().await;
    assert_eq!(env.env.admin_get("/readyz").await.0, 200);
    let admin = env.env.direct_client().await;
    admin
        .batch_execute(
            "UPDATE pgwarden.encryption_keys SET key_status = 'DEPRECATED' WHERE key_name = 'pci'",
        )
        .await
        .unwrap();
    env.env.handle.reload_keys().await.unwrap();
    let (status, body) = env.env.admin_get("/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (503, "not ready: column public.customers.card has no ACTIVE data key pci to write with")
    );
    // Reads of what the deprecated key sealed go on.
    let full = env.client("full_r").await;
    assert_eq!(
        simple(&full, "SELECT card FROM customers WHERE id = 1").await.unwrap(),
        vec![row(&["4111111111111111"])]
    );
    admin
        .batch_execute(
            "UPDATE pgwarden.encryption_keys SET key_status = 'ACTIVE' WHERE key_name = 'pci'",
        )
        .await
        .unwrap();
    env.env.handle.reload_keys().await.unwrap();
    assert_eq!(env.env.admin_get("/readyz").await.0, 200);
}

/// A `ciphertext` role (backups, ETL) writes back what it reads: envelopes
/// go in as they are, through literals, parameters and COPY, once they open
/// under their column's key and AAD; anything else is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_role_writes_back_the_envelopes_it_reads() {
    use futures_util::SinkExt;
    let env = start().await;
    let etl = env.client("etl_r").await;
    let full = env.client("full_r").await;
    let original = simple(&full, "SELECT ssn, card FROM customers WHERE id = 1").await.unwrap();

    let read = etl.query_one("SELECT ssn, card FROM customers WHERE id = 1", &[]).await.unwrap();
    let (ssn, card): (Vec<u8>, Vec<u8>) = (read.get(0), read.get(1));
    // Parameters, in binary; reported to the client as bytea.
    let insert = etl.prepare("INSERT INTO customers (id, ssn, card) VALUES ($1, $2, $3)").await;
    let insert = insert.unwrap();
    assert_eq!(insert.params(), [Type::INT4, Type::BYTEA, Type::BYTEA]);
    etl.execute(&insert, &[&10i32, &ssn, &card]).await.unwrap();
    // A literal, in bytea's hex text, as a simple query reads it.
    let hex = simple(&etl, "SELECT ssn FROM customers WHERE id = 1").await.unwrap();
    let hex = hex[0][0].clone().unwrap();
    etl.batch_execute(&format!("INSERT INTO customers (id, ssn) VALUES (11, '{hex}')"))
        .await
        .unwrap();
    // COPY out and back in.
    let sql = "COPY (SELECT id + 100, ssn, card FROM customers WHERE id = 1) TO STDOUT";
    let dump = pgwarden_integration::copy_out(&etl, sql).await;
    assert!(dump.starts_with(b"101\t\\\\x50570102"), "{}", String::from_utf8_lossy(&dump));
    let sink = etl.copy_in("COPY customers (id, ssn, card) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(dump)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);

    // Whoever may read them sees the original values.
    for (id, expected) in [(10, original[0].clone()), (101, original[0].clone())] {
        let sql = format!("SELECT ssn, card FROM customers WHERE id = {id}");
        assert_eq!(simple(&full, &sql).await.unwrap(), [expected], "row {id}");
    }
    let got = simple(&full, "SELECT ssn FROM customers WHERE id = 11").await.unwrap();
    assert_eq!(got, [vec![original[0][0].clone()]]);
    // Equality search with an envelope finds the row, as the envelope is what
    // the role sees.
    let found = etl.query("SELECT id FROM customers WHERE ssn = $1 ORDER BY id", &[&ssn]).await;
    let ids: Vec<i32> = found.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 10, 11, 101]);

    // Plaintext, another column's envelope, damaged bytes: refused, nothing
    // of the value in the message.
    let mut damaged = ssn.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    for (value, what) in
        [(b"123-45-6789".to_vec(), "plaintext"), (card, "card"), (damaged, "damaged")]
    {
        let e = etl.execute(&insert, &[&20i32, &value, &None::<Vec<u8>>]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "22P02", "{what}: {e}");
        let message = e.as_db_error().unwrap().message().to_string();
        assert!(message.contains("public.customers.ssn"), "{message}");
        assert!(!message.contains("123-45"), "{message}");
    }
    let e = simple(&etl, "INSERT INTO customers (id, ssn) VALUES (21, '123-45-6789')").await;
    assert_eq!(e.unwrap_err(), "22P02");
    let count = simple(&full, "SELECT count(*) FROM customers WHERE id IN (20, 21)").await.unwrap();
    assert_eq!(count, [row(&["0"])]);
}
