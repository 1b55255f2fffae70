//! Transparent column encryption end to end: registered columns hold only
//! envelopes in Postgres and plaintext for clients of the proxy, through the
//! simple and the extended protocol, text and binary; unsupported uses are
//! refused before they reach Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pgwarden::crypto::MasterKey;
use pgwarden_config::Config;
use pgwarden_integration::encrypted;
use pgwarden_integration::wire::{self, Wire};
use pgwarden_integration::{roles, TestEnv, PASSWORD};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A table with an encrypted column of every logical type, and a customers
/// table as in the demo.
const SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text, ssn bytea, card bytea);
CREATE TABLE every_type (id int PRIMARY KEY,
  t bytea, vc bytea, c bytea, i2 bytea, i4 bytea, i8 bytea, num bytea, f4 bytea, f8 bytea,
  b bytea, d bytea, ts bytea, tstz bytea, u bytea, j bytea, jb bytea, by bytea);
";

/// (column, logical type) of `every_type`; all deterministic.
const EVERY_TYPE: &[(&str, &str)] = &[
    ("t", "text"),
    ("vc", "varchar"),
    ("c", "char"),
    ("i2", "int2"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("num", "numeric"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("b", "bool"),
    ("d", "date"),
    ("ts", "timestamp"),
    ("tstz", "timestamptz"),
    ("u", "uuid"),
    ("j", "json"),
    ("jb", "jsonb"),
    ("by", "bytea"),
];

struct Env {
    env: TestEnv,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

fn columns_toml() -> String {
    let mut toml = String::from(
        "[[columns]]\nname = \"public.customers.ssn\"\ntype = \"text\"\nmode = \"deterministic\"\n\
         key = \"pii\"\n\n[[columns]]\nname = \"public.customers.card\"\ntype = \"text\"\n\
         mode = \"randomized\"\nkey = \"pci\"\n\n[access]\ndefault = \"full\"\n\n",
    );
    for (col, ty) in EVERY_TYPE {
        toml.push_str(&format!(
            "[[columns]]\nname = \"public.every_type.{col}\"\ntype = \"{ty}\"\n\
             mode = \"deterministic\"\nkey = \"pii\"\n\n"
        ));
    }
    toml
}

async fn start() -> Env {
    let (pg, config, dir) = prepare().await;
    encrypted::init(&pg, &config).await;
    let env = TestEnv::start_on(pg, config).await;
    Env { env, _dir: dir }
}

/// A cluster with the schema, and a configuration registering its columns
/// under a new master key; no keys created yet.
async fn prepare() -> (pgwarden::cluster::Cluster, Config, tempfile::TempDir) {
    encrypted::prepare(SCHEMA, &columns_toml()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_does_not_start_without_its_keys_or_its_columns() {
    let (pg, mut config, dir) = prepare().await;
    let bind = |config: &Config| {
        let config = std::sync::Arc::new(config.clone());
        async move { pgwarden::Proxy::bind(config).await.err().expect("started").to_string() }
    };
    let e = bind(&config).await;
    assert!(e.contains("keys init"), "{e}");

    encrypted::init(&pg, &config).await;
    // Another master key does not open the data keys: a clear error, no garbage.
    let other = dir.path().join("other.key");
    std::fs::write(&other, MasterKey::generate().to_base64().expose()).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut wrong = config.clone();
    wrong.keys.master_key = Some(pgwarden_config::Secret::File(other.display().to_string()));
    let e = bind(&wrong).await;
    assert!(e.contains("master key"), "{e}");

    // A registered column missing from the database.
    pg.psql("postgres", "ALTER TABLE customers DROP COLUMN card").unwrap();
    let e = bind(&config).await;
    assert!(e.contains("public.customers.card"), "{e}");
    config.columns.retain(|c| c.name != "public.customers.card");
    assert!(pgwarden::Proxy::bind(std::sync::Arc::new(config)).await.is_ok());
}

/// The rows of the first result of a simple query, as text.
async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Postgres' name for a logical type in a cast.
fn pg_type(ty: &str) -> &str {
    match ty {
        "char" => "bpchar",
        other => other,
    }
}

/// A value's binary wire form, whatever its type.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_writes_envelopes_and_reads_plaintext() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    let direct = env.direct_client().await;
    proxy
        .batch_execute(
            "INSERT INTO customers (name, ssn, card) VALUES \
               ('Ann', '123-45-6789', '4111 1111 1111 1111'), \
               ('Bob', '987-65-4321', '4111 1111 1111 1111'), \
               ('Cy', NULL, DEFAULT)",
        )
        .await
        .unwrap();

    let got = rows(&proxy, "SELECT name, ssn, card FROM customers ORDER BY id").await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            vec![s("Ann"), s("123-45-6789"), s("4111 1111 1111 1111")],
            vec![s("Bob"), s("987-65-4321"), s("4111 1111 1111 1111")],
            vec![s("Cy"), None, None],
        ]
    );

    // Postgres holds envelopes: deterministic equal for equal plaintexts,
    // randomized different.
    let stored = rows(&direct, "SELECT ssn, card FROM customers ORDER BY id").await;
    for row in &stored[..2] {
        for v in row {
            let v = v.as_deref().unwrap();
            assert!(v.starts_with("\\x5057"), "not an envelope: {v}");
            assert!(!v.contains("313233"), "plaintext digits in {v}");
        }
    }
    assert_ne!(stored[0][1], stored[1][1], "randomized ciphertexts must differ");

    // Equality on the deterministic column, with =, IN and <>, and IS NULL.
    assert_eq!(
        rows(&proxy, "SELECT name FROM customers WHERE ssn = '123-45-6789'").await,
        [[s("Ann")]]
    );
    assert_eq!(
        rows(&proxy, "SELECT name FROM customers c WHERE c.ssn IN ('987-65-4321', 'x')").await,
        [[s("Bob")]]
    );
    assert_eq!(
        rows(&proxy, "SELECT name FROM customers WHERE ssn <> '123-45-6789'").await,
        [[s("Bob")]]
    );
    assert_eq!(rows(&proxy, "SELECT name FROM customers WHERE ssn IS NULL").await, [[s("Cy")]]);

    // UPDATE ... SET and DELETE with a deterministic predicate; RETURNING
    // decrypts.
    let returned = rows(
        &proxy,
        "UPDATE customers SET ssn = '111-11-1111', card = '5500 0000 0000 0004' \
         WHERE ssn = '987-65-4321' RETURNING ssn, card",
    )
    .await;
    assert_eq!(returned, [[s("111-11-1111"), s("5500 0000 0000 0004")]]);
    proxy.batch_execute("DELETE FROM customers WHERE ssn = '123-45-6789'").await.unwrap();
    assert_eq!(
        rows(&proxy, "SELECT name, ssn FROM customers ORDER BY id").await,
        [[s("Bob"), s("111-11-1111")], [s("Cy"), None]]
    );

    // SELECT *, aliases, joins, subqueries and CTEs decrypt by column origin.
    let star = rows(&proxy, "SELECT * FROM customers WHERE name = 'Bob'").await;
    assert_eq!(star[0][2], s("111-11-1111"));
    let joined = rows(
        &proxy,
        "WITH c AS (SELECT id, ssn AS x FROM customers) \
         SELECT a.x, b.card FROM c a JOIN (SELECT * FROM customers) b ON a.id = b.id \
         WHERE b.name = 'Bob'",
    )
    .await;
    assert_eq!(joined, [[s("111-11-1111"), s("5500 0000 0000 0004")]]);

    // ON CONFLICT ... DO UPDATE SET col = EXCLUDED.col
    proxy
        .batch_execute(
            "CREATE UNIQUE INDEX ON customers (name); \
             INSERT INTO customers (name, ssn) VALUES ('Bob', '222-22-2222') \
             ON CONFLICT (name) DO UPDATE SET ssn = EXCLUDED.ssn",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&proxy, "SELECT ssn FROM customers WHERE name = 'Bob'").await,
        [[s("222-22-2222")]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_encrypts_parameters_and_decrypts_binary_results() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    // tokio-postgres prepares every statement and reads results in binary.
    let insert = proxy
        .prepare("INSERT INTO customers (name, ssn, card) VALUES ($1, $2, $3) RETURNING id, ssn")
        .await
        .unwrap();
    assert_eq!(insert.params(), &[Type::TEXT, Type::TEXT, Type::TEXT]);
    assert_eq!(insert.columns()[1].type_(), &Type::TEXT);
    for (name, ssn) in [("Ann", "123-45-6789"), ("Bob", "987-65-4321")] {
        let row = proxy.query_one(&insert, &[&name, &ssn, &"4111"]).await.unwrap();
        assert_eq!(row.get::<_, &str>(1), ssn);
    }
    let by_ssn = proxy.prepare("SELECT name, card FROM customers WHERE ssn = $1").await.unwrap();
    assert_eq!(by_ssn.params(), &[Type::TEXT]);
    let row = proxy.query_one(&by_ssn, &[&"987-65-4321"]).await.unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("Bob", "4111"));
    // A NULL parameter stays NULL.
    proxy.execute(&insert, &[&"Cy", &None::<&str>, &None::<&str>]).await.unwrap();
    let row = proxy.query_one("SELECT ssn FROM customers WHERE name = $1", &[&"Cy"]).await.unwrap();
    assert_eq!(row.get::<_, Option<&str>>(0), None);

    // Pipelined: many statements in flight at once.
    let many: Vec<String> = (0..50).map(|i| format!("{i:03}-00-0000")).collect();
    let futures = many.iter().map(|ssn| {
        let (proxy, insert) = (&proxy, &insert);
        async move { proxy.execute(insert, &[&"P", ssn, &"c"]).await }
    });
    for r in futures_util::future::join_all(futures).await {
        r.unwrap();
    }
    let count: i64 = proxy
        .query_one(
            "SELECT count(*) FROM customers WHERE ssn IN ($1, $2)",
            &[&"007-00-0000", &"049-00-0000"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);

    // Simple and extended see the same rows.
    let ext: Vec<String> = proxy
        .query("SELECT ssn FROM customers WHERE name = 'P' ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(ext, many);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_logical_type_round_trips_in_text_and_binary() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    // Values as a client writes them (not canonical), and Postgres' output.
    let values: &[(&str, &str, &str)] = &[
        ("t", "héllo 'world'", "héllo 'world'"),
        ("vc", "varchar", "varchar"),
        ("c", "ab  ", "ab"),
        ("i2", "-007", "-7"),
        ("i4", "+2147483647", "2147483647"),
        ("i8", "-9223372036854775808", "-9223372036854775808"),
        ("num", "0012.3400", "12.34"),
        ("f4", "1.5e0", "1.5"),
        ("f8", "-0.25", "-0.25"),
        ("b", "yes", "t"),
        ("d", "2024-02-29", "2024-02-29"),
        ("ts", "2024-02-29 13:14:15.5", "2024-02-29 13:14:15.5"),
        ("tstz", "2024-02-29 13:14:15+00", "2024-02-29 13:14:15+00"),
        ("u", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("j", "{\"b\": 1, \"a\": [1, 2]}", "{\"b\": 1, \"a\": [1, 2]}"),
        ("jb", "{\"b\": 1,   \"a\": [1,2]}", "{\"a\": [1, 2], \"b\": 1}"),
        ("by", "\\xdeadbeef", "\\xdeadbeef"),
    ];
    proxy.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let cols: Vec<&str> = values.iter().map(|v| v.0).collect();
    let lits: Vec<String> =
        values.iter().map(|v| format!("'{}'", v.1.replace('\'', "''"))).collect();
    proxy
        .batch_execute(&format!(
            "INSERT INTO every_type (id, {}) VALUES (1, {})",
            cols.join(", "),
            lits.join(", ")
        ))
        .await
        .unwrap();
    // Text results (simple protocol).
    let text =
        rows(&proxy, &format!("SELECT {} FROM every_type WHERE id = 1", cols.join(", "))).await;
    let want: Vec<Option<String>> = values.iter().map(|v| Some(v.2.to_string())).collect();
    assert_eq!(text, [want]);

    // Binary parameters and results (tokio-postgres), through its own types.
    let row = proxy
        .query_one(
            "INSERT INTO every_type (id, t, i2, i4, i8, f8, b, by) \
             VALUES (2, $1, $2, $3, $4, $5, $6, $7) RETURNING t, i2, i4, i8, f8, b, by",
            &[&"binary", &-7i16, &42i32, &i64::MAX, &2.5f64, &true, &vec![0u8, 1, 255]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "binary");
    assert_eq!(row.get::<_, i16>(1), -7);
    assert_eq!(row.get::<_, i32>(2), 42);
    assert_eq!(row.get::<_, i64>(3), i64::MAX);
    assert_eq!(row.get::<_, f64>(4), 2.5);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, Vec<u8>>(6), vec![0u8, 1, 255]);

    // Row 1 in binary is byte for byte what Postgres sends for the same
    // values in columns of the real types, with the same type OIDs.
    let encrypted = proxy
        .query_one(&format!("SELECT {} FROM every_type WHERE id = 1", cols.join(", ")), &[])
        .await
        .unwrap();
    let casts: Vec<String> = values
        .iter()
        .zip(EVERY_TYPE)
        .map(|(v, (_, ty))| format!("'{}'::{}", v.2.replace('\'', "''"), pg_type(ty)))
        .collect();
    let native = proxy.query_one(&format!("SELECT {}", casts.join(", ")), &[]).await.unwrap();
    for (i, (col, _)) in EVERY_TYPE.iter().enumerate() {
        assert_eq!(encrypted.columns()[i].type_(), native.columns()[i].type_(), "{col}");
        let (a, b) = (encrypted.get::<_, Raw>(i), native.get::<_, Raw>(i));
        assert_eq!(a.0, b.0, "binary value of {col}");
    }

    // Equality works whatever form the value was written in.
    let n: i64 = proxy
        .query_one("SELECT count(*) FROM every_type WHERE i4 = $1 AND num = '12.340'", &[&i32::MAX])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_uses_are_refused_before_reaching_postgres() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    proxy
        .batch_execute("INSERT INTO customers (name, ssn, card) VALUES ('Ann', '1', '2')")
        .await
        .unwrap();
    for (sql, column) in [
        ("SELECT name FROM customers WHERE ssn LIKE '1%'", "public.customers.ssn"),
        ("SELECT name FROM customers ORDER BY ssn", "public.customers.ssn"),
        ("SELECT name FROM customers WHERE card = '2'", "public.customers.card"),
        ("SELECT upper(ssn) FROM customers", "public.customers.ssn"),
        ("UPDATE customers SET name = 'x' WHERE ssn < '5'", "public.customers.ssn"),
    ] {
        for extended in [false, true] {
            let e = if extended {
                proxy.query(sql, &[]).await.unwrap_err()
            } else {
                proxy.simple_query(sql).await.unwrap_err()
            };
            assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
            assert!(message(&e).contains(column), "{sql}: {}", message(&e));
        }
    }
    // In a batch, nothing of the refused string runs.
    let e = proxy
        .batch_execute(
            "UPDATE customers SET name = 'changed'; SELECT 1 FROM customers WHERE ssn LIKE 'x'",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    // A value invalid for the logical type: 22P02 naming the column, and the
    // value itself nowhere in the message.
    let e = proxy
        .batch_execute("INSERT INTO every_type (id, i4) VALUES (9, 'secret-not-a-number')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22P02", "{e}");
    assert!(message(&e).contains("public.every_type.i4"), "{}", message(&e));
    assert!(!message(&e).contains("secret-not-a-number"));
    // The same through Bind, on the wire: the error comes where Postgres would
    // put its own, what follows up to Sync is skipped, the next Sync works.
    let (mut wire, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let mut batch = wire::parse("", "INSERT INTO every_type (id, u) VALUES (9, $1)");
    batch.extend(wire::bind("", "", &[Some("secret-not-a-uuid")]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::parse("", "SELECT 1"));
    batch.extend(wire::sync());
    batch.extend(wire::parse("", "SELECT 2"));
    batch.extend(wire::bind("", "", &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::sync());
    wire.send(&batch).await;
    let msgs = wire.until_ready(2).await;
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "1EZ12DCZ", "{msgs:?}");
    let error = &msgs[1];
    assert_eq!(error.sqlstate().as_deref(), Some("22P02"));
    let text = error.field(b'M').unwrap();
    assert!(text.contains("public.every_type.u") && !text.contains("secret"), "{text}");
    // The session goes on, and nothing was written.
    let names = rows(&proxy, "SELECT name FROM customers").await;
    assert_eq!(names, [[Some("Ann".to_string())]]);
    let n = rows(&proxy, "SELECT count(*) FROM every_type").await;
    assert_eq!(n, [[Some("0".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_moved_ciphertext_fails_with_xx001() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    let direct = env.direct_client().await;
    proxy
        .batch_execute(
            "INSERT INTO customers (name, ssn, card) VALUES ('Ann', '123-45-6789', '4111'), ('Bob', '1', '2')",
        )
        .await
        .unwrap();
    // Moved from another column: the AAD does not match.
    direct.batch_execute("UPDATE customers SET card = ssn WHERE name = 'Ann'").await.unwrap();
    let e = proxy.simple_query("SELECT card FROM customers WHERE name = 'Ann'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "XX001", "{e}");
    assert!(message(&e).contains("public.customers.card"), "{}", message(&e));
    let e = proxy.query("SELECT card FROM customers WHERE name = 'Ann'", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "XX001", "{e}");
    // One flipped bit.
    direct
        .batch_execute(
            "UPDATE customers SET ssn = set_byte(ssn, 25, get_byte(ssn, 25) # 1) WHERE name = 'Bob'",
        )
        .await
        .unwrap();
    let e = proxy.query("SELECT ssn FROM customers WHERE name = 'Bob'", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "XX001", "{e}");
    // The session is still usable.
    assert_eq!(
        rows(&proxy, "SELECT ssn FROM customers WHERE name = 'Ann'").await,
        [[Some("123-45-6789".to_string())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_reaches_neither_data_files_nor_wal() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    let marker = "SSN-MARKER-5f3a9c";
    let plain_marker = "PLAIN-MARKER-7d21e4";
    proxy
        .execute(
            "INSERT INTO customers (name, ssn, card) VALUES ($1, $2, $3)",
            &[&plain_marker, &marker, &marker],
        )
        .await
        .unwrap();
    proxy
        .batch_execute(&format!(
            "INSERT INTO customers (name, ssn, card) VALUES ('{plain_marker}', '{marker}', '{marker}')"
        ))
        .await
        .unwrap();
    proxy.batch_execute("CHECKPOINT").await.unwrap();
    let data_dir = env.pg.data_dir();
    let found = |needle: &str| grep(&data_dir, needle.as_bytes());
    // The plain column is there: the search does find what is written.
    assert!(!found(plain_marker).is_empty(), "control marker not found: the search is broken");
    assert_eq!(found(marker), Vec::<String>::new(), "plaintext of an encrypted column on disk");
}

/// Files under `dir` that contain `needle`.
fn grep(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "postmaster.log" && n != "log") {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_recreated_table_is_found_again() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    proxy
        .batch_execute(
            "DROP TABLE customers; \
             CREATE TABLE customers (id serial PRIMARY KEY, name text, ssn bytea, card bytea); \
             INSERT INTO customers (name, ssn) VALUES ('Ann', '123')",
        )
        .await
        .unwrap();
    let other = env.proxy_client().await;
    for client in [&proxy, &other] {
        let row = client.query_one("SELECT ssn FROM customers", &[]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "123");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_encrypted_columns_decrypt_and_are_analysed_as_their_columns() {
    let env = start().await;
    let proxy = env.proxy_client().await;
    proxy
        .batch_execute(
            "INSERT INTO customers (name, ssn, card) VALUES ('Ann', '123-45-6789', '4111'); \
             CREATE VIEW people AS SELECT id, name, ssn AS tax_id, card FROM customers; \
             CREATE VIEW people_again AS SELECT tax_id, name FROM people",
        )
        .await
        .unwrap();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows(&proxy, "SELECT name, tax_id, card FROM people WHERE tax_id = '123-45-6789'").await,
        [[s("Ann"), s("123-45-6789"), s("4111")]]
    );
    let row = proxy
        .query_one("SELECT tax_id FROM people_again WHERE tax_id = $1", &[&"123-45-6789"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "123-45-6789");
    // Writes through an updatable view are encrypted for the column shown.
    proxy
        .batch_execute("INSERT INTO people (name, tax_id) VALUES ('Bob', '987-65-4321')")
        .await
        .unwrap();
    assert_eq!(
        rows(&proxy, "SELECT name FROM customers WHERE ssn = '987-65-4321'").await,
        [[s("Bob")]]
    );
    let e = proxy.simple_query("SELECT name FROM people WHERE tax_id LIKE '1%'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
}

/// psql through the proxy reading `stdin`; (success, stdout + stderr).
async fn psql(port: u16, script: &str, stdin: &str) -> (bool, String) {
    use std::io::Write;
    let conninfo = format!("host=127.0.0.1 port={port} user={} dbname=postgres", roles::SCRAM);
    let (script, stdin) = (script.to_string(), stdin.to_string());
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
            .args(script.lines().flat_map(|line| ["-c", line]))
            .env("PGPASSWORD", PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_encrypts_and_copy_to_stdout_decrypts() {
    use futures_util::SinkExt;
    let env = start().await;
    let proxy = env.proxy_client().await;
    let direct = env.direct_client().await;
    let port = env.proxy_addr.port();

    // Text format through the extended protocol (tokio-postgres), the rows
    // split across CopyData messages in the middle of a row.
    let sink = proxy.copy_in("COPY customers (name, ssn, card) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in ["Ann\t123-45-6789\t4111\\t1111\nBob\t98", "7-65-4321\t\\N\n", "Cy\t\\N\tx\\\\y\n"]
    {
        sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 3);

    // CSV with a header through the simple protocol (psql's \copy).
    let csv = "name,ssn,card\n\"Dee, Jr.\",555-55-5555,\"say \"\"hi\"\"\"\nEd,,\"\"\n";
    let (ok, out) =
        psql(port, "\\copy customers (name, ssn, card) FROM STDIN WITH (FORMAT csv, HEADER)", csv)
            .await;
    assert!(ok, "{out}");

    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows(&proxy, "SELECT name, ssn, card FROM customers ORDER BY id").await,
        [
            [s("Ann"), s("123-45-6789"), s("4111\t1111")],
            [s("Bob"), s("987-65-4321"), None],
            [s("Cy"), None, s("x\\y")],
            [s("Dee, Jr."), s("555-55-5555"), s("say \"hi\"")],
            [s("Ed"), None, s("")],
        ]
    );
    // Only envelopes in Postgres.
    let stored = rows(&direct, "SELECT ssn FROM customers WHERE ssn IS NOT NULL").await;
    assert!(stored.iter().all(|r| r[0].as_deref().unwrap().starts_with("\\x5057")), "{stored:?}");
    // Equality finds COPY'd rows: the same canonical form as INSERT.
    assert_eq!(
        rows(&proxy, "SELECT name FROM customers WHERE ssn = '555-55-5555'").await,
        [[s("Dee, Jr.")]]
    );

    // COPY TO STDOUT of the table, of a column list and of a query, in text
    // and csv, decrypts.
    let (ok, out) = psql(port, "COPY customers (name, ssn, card) TO STDOUT", "").await;
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "Ann\t123-45-6789\t4111\\t1111\nBob\t987-65-4321\t\\N\nCy\t\\N\tx\\\\y\n\
         Dee, Jr.\t555-55-5555\tsay \"hi\"\nEd\t\\N\t\n"
    );
    let (ok, out) = psql(
        port,
        "\\copy (SELECT c.name, c.card FROM customers c WHERE c.ssn = '555-55-5555') TO STDOUT WITH (FORMAT csv, HEADER)",
        "",
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(out, "name,card\n\"Dee, Jr.\",\"say \"\"hi\"\"\"\n");
    let (ok, out) = psql(port, "COPY customers TO STDOUT CSV", "").await;
    assert!(ok, "{out}");
    assert!(out.contains(",Ann,123-45-6789,4111\t1111\n"), "{out}");
    assert!(out.contains(",Ed,,\"\"\n"), "{out}");

    // The same through the extended protocol (tokio-postgres prepares COPY),
    // a table's columns and a query, while an unnamed statement of the
    // client's stays prepared around it.
    let copy_out = |sql: &'static str| {
        let proxy = &proxy;
        async move { String::from_utf8(pgwarden_integration::copy_out(proxy, sql).await).unwrap() }
    };
    assert_eq!(
        copy_out("COPY customers (name, ssn, card) TO STDOUT").await,
        "Ann\t123-45-6789\t4111\\t1111\nBob\t987-65-4321\t\\N\nCy\t\\N\tx\\\\y\n\
         Dee, Jr.\t555-55-5555\tsay \"hi\"\nEd\t\\N\t\n"
    );
    assert_eq!(
        copy_out("COPY (SELECT c.name, c.ssn FROM customers c WHERE c.ssn = '987-65-4321') TO STDOUT WITH (FORMAT csv)")
            .await,
        "Bob,987-65-4321\n"
    );
    // A COPY whose source does not exist fails as Postgres would, and the
    // session goes on.
    let e = proxy.copy_out("COPY customers (name, nope) TO STDOUT").await.err().unwrap();
    assert_eq!(sqlstate(&e), "42703", "{e}");
    assert_eq!(rows(&proxy, "SELECT count(*) FROM customers").await, [[s("5")]]);

    // Pipelined on the wire: the client's unnamed statement, prepared before
    // its COPY, is still there after it.
    let (mut w, _) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let mut batch = wire::parse("", "SELECT 7");
    batch.extend(wire::parse("c", "COPY (SELECT ssn FROM customers WHERE name = 'Ann') TO STDOUT"));
    batch.extend(wire::bind("", "c", &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::bind("", "", &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::sync());
    w.send(&batch).await;
    let msgs = w.until_ready(1).await;
    let tags: String = msgs.iter().map(|m| char::from(m.tag)).collect();
    assert_eq!(tags, "112HdcC2DCZ", "{msgs:?}");
    assert_eq!(msgs[4].body, b"123-45-6789\n");
    assert!(msgs[8].body.ends_with(b"7"), "{}", msgs[8]);
    // An unnamed COPY of encrypted columns, then another unnamed COPY that
    // holds none: the second's rows go through untouched.
    let mut batch =
        wire::parse("", "COPY (SELECT ssn FROM customers WHERE name = 'Bob') TO STDOUT");
    batch.extend(wire::bind("", "", &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::parse("", "COPY (SELECT 'plain'::text) TO STDOUT"));
    batch.extend(wire::bind("", "", &[]));
    batch.extend(wire::execute("", 0));
    batch.extend(wire::sync());
    w.send(&batch).await;
    let msgs = w.until_ready(1).await;
    let tags: String = msgs.iter().map(|m| char::from(m.tag)).collect();
    assert_eq!(tags, "12HdcC12HdcCZ", "{msgs:?}");
    assert_eq!(msgs[3].body, b"987-65-4321\n");
    assert_eq!(msgs[9].body, b"plain\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_an_invalid_value_fails_whole_with_22p02() {
    let env = start().await;
    let port = env.proxy_addr.port();
    let data: String =
        (0..2000).map(|i| format!("{i}\t{i}\n")).collect::<String>() + "x\tsecret-oops\n";
    let (ok, out) = psql(port, "\\copy every_type (id, i4) FROM STDIN", &data).await;
    assert!(!ok, "{out}");
    assert!(out.contains("public.every_type.i4"), "{out}");
    assert!(!out.contains("secret-oops"), "{out}");
    let (_, out) =
        psql(port, "\\set VERBOSITY verbose\n\\copy every_type (id, i4) FROM STDIN", "1\tx\n")
            .await;
    assert!(out.contains("22P02"), "{out}");
    let proxy = env.proxy_client().await;
    assert_eq!(rows(&proxy, "SELECT count(*) FROM every_type").await, [[Some("0".to_string())]]);
    // Server-side files cannot be encrypted by the proxy.
    let e = proxy.simple_query("COPY customers (ssn) FROM '/etc/hostname'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
}

/// The tables of [`SCHEMA`] with the real types in place of bytea.
const PLAIN_SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text, ssn text, card text);
CREATE TABLE every_type (id int PRIMARY KEY,
  t text, vc varchar, c bpchar, i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
  b bool, d date, ts timestamp, tstz timestamptz, u uuid, j json, jb jsonb, by bytea);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_cannot_tell_encrypted_columns_from_plain_ones() {
    let interpreter = pgwarden_integration::python::interpreter();
    let env = start().await;
    env.pg.psql("postgres", "CREATE DATABASE plain").unwrap();
    env.pg.psql("plain", PLAIN_SCHEMA).unwrap();
    let run = |url: String| {
        let interpreter = interpreter.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(interpreter)
                .arg(pgwarden_integration::python::script("psycopg_encrypted.py"))
                .arg(url)
                .env("PYTHONIOENCODING", "utf-8")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .output()
                .unwrap()
        })
    };
    let via = run(env.proxy_url(roles::SCRAM, "postgres")).await.unwrap();
    let direct = run(env.direct_url(roles::SCRAM, "plain")).await.unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        direct.status.success(),
        "the script fails even against plain columns:\n{}{}",
        text(&direct),
        String::from_utf8_lossy(&direct.stderr)
    );
    for (i, (a, b)) in text(&via).lines().zip(text(&direct).lines()).enumerate() {
        assert_eq!(a, b, "line {} differs (left: through pgwarden, right: plain)", i + 1);
    }
    assert_eq!(text(&via).lines().count(), text(&direct).lines().count());
    assert!(via.status.success(), "{}", String::from_utf8_lossy(&via.stderr));
    // The values really are encrypted in Postgres.
    let direct_client = env.direct_client().await;
    let stored = rows(&direct_client, "SELECT ssn FROM customers WHERE name = 'Ann'").await;
    assert!(stored[0][0].as_deref().unwrap().starts_with("\\x5057"));
}

/// A registered table outside `public`, and a session whose search_path
/// reaches it: a statement naming it without its schema is refused (pgwarden
/// does not follow search_path), so no plaintext goes to Postgres; named with
/// its schema, it is encrypted as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_registered_outside_public_is_only_reached_by_its_qualified_name() {
    let schema = "CREATE SCHEMA billing; CREATE TABLE billing.cards (id int, pan bytea);
        GRANT USAGE ON SCHEMA billing TO PUBLIC; GRANT ALL ON billing.cards TO PUBLIC;";
    let registry = "[[columns]]\nname = \"billing.cards.pan\"\ntype = \"text\"\n\
                    mode = \"deterministic\"\nkey = \"pci\"\n\n[access]\ndefault = \"full\"\n";
    let (pg, config, _dir) = encrypted::prepare(schema, registry).await;
    encrypted::init(&pg, &config).await;
    let env = TestEnv::start_on(pg, config).await;
    let proxy = env.proxy_client().await;
    proxy.batch_execute("SET search_path = billing, public").await.unwrap();
    for sql in [
        "INSERT INTO cards (id, pan) VALUES (1, 'PW-looks-like-an-envelope')",
        "SELECT id FROM cards WHERE pan = '4111111111111111'",
    ] {
        for extended in [false, true] {
            let e = if extended {
                proxy.query(sql, &[]).await.unwrap_err()
            } else {
                proxy.simple_query(sql).await.unwrap_err()
            };
            assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
            assert!(message(&e).contains("billing.cards"), "{}", message(&e));
        }
    }
    proxy
        .execute("INSERT INTO billing.cards (id, pan) VALUES (1, $1)", &[&"4111111111111111"])
        .await
        .unwrap();
    let row = proxy
        .query_one("SELECT pan FROM billing.cards WHERE pan = $1", &[&"4111111111111111"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "4111111111111111");
    let direct = env.direct_client().await;
    let stored: Vec<u8> =
        direct.query_one("SELECT pan FROM billing.cards", &[]).await.unwrap().get(0);
    assert!(stored.starts_with(b"PW"), "not an envelope");
    assert_eq!(
        direct.query_one("SELECT count(*) FROM billing.cards", &[]).await.unwrap().get::<_, i64>(0),
        1
    );
}
