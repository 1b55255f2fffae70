//! Per-value cost of pgwarden's column cipher next to the raw AEAD calls on
//! the same data in the same run: `cargo bench -p pgwarden-bench --bench crypto`.
//!
//! For each mode (deterministic = AES-256-GCM-SIV, randomized = AES-256-GCM),
//! operation and value size:
//!
//! - `rustcrypto`: what any caller of RustCrypto's `aes-gcm`/`aes-gcm-siv` (the
//!   crates pgwarden uses) must do for one value held in a reused buffer: copy
//!   it in, call the AEAD in place;
//! - `aws-lc`: the same with aws-lc-rs (`LessSafeKey`), on the same
//!   ciphertext (both raw AEADs get the same key);
//! - `pgwarden`: [`ColumnCipher`] on the envelope: header parse (or write),
//!   key-id check, the same copy and AEAD call; randomized encryption also
//!   draws its nonce;
//! - `keyring` (decrypt only): [`Keyring::decrypt`], what the proxy calls for
//!   each encrypted value of a DataRow: the key id is read from the envelope
//!   and its cipher looked up first.
//!
//! Every path writes into a buffer that already has capacity, so none of them
//! allocates per value; `tests/decrypt_allocations.rs` checks that for the
//! proxy's DataRow path.
#![allow(clippy::expect_used, reason = "a benchmark that cannot set up should stop loudly")]

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_gcm_siv::Aes256GcmSiv;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, AES_256_GCM_SIV};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgwarden::crypto::envelope::{column_aad, Envelope};
use pgwarden::crypto::{ColumnCipher, DataKey, KeyRow, KeyStatus, Keyring, MasterKey, Mode};

const SIZES: [usize; 4] = [16, 64, 256, 4096];

/// Key bytes of the raw AEADs: both implementations get the same one, so
/// they open the same ciphertext.
const RAW_KEY: [u8; 32] = [9; 32];

const MODES: [Mode; 2] = [Mode::Deterministic, Mode::Randomized];

/// The raw AEADs of one mode, from both implementations.
enum Raw {
    Gcm(Aes256Gcm, LessSafeKey),
    Siv(Aes256GcmSiv, LessSafeKey),
}

impl Raw {
    fn new(mode: Mode) -> Self {
        let lc = |alg| LessSafeKey::new(UnboundKey::new(alg, &RAW_KEY).expect("aws-lc key"));
        match mode {
            Mode::Randomized => Raw::Gcm(Aes256Gcm::new(&RAW_KEY.into()), lc(&AES_256_GCM)),
            Mode::Deterministic => {
                Raw::Siv(Aes256GcmSiv::new(&RAW_KEY.into()), lc(&AES_256_GCM_SIV))
            }
        }
    }

    fn lc(&self) -> &LessSafeKey {
        match self {
            Raw::Gcm(_, k) | Raw::Siv(_, k) => k,
        }
    }

    /// RustCrypto, in place; returns the tag.
    fn rc_seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = (*nonce).into();
        match self {
            Raw::Gcm(c, _) => c.encrypt_inout_detached(&n, aad, buf.into()),
            Raw::Siv(c, _) => c.encrypt_inout_detached(&n, aad, buf.into()),
        }
        .expect("rustcrypto seal")
        .into()
    }

    /// RustCrypto, in place.
    fn rc_open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        let (n, t) = ((*nonce).into(), (*tag).into());
        match self {
            Raw::Gcm(c, _) => c.decrypt_inout_detached(&n, aad, buf.into(), &t),
            Raw::Siv(c, _) => c.decrypt_inout_detached(&n, aad, buf.into(), &t),
        }
        .expect("rustcrypto open");
    }
}

/// A keyring holding one data key, as the proxy loads it (wrapped by a
/// master key, unwrapped on load), and that key's cipher.
fn keyring() -> (Keyring, ColumnCipher) {
    let master = MasterKey::from_bytes([5; 32]);
    let key = DataKey::from_bytes([7; 32]);
    let row = KeyRow {
        id: 1,
        name: "pii".into(),
        version: 1,
        status: KeyStatus::Active,
        wrapped: key.wrap(&master, "pii", 1).expect("wrap"),
        fingerprint: None,
    };
    let ring = Keyring::load(&master, [row]).expect("keyring");
    (ring, ColumnCipher::new(1, &key))
}

fn decrypt(c: &mut Criterion) {
    let (ring, cipher) = keyring();
    let aad = column_aad("public", "customers", "ssn");
    for mode in MODES {
        let raw = Raw::new(mode);
        let mut group = c.benchmark_group(format!("decrypt/{}", mode.as_str()));
        for size in SIZES {
            let plaintext = vec![b'x'; size];
            let mut envelope = Vec::new();
            cipher.encrypt(mode, &aad, &plaintext, &mut envelope).expect("encrypt");
            let parsed = Envelope::parse(&envelope).expect("parse");
            let nonce = *parsed.nonce;
            // A real ciphertext and tag under the raw key, laid out as in an
            // envelope (ciphertext then tag), which aws-lc opens in place.
            let mut raw_ct = plaintext.clone();
            let raw_tag = raw.rc_seal(&nonce, &aad, &mut raw_ct);
            let mut raw_sealed = raw_ct.clone();
            raw_sealed.extend_from_slice(&raw_tag);

            // Every path opens to the same value (checked here, outside the
            // timed loops, so that a filtered run checks it too).
            let mut check = raw_sealed.clone();
            let opened = raw
                .lc()
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), &mut check)
                .expect("aws-lc open");
            assert_eq!(opened, &plaintext[..]);
            ring.decrypt(&aad, &envelope, &mut check).expect("decrypt");
            assert_eq!(check, plaintext);

            group.throughput(Throughput::Bytes(size as u64));
            let mut out = Vec::with_capacity(size + 64);
            group.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(std::hint::black_box(&raw_ct));
                    raw.rc_open(&nonce, &aad, &mut out, &raw_tag);
                    std::hint::black_box(&out);
                })
            });
            group.bench_with_input(BenchmarkId::new("aws-lc", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(std::hint::black_box(&raw_sealed));
                    let opened = raw
                        .lc()
                        .open_in_place(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(&aad[..]),
                            &mut out,
                        )
                        .expect("aws-lc open");
                    std::hint::black_box(&opened);
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
            group.bench_with_input(BenchmarkId::new("keyring", size), &size, |b, _| {
                b.iter(|| {
                    ring.decrypt(&aad, std::hint::black_box(&envelope), &mut out).expect("decrypt");
                    std::hint::black_box(&out);
                })
            });
        }
        group.finish();
    }
}

