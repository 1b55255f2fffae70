//! Envelope and cipher behaviour, and the promise that no error shows a secret.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::envelope::{self, Envelope, EnvelopeError, HEADER_LEN, OVERHEAD, TAG_LEN};
use super::*;

const KEY: [u8; 32] = [7; 32];

fn cipher(id: u32, key: [u8; 32]) -> ColumnCipher {
    ColumnCipher::new(id, &DataKey::from_bytes(key))
}

fn ssn_aad() -> Vec<u8> {
    envelope::column_aad("public", "customers", "ssn")
}

fn seal(c: &ColumnCipher, mode: Mode, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    c.encrypt(mode, aad, plaintext, &mut out).unwrap();
    out
}

fn open(c: &ColumnCipher, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    c.decrypt(aad, envelope, &mut out).map(|()| out)
}

#[test]
fn envelope_header_bytes_are_laid_out_as_designed() {
    let c = cipher(0x0102_0304, KEY);
    let env = seal(&c, Mode::Deterministic, &ssn_aad(), b"123-45-6789");
    assert_eq!(env.len(), 20 + 11 + 16);
    assert_eq!(env[0], 0x50, "magic P");
    assert_eq!(env[1], 0x57, "magic W");
    assert_eq!(env[2], 1, "format version");
    assert_eq!(env[3], 2, "algorithm: AES-256-GCM-SIV");
    assert_eq!(&env[4..8], &[1, 2, 3, 4], "key id, big-endian");
    let expected_nonce = {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&KEY).unwrap();
        mac.update(b"pgwarden deterministic nonce");
        mac.finalize().into_bytes()[..12].to_vec()
    };
    assert_eq!(&env[8..20], &expected_nonce[..], "nonce = HMAC-SHA256(key, label)[..12]");

    let env = seal(&c, Mode::Randomized, &ssn_aad(), b"123-45-6789");
    assert_eq!(env[3], 1, "algorithm: AES-256-GCM");
    let parsed = Envelope::parse(&env).unwrap();
    assert_eq!(parsed.mode, Mode::Randomized);
    assert_eq!(parsed.key_id, 0x0102_0304);
    assert_eq!(parsed.nonce, &env[8..20]);
    assert_eq!(parsed.ciphertext, &env[20..31]);
    assert_eq!(parsed.tag, &env[31..]);
}

#[test]
fn deterministic_envelope_matches_the_recorded_vector() {
    // Guards the format (key derivation, nonce, AAD) against silent change:
    // envelopes already stored must keep opening.
    let env = seal(&cipher(1, KEY), Mode::Deterministic, &ssn_aad(), b"123-45-6789");
    let hex: String = env.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, RECORDED_VECTOR);
}

const RECORDED_VECTOR: &str = "5057010200000001c443feec25d0fd376f7b02ab80fbde4d9609a212422f13680c66dc12d3a2b9cfc75c9d95211ebc";

/// What the cipher module documents is enough to open an envelope with the
/// plain AEADs: another implementation can read pgwarden's data.
#[test]
fn the_documented_key_derivation_opens_envelopes_with_plain_aeads() {
    use aes_gcm::aead::AeadInOut;
    let derive = |label: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&KEY).unwrap();
        mac.update(label);
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        key
    };
    let c = cipher(1, KEY);
    for mode in [Mode::Randomized, Mode::Deterministic] {
        let env = seal(&c, mode, &ssn_aad(), b"123-45-6789");
        let parsed = Envelope::parse(&env).unwrap();
        let mut buf = parsed.ciphertext.to_vec();
        let (nonce, tag) = ((*parsed.nonce).into(), (*parsed.tag).into());
        match mode {
            Mode::Randomized => {
                let aead = aes_gcm::Aes256Gcm::new(&derive(b"pgwarden v1 randomized key").into());
                aead.decrypt_inout_detached(&nonce, &ssn_aad(), buf.as_mut_slice().into(), &tag)
            }
            Mode::Deterministic => {
                let key = derive(b"pgwarden v1 deterministic key");
                let aead = aes_gcm_siv::Aes256GcmSiv::new(&key.into());
                aead.decrypt_inout_detached(&nonce, &ssn_aad(), buf.as_mut_slice().into(), &tag)
            }
        }
        .unwrap();
        assert_eq!(buf, b"123-45-6789");
    }
}

