//! The proxy's DataRow decrypt path allocates nothing per value once its
//! buffers are warm (issue 3: "no heap allocation per value on the decrypt
//! path").
//!
//! This drives the real thing: a [`Backend`] built on an [`Encryption`]
//! loaded from a throwaway Postgres after `pgwarden keys init`, fed a
//! RowDescription naming the registered columns (by the table OID and
//! attribute numbers Postgres gave them) and then DataRows holding real
//! envelopes, in text format (simple protocol: bytea hex decoded first) and
//! binary (extended protocol). A counting global allocator must see no
//! allocation, reallocation or free across thousands of rows.
//!
//! One test per binary: the allocator counts every thread, so nothing else
//! may run meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::alloc::System;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pgwarden::cluster::{roles, Cluster, PASSWORD};
use pgwarden::crypto::envelope::column_aad;
use pgwarden::crypto::{MasterKey, Mode};
use pgwarden::pipeline::{Backend, Encryption, Pending, Queue};
use pgwarden::protocol::messages::{self, ResultFormats};
use pgwarden::protocol::Message;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Rows decoded before counting starts (buffers grow to size) and rows
/// counted.
const WARM_ROWS: usize = 100;
const COUNTED_ROWS: usize = 10_000;
/// The proxy flushes its output buffer in batches; so does this test.
const FLUSH_EVERY: usize = 200;

const SSN: &str = "123-45-6789";
const CARD: &str = "4111111111111111";

#[test]
fn decrypting_data_rows_allocates_nothing_per_value() {
    let pg = Cluster::start(None).expect("a throwaway Postgres");
    pg.psql("postgres", "CREATE TABLE customers (id int, ssn bytea, card bytea)").unwrap();
    let oid: u32 = pg
        .psql("postgres", "SELECT 'public.customers'::regclass::oid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&pg, dir.path());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let enc = rt.block_on(async {
        let mut admin = pgwarden::keys::connect_admin(&config).await.unwrap();
        pgwarden::keys::init(&config, &mut admin).await.unwrap();
        Encryption::load(&config).await.unwrap().expect("columns are registered")
    });
    let enc = Arc::new(enc);

    // Envelopes as the proxy writes them on INSERT.
    let keyring = enc.keyring.load();
    let mut ssn = Vec::new();
    let aad = column_aad("public", "customers", "ssn");
    keyring
        .active("pii")
        .unwrap()
        .encrypt(Mode::Deterministic, &aad, SSN.as_bytes(), &mut ssn)
        .unwrap();
    let mut card = Vec::new();
    let aad = column_aad("public", "customers", "card");
    keyring
        .active("pci")
        .unwrap()
        .encrypt(Mode::Randomized, &aad, CARD.as_bytes(), &mut card)
        .unwrap();
    drop(keyring);

    let row_description = row_description(oid);
    let text_row = data_row(&[b"42", &bytea_hex(&ssn), &bytea_hex(&card)]);
    let binary_row = data_row(&[&42i32.to_be_bytes(), &ssn, &card]);

    // Simple protocol: text results.
    let queue = Queue::default();
    let mut backend = Backend::new(enc.clone(), "bench".into());
    let mut out = BytesMut::with_capacity(64 * 1024);
    assert!(queue.push(Pending::Simple));
    backend.handle(&row_description, &queue, &mut out).unwrap();
    let text = count_allocations(&mut backend, &queue, &text_row, &mut out);
    assert!(contains(&out, SSN.as_bytes()) && contains(&out, CARD.as_bytes()), "decrypted");
    backend.handle(&message(b'C', b"SELECT 1\0"), &queue, &mut out).unwrap();
    backend.handle(&message(b'Z', b"I"), &queue, &mut out).unwrap();

    // Extended protocol: a prepared statement's rows in binary.
    let name = Bytes::from_static(b"s1");
    assert!(queue.push(Pending::DescribeStatement {
        name: name.clone(),
        params: Arc::new([]),
        injected: false,
        copy_out: false,
    }));
    backend.handle(&row_description, &queue, &mut out).unwrap();
    // Bind's result formats: one code, binary, for every column.
    let formats = ResultFormats::new(Bytes::from_static(&[0, 1, 0, 1]));
    let portal = Bytes::new();
    assert!(queue.push(Pending::Bind {
        portal: portal.clone(),
        statement: name,
        formats,
        injected: false
    }));
    backend.handle(&message(b'2', &[]), &queue, &mut out).unwrap();
    assert!(queue.push(Pending::Execute { portal }));
    out.clear();
    let binary = count_allocations(&mut backend, &queue, &binary_row, &mut out);
    assert!(contains(&out, SSN.as_bytes()) && contains(&out, CARD.as_bytes()), "decrypted");

    println!("over {COUNTED_ROWS} DataRows of two encrypted values each: text {text:?}, binary {binary:?}");
    for (format, stats) in [("text", text), ("binary", binary)] {
        assert_eq!(
            (stats.allocations, stats.reallocations, stats.deallocations),
            (0, 0, 0),
            "{format} DataRows allocated"
        );
    }
    // The counter is live: one allocation is seen as one.
    let region = Region::new(GLOBAL);
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    assert_eq!(region.change().allocations, 1, "the counting allocator counts");
    drop(rt);
}

