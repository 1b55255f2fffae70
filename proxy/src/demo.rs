//! `pgwarden demo`: a throwaway Postgres with sample data, pgwarden in front of
//! it, and instructions for connecting. Ctrl-C stops both and removes the data.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster};
use crate::listener::Proxy;

/// The demo's login roles and their password.
const ROLES: [&str; 2] = ["app", "support"];
const DEMO_PASSWORD: &str = "demo";

const SCHEMA: &str = "
CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    ssn         text NOT NULL,
    card_number text NOT NULL
);
INSERT INTO customers (name, email, ssn, card_number) VALUES
    ('Ada Lovelace',   'ada@example.com',   '123-45-6789', '4111111111111111'),
    ('Alan Turing',    'alan@example.com',  '987-65-4321', '5500005555555559'),
    ('Grace Hopper',   'grace@example.com', '555-12-3456', '340000000000009');
";

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
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port()
    );
    let config = Arc::new(pgwarden_config::load_str(&text, std::iter::empty())?);

    crate::cli::runtime(config.listen.worker_threads)?.block_on(async {
        let proxy = Proxy::bind(config).await?;
        println!(
            "\npgwarden is listening on 127.0.0.1:{port}, in front of a throwaway Postgres \
             (port {pg_port}) holding database `shop` with a `customers` table.\n\n\
             Connect through pgwarden as each demo role (password `{DEMO_PASSWORD}`):\n\
             \n    psql \"postgresql://app:{DEMO_PASSWORD}@127.0.0.1:{port}/shop\"\
             \n    psql \"postgresql://support:{DEMO_PASSWORD}@127.0.0.1:{port}/shop\"\n\n\
             and try `SELECT * FROM customers;`. This version of pgwarden relays \
             every statement transparently,\nso both roles see the same rows; column \
             encryption and per-role masking are not built yet.\n\n\
             Press Ctrl-C to stop pgwarden and remove the database.",
            pg_port = pg.port()
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::cli::cancel_on_signal(shutdown.clone()));
        proxy.run(shutdown).await?;
        anyhow::Ok(())
    })?;
    drop(pg);
    eprintln!("pgwarden demo: stopped, throwaway database removed");
    Ok(())
}