/// Data keys wrapped by another AES-256-GCM implementation (as keys written
/// by pgwarden builds on RustCrypto were) unwrap, and the other way round.
#[test]
fn wrapped_data_keys_open_with_a_plain_aead_and_back() {
    use aes_gcm::aead::AeadInOut;
    let master = MasterKey::from_bytes([0x21; 32]);
    let aead = aes_gcm::Aes256Gcm::new(&[0x21; 32].into());
    let mut aad = b"pgwarden:key:v1:".to_vec();
    aad.extend_from_slice(&3u32.to_be_bytes());
    aad.extend_from_slice(b"pii");
    aad.extend_from_slice(&2u32.to_be_bytes());

    let wrapped = DataKey::from_bytes([0x34; 32]).wrap(&master, "pii", 2).unwrap();
    let (nonce, rest) = wrapped.split_at(12);
    let (sealed, tag) = rest.split_at(32);
    let mut key = sealed.to_vec();
    let (n, t) = (<[u8; 12]>::try_from(nonce).unwrap(), <[u8; 16]>::try_from(tag).unwrap());
    aead.decrypt_inout_detached(&n.into(), &aad, key.as_mut_slice().into(), &t.into()).unwrap();
    assert_eq!(key, [0x34; 32]);

    let mut theirs = [0x56u8; 32];
    let tag = aead.encrypt_inout_detached(&[7; 12].into(), &aad, (&mut theirs[..]).into()).unwrap();
    let mut wrapped = vec![7; 12];
    wrapped.extend_from_slice(&theirs);
    wrapped.extend_from_slice(&tag);
    let opened = DataKey::unwrap(&master, "pii", 2, &wrapped).unwrap();
    assert_eq!(opened.fingerprint(), DataKey::from_bytes([0x56; 32]).fingerprint());
}

#[test]
fn column_aad_names_schema_table_and_column() {
    assert_eq!(ssn_aad(), b"pgwarden:v1:public.customers.ssn");
}

#[test]
fn envelope_parsing_never_panics_on_short_or_mangled_input() {
    let valid = seal(&cipher(9, KEY), Mode::Randomized, b"aad", b"value");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..80 {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len).map(|_| (next(&mut state) >> 24) as u8).collect();
            let _ = Envelope::parse(&bytes);
            let _ = envelope::key_id(&bytes);
            let _ = envelope::looks_like_envelope(&bytes);
        }
    }
    for cut in 0..valid.len() {
        let result = Envelope::parse(&valid[..cut]);
        if cut < OVERHEAD {
            assert_eq!(result, Err(EnvelopeError::TooShort { len: cut }));
        }
    }
}

#[test]
fn header_errors_name_what_is_wrong() {
    let mut env = seal(&cipher(9, KEY), Mode::Randomized, b"aad", b"value");
    assert!(envelope::looks_like_envelope(&env));
    env[2] = 7;
    assert_eq!(Envelope::parse(&env), Err(EnvelopeError::UnsupportedVersion(7)));
    env[2] = 1;
    env[3] = 9;
    assert_eq!(Envelope::parse(&env), Err(EnvelopeError::UnknownAlgorithm(9)));
    env[0] = b'X';
    assert_eq!(Envelope::parse(&env), Err(EnvelopeError::BadMagic));
    assert!(!envelope::looks_like_envelope(&env));
}

#[test]
fn values_round_trip_in_both_modes() {
    let c = cipher(3, KEY);
    let big = vec![0xAB; 100_000];
    for mode in [Mode::Randomized, Mode::Deterministic] {
        for plaintext in [&b""[..], b"x", b"123-45-6789", &big] {
            let env = seal(&c, mode, &ssn_aad(), plaintext);
            assert_eq!(env.len(), plaintext.len() + OVERHEAD);
            assert_eq!(open(&c, &ssn_aad(), &env).unwrap(), plaintext);
        }
    }
}

#[test]
fn deterministic_mode_gives_equal_envelopes_for_equal_values() {
    let c = cipher(3, KEY);
    let a = seal(&c, Mode::Deterministic, &ssn_aad(), b"123-45-6789");
    let b = seal(&c, Mode::Deterministic, &ssn_aad(), b"123-45-6789");
    assert_eq!(a, b);
    let other = seal(&c, Mode::Deterministic, &ssn_aad(), b"123-45-6780");
    assert_ne!(a, other);
}

