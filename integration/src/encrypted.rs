//! A throwaway Postgres with a schema, and a configuration that registers
//! encrypted columns under a new master key, for the tests of the encryption
//! pipeline and of access policies.

use std::os::unix::fs::PermissionsExt;

use pgwarden::crypto::MasterKey;
use pgwarden_config::Config;

use crate::{base_config_toml, connect, roles, start_cluster, url, Cluster, PASSWORD};

/// Runs `schema` in database `postgres` of a new cluster, and builds the
/// configuration of a proxy in front of it with `registry` appended (its
/// `[[columns]]`, `[access]` and `[[policies]]`). The master key and the
/// admin password live in the returned directory. No keys exist yet: see
/// [`init`].
pub async fn prepare(schema: &str, registry: &str) -> (Cluster, Config, tempfile::TempDir) {
    let (pg, toml, dir) = prepare_toml(schema, registry).await;
    (pg, load(&toml), dir)
}

/// [`prepare`], with the configuration as the TOML text of a file (its
/// `listen.address` is `127.0.0.1:0`), for running the `pgwarden` binary.
pub async fn prepare_toml(schema: &str, registry: &str) -> (Cluster, String, tempfile::TempDir) {
    let pg = tokio::task::spawn_blocking(start_cluster).await.unwrap();
    pg.psql("postgres", schema).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, MasterKey::generate().to_base64().expose()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let toml = format!(
        "{}\n[keys]\nmaster_key = \"file:{}\"\n\n{registry}",
        base_config_toml(&pg).replace(
            "[upstream]\n",
            &format!(
                "[upstream]\nadmin_user = \"{}\"\nadmin_password = \"file:{}\"\n",
                roles::SCRAM,
                pw.display()
            )
        ),
        key.display(),
    );
    (pg, toml, dir)
}

/// `pgwarden keys init`: the key registry, the data keys, the column guards.
pub async fn init(pg: &Cluster, config: &Config) {
    let mut admin = connect(&url(pg.port(), roles::SCRAM, "postgres")).await;
    pgwarden::keys::init(config, &mut admin).await.unwrap();
}

/// A configuration from TOML, which must be valid.
pub fn load(toml: &str) -> Config {
    pgwarden_config::load_str(toml, std::iter::empty()).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}
