//! Per-value cost of pgwarden's column cipher next to the raw AEAD call on the
//! same data in the same run: `cargo bench -p pgwarden-bench --bench crypto`.
//!
//! "raw" does what any caller of the AEAD must do for one value held in a
//! reused buffer (copy the ciphertext in, decrypt in place); "pgwarden" adds
//! the envelope parse, the key-id check and the column-bound AAD.
#![allow(clippy::expect_used, reason = "a benchmark that cannot set up should stop loudly")]

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_gcm_siv::Aes256GcmSiv;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgwarden::crypto::envelope::{column_aad, Envelope};
use pgwarden::crypto::{ColumnCipher, DataKey, Mode};

const SIZES: [usize; 4] = [16, 64, 256, 4096];

fn decrypt(c: &mut Criterion) {
    let key = DataKey::from_bytes([7; 32]);
    let cipher = ColumnCipher::new(1, &key);
    let aad = column_aad("public", "customers", "ssn");
    // The raw AEADs get keys of their own: only the work per value matters.
    let raw_gcm = Aes256Gcm::new(&[9u8; 32].into());
    let raw_siv = Aes256GcmSiv::new(&[9u8; 32].into());

    for mode in [Mode::Deterministic, Mode::Randomized] {
        let mut group = c.benchmark_group(format!("decrypt/{}", mode.as_str()));
        for size in SIZES {
            let plaintext = vec![b'x'; size];
            let mut envelope = Vec::new();
            cipher.encrypt(mode, &aad, &plaintext, &mut envelope).expect("encrypt");
            let parsed = Envelope::parse(&envelope).expect("parse");
            let nonce = (*parsed.nonce).into();
            // A real tag for the raw AEAD's own key.
            let mut raw_ct = plaintext.clone();
            let raw_tag = match mode {
                Mode::Randomized => {
                    raw_gcm.encrypt_inout_detached(&nonce, &aad, raw_ct.as_mut_slice().into())
                }
                Mode::Deterministic => {
                    raw_siv.encrypt_inout_detached(&nonce, &aad, raw_ct.as_mut_slice().into())
                }
            }
            .expect("raw encrypt");

            group.throughput(Throughput::Bytes(size as u64));
            let mut out = Vec::with_capacity(size + 64);
            group.bench_with_input(BenchmarkId::new("raw", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(&raw_ct);
                    let r = match mode {
                        Mode::Randomized => raw_gcm.decrypt_inout_detached(
                            &nonce,
                            &aad,
                            out.as_mut_slice().into(),
                            &raw_tag,
                        ),
                        Mode::Deterministic => raw_siv.decrypt_inout_detached(
                            &nonce,
                            &aad,
                            out.as_mut_slice().into(),
                            &raw_tag,
                        ),
                    };
                    r.expect("raw decrypt");
                    std::hint::black_box(&out);
                })
            });
            group.bench_with_input(BenchmarkId::new("pgwarden", size), &size, |b, _| {
                b.iter(|| {
                    cipher
                        .decrypt(&aad, std::hint::black_box(&envelope), &mut out)
                        .expect("decrypt");
                    std::hint::black_box(&out);
                })
            });
        }
        group.finish();
    }
}

fn encrypt(c: &mut Criterion) {
    let key = DataKey::from_bytes([7; 32]);
    let cipher = ColumnCipher::new(1, &key);
    let aad = column_aad("public", "customers", "ssn");
    let raw_siv = Aes256GcmSiv::new(&[9u8; 32].into());
    let nonce = [3u8; 12].into();
    let mut group = c.benchmark_group("encrypt/deterministic");
    for size in SIZES {
        let plaintext = vec![b'x'; size];
        let mut out = Vec::with_capacity(size + 64);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("raw", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(&plaintext);
                let tag = raw_siv
                    .encrypt_inout_detached(&nonce, &aad, out.as_mut_slice().into())
                    .expect("raw encrypt");
                out.extend_from_slice(&tag);
                std::hint::black_box(&out);
            })
        });
        group.bench_with_input(BenchmarkId::new("pgwarden", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                cipher.encrypt(Mode::Deterministic, &aad, &plaintext, &mut out).expect("encrypt");
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decrypt, encrypt);
criterion_main!(benches);