/// Feeds `row` to the backend [`WARM_ROWS`] times, then counts what
/// [`COUNTED_ROWS`] more allocate.
fn count_allocations(
    backend: &mut Backend,
    queue: &Queue,
    row: &Message,
    out: &mut BytesMut,
) -> stats_alloc::Stats {
    let mut feed = |n: usize| {
        for i in 0..n {
            if i % FLUSH_EVERY == 0 {
                out.clear();
            }
            backend.handle(row, queue, out).unwrap();
        }
    };
    feed(WARM_ROWS);
    let region = Region::new(GLOBAL);
    feed(COUNTED_ROWS);
    region.change()
}

fn config(pg: &Cluster, dir: &std::path::Path) -> pgwarden_config::Config {
    let key = dir.join("master.key");
    std::fs::write(&key, MasterKey::generate().to_base64().expose()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw = dir.join("admin.password");
    std::fs::write(&pw, PASSWORD).unwrap();
    let toml = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"disable\"\n\
         admin_user = \"{admin}\"\nadmin_password = \"file:{pw}\"\n\n\
         [keys]\nmaster_key = \"file:{key}\"\n\n\
         [[columns]]\nname = \"public.customers.ssn\"\ntype = \"text\"\nmode = \"deterministic\"\nkey = \"pii\"\n\n\
         [[columns]]\nname = \"public.customers.card\"\ntype = \"text\"\nmode = \"randomized\"\nkey = \"pci\"\n\n\
         [access]\ndefault = \"full\"\n",
        port = pg.port(),
        admin = roles::SCRAM,
        pw = pw.display(),
        key = key.display(),
    );
    pgwarden_config::load_str(&toml, std::iter::empty()).unwrap()
}

/// RowDescription (B) of `SELECT id, ssn, card FROM customers`, text format.
fn row_description(table_oid: u32) -> Message {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'T');
    out.put_i16(3);
    for (name, attnum, type_oid, type_len) in
        [(&b"id"[..], 1, 23, 4), (b"ssn", 2, 17, -1), (b"card", 3, 17, -1)]
    {
        messages::put_cstr(&mut out, name);
        out.put_u32(table_oid);
        out.put_i16(attnum);
        out.put_u32(type_oid);
        out.put_i16(type_len);
        out.put_i32(-1);
        out.put_i16(0);
    }
    messages::end(&mut out, at);
    Message { tag: b'T', frame: out.freeze() }
}

/// DataRow (B) of `values`.
fn data_row(values: &[&[u8]]) -> Message {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for v in values {
        body.put_i32(v.len() as i32);
        body.put_slice(v);
    }
    message(b'D', &body)
}

fn message(tag: u8, body: &[u8]) -> Message {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, tag);
    out.put_slice(body);
    messages::end(&mut out, at);
    Message { tag, frame: out.freeze() }
}

/// bytea's text output (`\x` hex), as Postgres sends it.
fn bytea_hex(bytes: &[u8]) -> Vec<u8> {
    let mut s = b"\\x".to_vec();
    for b in bytes {
        s.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    s
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
