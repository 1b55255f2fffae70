//! `pgwarden demo`: a throwaway Postgres with sample data whose `ssn` and
//! `card_number` columns are encrypted by pgwarden, pgwarden in front of it,
//! and instructions for connecting. Ctrl-C stops both and removes the data
//! and the demo's master key.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cluster::{self, roles, Cluster};
use crate::crypto::MasterKey;
use crate::listener::Proxy;

/// The demo's login roles and their password.
const ROLES: [&str; 2] = ["app", "support"];
const DEMO_PASSWORD: &str = "demo";

/// The encrypted columns are bytea in Postgres; pgwarden shows them as text.
const SCHEMA: &str = "
CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    ssn         bytea,
    card_number bytea
);
";

/// Written through pgwarden, so Postgres only ever holds their envelopes.
const ROWS: &str = "
INSERT INTO customers (name, email, ssn, card_number) VALUES
    ('Ada Lovelace',   'ada@example.com',   '123-45-6789', '4111111111111111'),
    ('Alan Turing',    'alan@example.com',  '987-65-4321', '5500005555555559'),
    ('Grace Hopper',   'grace@example.com', '555-12-3456', '340000000000009');
";

const COLUMNS: &str = r#"
[[columns]]
name = "public.customers.ssn"
type = "text"
mode = "deterministic"
key = "pii"
classification = "restricted"
compliance = ["GDPR"]

[[columns]]
name = "public.customers.card_number"
type = "text"
mode = "randomized"
key = "pci"
classification = "restricted"
compliance = ["PCI_DSS"]

# app sees everything; support sees masks, and may not change either column.
[access]
default = "deny"

[[policies]]
roles = ["app"]
columns = ["public.customers.*"]
access = "full"

[[policies]]
roles = ["support"]
columns = ["public.customers.ssn"]
access = "masked"
mask = "partial(0, '***-**-', 4)"
write = false

[[policies]]
roles = ["support"]
columns = ["public.customers.card_number"]
access = "masked"
mask = "last4"
write = false
"#;

pub fn run(port: Option<u16>) -> anyhow::Result<()> {
    eprintln!("pgwarden demo: starting a throwaway Postgres...");
    let pg = Cluster::start(None)?;
    pg.psql("postgres", "CREATE DATABASE shop")?;
    pg.psql("shop", SCHEMA)?;
    for role in ROLES {
        pg.psql(
            "shop",
            &format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{DEMO_PASSWORD}';
                 GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO {role};
                 GRANT USAGE ON SEQUENCE customers_id_seq TO {role};"
            ),
        )?;
    }
    let port = match port {
        Some(p) => p,
        None if std::net::TcpListener::bind("127.0.0.1:6432").is_ok() => 6432,
        None => cluster::free_port()?,
    };
    // The master key and the admin password live in a directory removed on exit.
    let secrets = tempfile::tempdir()?;
    let key_path = secrets.path().join("master.key");
    std::fs::write(&key_path, MasterKey::generate().to_base64().expose())?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    let password_path = secrets.path().join("admin.password");
    std::fs::write(&password_path, cluster::PASSWORD)?;
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {pg_port}\nadmin_user = \"{admin}\"\n\
         admin_password = \"file:{password}\"\nadmin_database = \"shop\"\n\n\
         [keys]\nmaster_key = \"file:{key}\"\n{COLUMNS}",
        pg_port = pg.port(),
        admin = roles::SCRAM,
        password = password_path.display(),
        key = key_path.display(),
    );
    let config = Arc::new(pgwarden_config::load_str(&text, std::iter::empty())?);
    let problems = config.validate();
    anyhow::ensure!(problems.is_empty(), "demo configuration: {}", problems.join("; "));

    crate::cli::runtime(config.listen.worker_threads)?.block_on(async {
        let mut admin = crate::keys::connect_admin(&config).await?;
        crate::keys::init(&config, &mut admin).await?;
        let proxy = Proxy::bind(config.clone()).await?;
        let addr = proxy.local_addr()?;
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(proxy.run(shutdown.clone()));
        insert_rows(addr.port()).await?;
        println!(
            "\npgwarden is listening on 127.0.0.1:{port}, in front of a throwaway Postgres \
             (port {pg_port}) holding database `shop`.\n\
             Its `customers` table has two columns encrypted by pgwarden: `ssn` \
             (deterministic: equality search works)\nand `card_number` (randomized). \
             Postgres only ever sees their ciphertext.\n\n\
             Connect through pgwarden (password `{DEMO_PASSWORD}`, roles `app` and `support`):\n\
             \n    psql \"postgresql://app:{DEMO_PASSWORD}@127.0.0.1:{port}/shop\"\n\n\
             and try:\n\
             \n    SELECT * FROM customers;                          -- plaintext for app\
             \n    SELECT name FROM customers WHERE ssn = '987-65-4321';\
             \n    INSERT INTO customers (name, email, ssn, card_number)\
             \n        VALUES ('Edsger Dijkstra', 'ed@example.com', '111-22-3333', '4000056655665556');\
             \n    SELECT name FROM customers WHERE ssn LIKE '1%';   -- refused: 0A000\n\n\
             Then look at what Postgres itself stores, bypassing pgwarden:\n\
             \n    psql \"postgresql://app:{DEMO_PASSWORD}@127.0.0.1:{pg_port}/shop\" \
             -c 'SELECT name, ssn, card_number FROM customers'\n\n\
             As `support`, the same SELECT shows `***-**-6789` and `************1111`, \
             and writing either column\nis refused (42501):\n\
             \n    psql \"postgresql://support:{DEMO_PASSWORD}@127.0.0.1:{port}/shop\"\n\n\
             Press Ctrl-C to stop pgwarden and remove the database and its keys.",
            pg_port = pg.port()
        );
        tokio::spawn(crate::cli::cancel_on_signal(shutdown));
        running.await??;
        anyhow::Ok(())
    })?;
    drop(pg);
    drop(secrets);
    eprintln!("pgwarden demo: stopped, throwaway database and keys removed");
    Ok(())
}

/// Writes the sample rows through pgwarden, as an application would.
async fn insert_rows(port: u16) -> anyhow::Result<()> {
    let url = format!("postgresql://app:{DEMO_PASSWORD}@127.0.0.1:{port}/shop");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    client.batch_execute(ROWS).await?;
    drop(client);
    let _ = conn.await;
    Ok(())
}
