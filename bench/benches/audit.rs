//! The audit writer's work per record, the part of the audit's cost that
//! does not depend on the sink: `cargo bench -p pgwarden-bench --bench audit`.
//!
//! - `append`: [`Chain::append`] of a typical `statement` record (a
//!   pgbench `-S -M prepared` Execute): JSON line, HMAC-SHA256, hex;
//! - `canonical`: only the JSON line ([`Record::write_canonical`]);
//! - `hmac`: only HMAC-SHA256 of a line of the same length, the floor the
//!   chain's format sets.
#![allow(clippy::expect_used, reason = "a benchmark that cannot set up should stop loudly")]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, KeyInit, Mac};
use pgwarden::audit::chain::{Chain, GENESIS};
use pgwarden::audit::{Event, Record, SessionInfo, Statement};
use sha2::Sha256;

const KEY: [u8; 32] = [7; 32];

fn record() -> Record {
    let session = Arc::new(SessionInfo {
        id: "5f0c9e2a4b7d1e3f".into(),
        user: "bench".into(),
        database: "bench".into(),
        application: "pgbench".into(),
        client_addr: "127.0.0.1:51234".into(),
        tls: false,
        ..SessionInfo::default()
    });
    let statement = Arc::new(Statement {
        text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
        fingerprint: "3f1c2b4a5d6e7f80".into(),
        ..Statement::default()
    });
    let mut r = Record::new(Event::Statement, Some(session), "ok");
    r.protocol = Some("extended");
    r.statement = Some(statement);
    r.params = Some("redacted");
    r.rows = Some(1);
    r.duration_us = Some(87);
    r
}

fn bench(c: &mut Criterion) {
    let r = record();
    let mut chain = Chain::new(&KEY, 0, GENESIS.to_string()).expect("key");
    let mut out = String::with_capacity(1 << 16);
    chain.append(&r, &mut out);
    let len = out.len();

    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append", |b| {
        b.iter(|| {
            out.clear();
            chain.append(&r, &mut out)
        })
    });
    g.bench_function("canonical", |b| {
        b.iter(|| {
            out.clear();
            r.write_canonical(42, GENESIS, &mut out);
        })
    });
    let line = "x".repeat(len);
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&KEY).expect("key");
    g.bench_function("hmac", |b| {
        b.iter(|| {
            let mut m = mac.clone();
            m.update(line.as_bytes());
            m.finalize().into_bytes()
        })
    });
    g.finish();
    eprintln!("audit line: {len} bytes");
}

criterion_group!(benches, bench);
criterion_main!(benches);
