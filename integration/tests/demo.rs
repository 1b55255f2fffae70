//! `pgwarden demo`, the README's first command, as a newcomer runs it: it
//! prints how to connect, the sample columns are plaintext through pgwarden
//! for one role and masked for the other, ciphertext in Postgres, and Ctrl-C
//! removes everything.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_integration::{connect, pgwarden_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_encrypts_its_sample_columns_and_cleans_up_on_ctrl_c() {
    let port = pgwarden::cluster::free_port().unwrap();
    let mut child = Command::new(pgwarden_binary())
        .args(["demo", "--port", &port.to_string()])
        .env("PGWARDEN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        text
    });
    let printed = tokio::time::timeout(Duration::from_secs(120), printed)
        .await
        .expect("the demo did not get ready")
        .unwrap();
    let via_proxy = format!("postgresql://app:demo@127.0.0.1:{port}/shop");
    assert!(printed.contains(&via_proxy), "{printed}");
    let direct_port: u16 = printed
        .split("(port ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no Postgres port in:\n{printed}"));

    let proxy = connect(&via_proxy).await;
    let row = proxy
        .query_one("SELECT name, card_number FROM customers WHERE ssn = $1", &[&"987-65-4321"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "Alan Turing");
    assert_eq!(row.get::<_, &str>(1), "5500005555555559");
    let direct = connect(&format!("postgresql://app:demo@127.0.0.1:{direct_port}/shop")).await;
    for row in direct.query("SELECT ssn, card_number FROM customers", &[]).await.unwrap() {
        for i in 0..2 {
            assert!(row.get::<_, &[u8]>(i).starts_with(b"PW"), "plaintext stored in Postgres");
        }
    }
    // The second role sees masks, and may not write the encrypted columns.
    let support = connect(&format!("postgresql://support:demo@127.0.0.1:{port}/shop")).await;
    let row = support
        .query_one("SELECT ssn, card_number FROM customers WHERE name = 'Alan Turing'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "***-**-4321");
    assert_eq!(row.get::<_, &str>(1), "************5559");
    let refused = support
        .execute("UPDATE customers SET ssn = '000-00-0000' WHERE name = 'Alan Turing'", &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
    drop((proxy, direct, support));

    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    // The throwaway Postgres is gone.
    assert!(std::net::TcpStream::connect(("127.0.0.1", direct_port)).is_err());
}