#[test]
fn deterministic_envelopes_differ_between_columns_and_keys() {
    let c = cipher(3, KEY);
    let a = seal(&c, Mode::Deterministic, &ssn_aad(), b"42");
    let other_column = envelope::column_aad("public", "customers", "phone");
    assert_ne!(a, seal(&c, Mode::Deterministic, &other_column, b"42"));
    assert_ne!(a[20..], seal(&cipher(3, [8; 32]), Mode::Deterministic, &ssn_aad(), b"42")[20..]);
}

#[test]
fn randomized_mode_gives_different_envelopes_for_equal_values() {
    let c = cipher(3, KEY);
    let a = seal(&c, Mode::Randomized, &ssn_aad(), b"123-45-6789");
    let b = seal(&c, Mode::Randomized, &ssn_aad(), b"123-45-6789");
    assert_ne!(a, b);
    assert_ne!(a[8..20], b[8..20], "fresh nonce per value");
}

#[test]
fn a_value_moved_to_another_column_fails_authentication() {
    let c = cipher(3, KEY);
    let phone = envelope::column_aad("public", "customers", "phone");
    for mode in [Mode::Randomized, Mode::Deterministic] {
        let env = seal(&c, mode, &ssn_aad(), b"123-45-6789");
        assert_eq!(open(&c, &phone, &env), Err(CryptoError::Authentication));
    }
}

#[test]
fn flipping_any_bit_of_an_envelope_fails() {
    let c = cipher(3, KEY);
    for mode in [Mode::Randomized, Mode::Deterministic] {
        let env = seal(&c, mode, &ssn_aad(), b"123-45-6789");
        for i in 0..env.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                bad[i] ^= 1 << bit;
                let result = open(&c, &ssn_aad(), &bad);
                assert!(
                    matches!(
                        result,
                        Err(CryptoError::Authentication | CryptoError::Unsupported(_))
                    ),
                    "byte {i} bit {bit}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn a_truncated_envelope_fails_authentication() {
    let c = cipher(3, KEY);
    let env = seal(&c, Mode::Deterministic, &ssn_aad(), b"123-45-6789");
    for cut in 0..env.len() {
        assert_eq!(open(&c, &ssn_aad(), &env[..cut]), Err(CryptoError::Authentication), "{cut}");
    }
    let mut longer = env.clone();
    longer.push(0);
    assert_eq!(open(&c, &ssn_aad(), &longer), Err(CryptoError::Authentication));
}

#[test]
fn an_envelope_of_another_key_fails_authentication() {
    let env = seal(&cipher(3, KEY), Mode::Randomized, &ssn_aad(), b"v");
    assert_eq!(open(&cipher(3, [8; 32]), &ssn_aad(), &env), Err(CryptoError::Authentication));
    assert_eq!(open(&cipher(4, KEY), &ssn_aad(), &env), Err(CryptoError::Authentication));
}

#[test]
fn decrypt_reuses_the_output_buffer_without_allocating() {
    let c = cipher(3, KEY);
    let env = seal(&c, Mode::Randomized, &ssn_aad(), b"123-45-6789");
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"left over");
    let before = (out.as_ptr(), out.capacity());
    for _ in 0..3 {
        c.decrypt(&ssn_aad(), &env, &mut out).unwrap();
        assert_eq!(out, b"123-45-6789");
        assert_eq!((out.as_ptr(), out.capacity()), before);
    }
}

#[test]
fn a_failed_decrypt_leaves_the_output_empty() {
    let c = cipher(3, KEY);
    let mut env = seal(&c, Mode::Randomized, &ssn_aad(), b"123-45-6789");
    let last = env.len() - 1;
    env[last] ^= 1;
    let mut out = b"previous value".to_vec();
    assert!(c.decrypt(&ssn_aad(), &env, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn encrypt_appends_after_what_the_buffer_holds() {
    let c = cipher(3, KEY);
    let mut out = b"prefix".to_vec();
    c.encrypt(Mode::Deterministic, &ssn_aad(), b"v", &mut out).unwrap();
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(open(&c, &ssn_aad(), &out[6..]).unwrap(), b"v");
    assert_eq!(out.len(), 6 + HEADER_LEN + 1 + TAG_LEN);
}

#[test]
fn one_cipher_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ColumnCipher>();
    assert_send_sync::<Keyring>();
    let c = Arc::new(cipher(3, KEY));
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let env = seal(&c, Mode::Randomized, &ssn_aad(), &[i; 10]);
                open(&c, &ssn_aad(), &env).unwrap()
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), vec![i as u8; 10]);
    }
}

