//! `pgwarden keys init|list` against a real Postgres: the registry, data keys
//! wrapped by the master key, and the CHECK guard that stops plaintext written
//! around the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use pgwarden::crypto::MasterKey;
use pgwarden_integration::{start_cluster, Cluster, PASSWORD};

struct Setup {
    pg: Cluster,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let pg = start_cluster();
        pg.psql(
            "postgres",
            "CREATE TABLE customers (id int PRIMARY KEY, name text, ssn bytea, card bytea)",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
        let setup = Self { pg, dir };
        setup.write_master_key(MasterKey::generate().to_base64().expose(), 0o600);
        setup.write_config("");
        setup
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write_master_key(&self, text: &str, mode: u32) {
        let p = self.path("master.key");
        std::fs::write(&p, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn write_config(&self, extra_columns: &str) {
        let toml = format!(
            r#"
[upstream]
port = {port}
admin_user = "postgres"
admin_password = "file:{pw}"

[keys]
master_key = "file:{key}"

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
{extra_columns}
"#,
            port = self.pg.port(),
            pw = self.path("pw").display(),
            key = self.path("master.key").display(),
        );
        std::fs::write(self.path("pgwarden.toml"), toml).unwrap();
    }

    fn keys(&self, action: &str) -> Output {
        Command::new(pgwarden_integration::pgwarden_binary())
            .args(["keys", action, "--config"])
            .arg(self.path("pgwarden.toml"))
            .env("PGWARDEN_LOG", "warn")
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn keys_init_creates_keys_registers_columns_and_guards_them() {
    let s = Setup::new();
    let out = s.keys("init");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("keys created: pci, pii"), "{}", text(&out));

    let keys =
        s.pg.psql(
            "postgres",
            "SELECT key_name, key_version, key_status, length(wrapped_key) \
             FROM pgwarden.encryption_keys ORDER BY key_name",
        )
        .unwrap();
    assert_eq!(keys.trim(), "pci|1|ACTIVE|60\npii|1|ACTIVE|60");
    let cols = s
        .pg
        .psql("postgres", "SELECT column_name, mode FROM pgwarden.encrypted_columns ORDER BY 1")
        .unwrap();
    assert_eq!(cols.trim(), "public.customers.card|randomized\npublic.customers.ssn|deterministic");

    // Plaintext written around the proxy is refused by Postgres itself.
    let err =
        s.pg.psql("postgres", "INSERT INTO customers (id, ssn) VALUES (1, '123-45-6789'::bytea)")
            .unwrap_err()
            .to_string();
    assert!(err.contains("pgwarden_envelope_customers_ssn"), "{err}");
    s.pg.psql("postgres", "INSERT INTO customers (id, ssn) VALUES (2, '\\x50570101'::bytea)")
        .unwrap();

    // Again: nothing new, nothing broken.
    let again = s.keys("init");
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("keys created: none"), "{}", text(&again));
}

#[test]
fn keys_list_shows_versions_and_fingerprints_but_never_key_material() {
    let s = Setup::new();
    assert!(s.keys("init").status.success());
    let out = s.keys("list");
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert!(listing.contains("pii") && listing.contains("ACTIVE"), "{listing}");
    let wrapped =
        s.pg.psql("postgres", "SELECT encode(wrapped_key, 'hex') FROM pgwarden.encryption_keys")
            .unwrap();
    for w in wrapped.lines() {
        assert!(!listing.contains(&w[..16]), "wrapped key bytes listed:\n{listing}");
    }
    let master = std::fs::read_to_string(s.path("master.key")).unwrap();
    assert!(!listing.contains(master.trim()), "master key listed");
}

#[test]
fn a_wrong_master_key_is_a_clear_error_and_creates_nothing() {
    let s = Setup::new();
    assert!(s.keys("init").status.success());
    s.write_master_key(MasterKey::generate().to_base64().expose(), 0o600);
    s.write_config(
        "[[columns]]\nname = \"public.customers.name\"\ntype = \"text\"\nmode = \"randomized\"\nkey = \"newkey\"\n",
    );
    s.pg.psql("postgres", "ALTER TABLE customers ALTER COLUMN name TYPE bytea USING NULL").unwrap();
    let out = s.keys("init");
    assert!(!out.status.success());
    assert!(text(&out).contains("wrong master key"), "{}", text(&out));
    let n = s.pg.psql("postgres", "SELECT count(*) FROM pgwarden.encryption_keys").unwrap();
    assert_eq!(n.trim(), "2", "a key was created under the wrong master key");
}

#[test]
fn a_master_key_file_readable_by_others_is_refused() {
    let s = Setup::new();
    let key = std::fs::read_to_string(s.path("master.key")).unwrap();
    s.write_master_key(key.trim(), 0o644);
    let out = s.keys("init");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("chmod 600"), "{t}");
    assert!(!t.contains(key.trim()), "the key was echoed: {t}");
}

#[test]
fn a_registered_column_that_is_not_bytea_is_reported() {
    let s = Setup::new();
    s.write_config(
        "[[columns]]\nname = \"public.customers.name\"\ntype = \"text\"\nmode = \"randomized\"\nkey = \"pci\"\n",
    );
    let out = s.keys("init");
    assert!(!out.status.success());
    assert!(text(&out).contains("column public.customers.name is text"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_maps_registered_columns_to_table_oid_and_attnum_and_follows_ddl() {
    use pgwarden::catalog::Catalog;
    use pgwarden::sql::Registry;
    let s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    let config = pgwarden_config::load_file(&s.path("pgwarden.toml")).unwrap();
    let registry = Registry::new(&config.columns);
    let db = pgwarden_integration::connect(&pgwarden_integration::url(
        s.pg.port(),
        "postgres",
        "postgres",
    ))
    .await;
    let table_oid: i64 =
        db.query_one("SELECT 'customers'::regclass::oid::int8", &[]).await.unwrap().get(0);
    let catalog = Catalog::load(&db, &registry).await.unwrap();
    assert_eq!(catalog.len(), 2);
    let ssn = catalog.column(table_oid as u32, 3).expect("ssn is attribute 3");
    assert_eq!(ssn.name, "public.customers.ssn");
    assert_eq!(catalog.column(table_oid as u32, 4).unwrap().name, "public.customers.card");
    assert!(catalog.column(table_oid as u32, 2).is_none(), "name is not encrypted");

    // Dropped and re-created: a new OID, found again on reload.
    db.batch_execute(
        "DROP TABLE customers; CREATE TABLE customers (id int, ssn bytea, card bytea, name text)",
    )
    .await
    .unwrap();
    let new_oid: i64 =
        db.query_one("SELECT 'customers'::regclass::oid::int8", &[]).await.unwrap().get(0);
    assert_ne!(new_oid, table_oid);
    let catalog = Catalog::load(&db, &registry).await.unwrap();
    assert_eq!(catalog.column(new_oid as u32, 2).unwrap().name, "public.customers.ssn");

    // A registered column that does not exist is an error, not a silent gap.
    db.batch_execute("ALTER TABLE customers DROP COLUMN card").await.unwrap();
    let err = Catalog::load(&db, &registry).await.unwrap_err().to_string();
    assert!(err.contains("public.customers.card"), "{err}");
}
