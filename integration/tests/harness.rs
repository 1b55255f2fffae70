//! The harness itself: what a developer without Postgres installed is told.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use pgwarden::cluster::Cluster;

#[test]
fn missing_postgres_binaries_fail_with_how_to_install_them() {
    let empty = tempfile::tempdir().unwrap();
    // This test binary holds only this test, so the variable affects nothing else.
    std::env::set_var("PGWARDEN_PG_BINDIR", empty.path());
    let err = Cluster::start(None).err().expect("started without binaries");
    let text = err.to_string();
    assert!(text.contains("apt-get install postgresql"), "{text}");
    assert!(text.contains("PGWARDEN_PG_BINDIR"), "{text}");
}