fn encrypt(c: &mut Criterion) {
    let (_, cipher) = keyring();
    let aad = column_aad("public", "customers", "ssn");
    // The raw calls take a fixed nonce in both modes: drawing one is the
    // caller's business, and part of what `pgwarden` costs in randomized mode.
    let nonce = [3u8; 12];
    for mode in MODES {
        let raw = Raw::new(mode);
        let mut group = c.benchmark_group(format!("encrypt/{}", mode.as_str()));
        for size in SIZES {
            let plaintext = vec![b'x'; size];
            let mut out = Vec::with_capacity(size + 64);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(std::hint::black_box(&plaintext));
                    let tag = raw.rc_seal(&nonce, &aad, &mut out);
                    out.extend_from_slice(&tag);
                    std::hint::black_box(&out);
                })
            });
            group.bench_with_input(BenchmarkId::new("aws-lc", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(std::hint::black_box(&plaintext));
                    let tag = raw
                        .lc()
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(&aad[..]),
                            &mut out,
                        )
                        .expect("aws-lc seal");
                    out.extend_from_slice(tag.as_ref());
                    std::hint::black_box(&out);
                })
            });
            group.bench_with_input(BenchmarkId::new("pgwarden", size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    cipher
                        .encrypt(mode, &aad, std::hint::black_box(&plaintext), &mut out)
                        .expect("encrypt");
                    std::hint::black_box(&out);
                })
            });
        }
        group.finish();
    }
}

/// The masks the encryption suite's masked role reads through, on values of
/// the same lengths: what a masked value costs after its decryption.
fn masks(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for (mask, value) in
        [("partial(0, '***-**-', 4)", "123-45-6789"), ("last4", "4111111111111111")]
    {
        let parsed = pgwarden_config::Mask::parse(mask).expect("mask");
        let mut out = Vec::with_capacity(64);
        group.bench_function(mask, |b| {
            b.iter(|| {
                pgwarden::access::mask::apply(
                    &parsed,
                    std::hint::black_box(value.as_bytes()),
                    |_| None,
                    &mut out,
                );
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

/// bytea's hex digits, as text results and text COPY carry envelopes: the
/// proxy's eight-at-a-time code (`pgwarden::hex`) next to a digit-by-digit
/// table loop, the obvious way, on the 47- and 52-byte envelopes of the
/// encryption suite's two columns.
fn hex(c: &mut Criterion) {
    static DIGIT: [u8; 256] = {
        let mut t = [0xff; 256];
        let mut i = 0;
        while i < 16 {
            t[b"0123456789abcdef"[i] as usize] = i as u8;
            t[b"0123456789ABCDEF"[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    fn by_digit(hex: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let mut bad = 0;
        out.extend(hex.chunks_exact(2).map(|p| {
            let (h, l) = (DIGIT[usize::from(p[0])], DIGIT[usize::from(p[1])]);
            bad |= h | l;
            h << 4 | l & 0x0f
        }));
        (bad <= 0x0f && hex.len().is_multiple_of(2)).then_some(())
    }
    let mut group = c.benchmark_group("hex");
    for len in [47usize, 52] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let mut digits = Vec::new();
        pgwarden::hex::encode_into(&bytes, &mut digits);
        let mut out = Vec::with_capacity(2 * len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("decode/pgwarden", len), &digits, |b, d| {
            b.iter(|| {
                out.clear();
                pgwarden::hex::decode_into(std::hint::black_box(d), &mut out).expect("hex");
            })
        });
        group.bench_with_input(BenchmarkId::new("decode/by-digit", len), &digits, |b, d| {
            b.iter(|| {
                out.clear();
                by_digit(std::hint::black_box(d), &mut out).expect("hex");
            })
        });
        assert_eq!(out, bytes);
        group.bench_with_input(BenchmarkId::new("encode/pgwarden", len), &bytes, |b, v| {
            b.iter(|| {
                out.clear();
                pgwarden::hex::encode_into(std::hint::black_box(v), &mut out);
            })
        });
        group.bench_with_input(BenchmarkId::new("encode/by-digit", len), &bytes, |b, v| {
            b.iter(|| {
                out.clear();
                for &x in std::hint::black_box(v) {
                    out.push(b"0123456789abcdef"[usize::from(x >> 4)]);
                    out.push(b"0123456789abcdef"[usize::from(x & 15)]);
                }
            })
        });
        assert_eq!(out, digits);
    }
    group.finish();
}

criterion_group!(benches, decrypt, encrypt, masks, hex);
criterion_main!(benches);