#[test]
fn debug_output_of_ciphers_and_keys_is_redacted() {
    let key = DataKey::from_bytes([0x41; 32]);
    assert_eq!(format!("{key:?}"), "[redacted]");
    assert_eq!(format!("{:?}", MasterKey::from_bytes([0x41; 32])), "[redacted]");
    let c = ColumnCipher::new(5, &key);
    let debug = format!("{c:?}");
    assert!(debug.contains("key_id: 5"), "{debug}");
    assert!(!debug.contains("65") && !debug.contains("41") && !debug.contains('A'), "{debug}");
}

/// Every error a secret value or secret key text can provoke, displayed and
/// debugged, must not contain it.
#[test]
fn errors_never_contain_plaintext_or_key_text() {
    let secret_value = "4111111111111111";
    let secret_key_text = "c2VjcmV0LWtleS10ZXh0LXRoYXQtaXMtbm90LTMyYg";
    let mut messages = Vec::new();
    let mut push = |e: &dyn std::fmt::Debug, d: String| messages.push((format!("{e:?}"), d));

    let c = cipher(3, KEY);
    let env = seal(&c, Mode::Deterministic, &ssn_aad(), secret_value.as_bytes());
    let phone = envelope::column_aad("public", "customers", "phone");
    for e in [
        open(&c, &phone, &env).unwrap_err(),
        open(&c, &ssn_aad(), &env[..10]).unwrap_err(),
        open(&c, &ssn_aad(), secret_value.as_bytes()).unwrap_err(),
        CryptoError::Unsupported(EnvelopeError::UnsupportedVersion(2)),
        CryptoError::Unsupported(EnvelopeError::UnknownAlgorithm(3)),
        CryptoError::UnknownKey { id: 3 },
        CryptoError::RevokedKey { id: 3, name: "pii".into(), version: 1 },
        CryptoError::NoActiveKey { name: "pii".into() },
        CryptoError::TooLarge { len: 1 },
    ] {
        push(&e, e.to_string());
    }
    for e in [
        EnvelopeError::TooShort { len: 3 },
        EnvelopeError::BadMagic,
        Envelope::parse(secret_value.as_bytes()).unwrap_err(),
    ] {
        push(&e, e.to_string());
    }

    let master = MasterKey::from_bytes([1; 32]);
    let other = MasterKey::from_bytes([2; 32]);
    let wrapped = DataKey::from_bytes([0x34; 32]).wrap(&master, "pii", 1).unwrap();
    for e in [
        MasterKey::from_base64(secret_key_text).unwrap_err(),
        MasterKey::from_base64(&format!("{secret_key_text}!!")).unwrap_err(),
        MasterKey::from_base64(&secret_key_text.repeat(10)).unwrap_err(),
        DataKey::unwrap(&other, "pii", 1, &wrapped).unwrap_err(),
        KeyError::InsecureKeyFile { path: "/k".into(), mode: 0o644 },
        KeyError::Read("environment variable X is not set".into()),
        KeyError::FingerprintMismatch { name: "pii".into(), version: 1 },
        KeyError::DuplicateId { id: 1 },
        KeyError::DuplicateVersion { name: "pii".into(), version: 1 },
        KeyError::Wrap { name: "pii".into(), version: 1 },
        "SECRET".parse::<KeyStatus>().unwrap_err(),
    ] {
        push(&e, e.to_string());
    }

    for ty in LogicalType::ALL {
        for format in [Format::Text, Format::Binary] {
            for input in
                [secret_value.to_string(), format!("x{secret_value}"), format!("{{{secret_value}")]
            {
                if let Err(e) = codec::canonicalize(ty, format, input.as_bytes()) {
                    push(&e, e.to_string());
                }
            }
        }
        let mut out = Vec::new();
        if let Err(e) = codec::to_binary(ty, format!("x{secret_value}").as_bytes(), &mut out) {
            push(&e, e.to_string());
        }
    }

    assert!(messages.len() > 40, "{}", messages.len());
    let wrapped_hex: String = wrapped.iter().map(|b| format!("{b:02x}")).collect();
    for (debug, display) in &messages {
        for text in [debug, display] {
            assert!(!text.contains(secret_value), "{text}");
            assert!(!text.contains(&secret_key_text[..12]), "{text}");
            assert!(!text.contains("3434"), "{text}");
            assert!(!text.contains(&wrapped_hex[..8]), "{text}");
        }
    }
}

/// A small deterministic PRNG (xorshift64*) for property-style loops.
pub(super) fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
