use std::os::unix::fs::PermissionsExt;

use pgwarden_config::Secret;

use super::*;
use crate::crypto::envelope::{column_aad, Mode};
use crate::crypto::error::CryptoError;

/// What `openssl rand -base64 32` prints: 44 characters and a newline.
const OPENSSL_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n";

fn master() -> MasterKey {
    MasterKey::from_base64(OPENSSL_KEY).unwrap()
}

fn row(id: u32, name: &str, version: u32, status: KeyStatus, key: &DataKey) -> KeyRow {
    KeyRow {
        id,
        name: name.into(),
        version,
        status,
        wrapped: key.wrap(&master(), name, version).unwrap(),
        fingerprint: Some(key.fingerprint()),
    }
}

fn key_file(mode: u32, contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

#[test]
fn master_key_loads_from_openssl_base64_output() {
    let key = master();
    assert_eq!(key.to_base64().expose(), OPENSSL_KEY.trim());
    let again = MasterKey::from_base64(key.to_base64().expose()).unwrap();
    assert_eq!(again.fingerprint(), key.fingerprint());
}

#[test]
fn master_key_of_the_wrong_length_is_refused_without_echoing_it() {
    let short = "c2hvcnQta2V5LXRleHQ=";
    let e = MasterKey::from_base64(short).unwrap_err();
    assert_eq!(e, KeyError::MasterKeyLength { len: 14 });
    assert!(e.to_string().contains("openssl rand -base64 32"), "{e}");
    assert!(!e.to_string().contains(short));
    let long = "QUFB".repeat(100);
    assert!(matches!(MasterKey::from_base64(&long), Err(KeyError::MasterKeyLength { .. })));
}

#[test]
fn master_key_that_is_not_base64_is_refused_without_echoing_it() {
    let e = MasterKey::from_base64("not base64 at all: $$$").unwrap_err();
    assert_eq!(e, KeyError::MasterKeyEncoding);
    assert!(!format!("{e} {e:?}").contains("$$$"));
}

#[test]
fn master_key_file_with_mode_0600_or_stricter_loads() {
    for mode in [0o600, 0o400] {
        let (_dir, path) = key_file(mode, OPENSSL_KEY);
        let key = MasterKey::load(&Secret::File(path)).unwrap();
        assert_eq!(key.fingerprint(), master().fingerprint());
    }
}

#[test]
fn master_key_file_readable_by_group_is_refused() {
    let (_dir, path) = key_file(0o640, OPENSSL_KEY);
    let e = MasterKey::load(&Secret::File(path.clone())).unwrap_err();
    assert_eq!(e, KeyError::InsecureKeyFile { path: path.clone(), mode: 0o640 });
    let message = e.to_string();
    assert!(message.contains(&format!("chmod 600 {path}")), "{message}");
    assert!(message.contains("0640"), "{message}");
}

#[test]
fn master_key_file_readable_by_others_is_refused() {
    let (_dir, path) = key_file(0o604, OPENSSL_KEY);
    assert!(matches!(
        MasterKey::load(&Secret::File(path)),
        Err(KeyError::InsecureKeyFile { mode: 0o604, .. })
    ));
}

#[test]
fn missing_or_empty_master_key_file_is_reported_with_its_path() {
    let (_dir, path) = key_file(0o600, "\n");
    let e = MasterKey::load(&Secret::File(path.clone())).unwrap_err();
    assert!(e.to_string().contains(&path) && e.to_string().contains("empty"), "{e}");
    let gone = format!("{path}.missing");
    let e = MasterKey::load(&Secret::File(gone.clone())).unwrap_err();
    assert!(e.to_string().contains(&gone), "{e}");
}

#[test]
fn master_key_loads_from_an_environment_variable() {
    let var = format!("PGWARDEN_TEST_MASTER_KEY_{}", std::process::id());
    std::env::set_var(&var, OPENSSL_KEY.trim());
    let key = MasterKey::load(&Secret::Env(var.clone())).unwrap();
    assert_eq!(key.fingerprint(), master().fingerprint());
    std::env::remove_var(&var);
    let e = MasterKey::load(&Secret::Env(var.clone())).unwrap_err();
    assert!(e.to_string().contains(&var), "{e}");
}

#[test]
fn data_key_wraps_and_unwraps_under_the_same_master_key() {
    let key = DataKey::generate();
    let wrapped = key.wrap(&master(), "pii", 3).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_LEN);
    assert_ne!(wrapped, key.wrap(&master(), "pii", 3).unwrap(), "random nonce per wrap");
    let unwrapped = DataKey::unwrap(&master(), "pii", 3, &wrapped).unwrap();
    assert_eq!(unwrapped.expose(), key.expose());
    assert!(!wrapped.windows(8).any(|w| w == &key.expose()[..8]));
}

#[test]
fn unwrapping_with_another_master_key_fails_naming_the_key() {
    let wrapped = DataKey::generate().wrap(&master(), "pii", 3).unwrap();
    let e = DataKey::unwrap(&MasterKey::generate(), "pii", 3, &wrapped).unwrap_err();
    assert_eq!(
        e.to_string().split(':').next().unwrap(),
        "wrong master key or corrupted key pii v3"
    );
}

#[test]
fn unwrapping_under_another_name_or_version_or_damaged_fails() {
    let wrapped = DataKey::generate().wrap(&master(), "pii", 3).unwrap();
    assert!(DataKey::unwrap(&master(), "pii", 4, &wrapped).is_err());
    assert!(DataKey::unwrap(&master(), "pij", 3, &wrapped).is_err());
    for cut in 0..wrapped.len() {
        assert!(DataKey::unwrap(&master(), "pii", 3, &wrapped[..cut]).is_err());
    }
    let mut bad = wrapped.clone();
    bad[20] ^= 1;
    assert!(DataKey::unwrap(&master(), "pii", 3, &bad).is_err());
}

#[test]
fn fingerprints_are_short_hex_and_do_not_reveal_the_key() {
    let key = DataKey::from_bytes([0xAB; 32]);
    let fp = key.fingerprint();
    assert_eq!(fp.len(), 16);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!fp.contains("abab"));
    assert_eq!(fp, DataKey::from_bytes([0xAB; 32]).fingerprint());
    assert_ne!(fp, DataKey::from_bytes([0xAC; 32]).fingerprint());
    assert_ne!(fp, MasterKey::from_bytes([0xAB; 32]).fingerprint(), "domain-separated");
}

#[test]
fn key_status_parses_case_insensitively() {
    assert_eq!("ACTIVE".parse::<KeyStatus>().unwrap(), KeyStatus::Active);
    assert_eq!("rotating".parse::<KeyStatus>().unwrap(), KeyStatus::Rotating);
    assert_eq!(" Deprecated ".parse::<KeyStatus>().unwrap(), KeyStatus::Deprecated);
    assert_eq!("REVOKED".parse::<KeyStatus>().unwrap(), KeyStatus::Revoked);
    assert_eq!("gone".parse::<KeyStatus>(), Err(KeyError::UnknownStatus));
    assert_eq!(KeyStatus::Rotating.to_string(), "ROTATING");
}

#[test]
fn keyring_writes_with_the_newest_active_version_and_reads_every_loaded_one() {
    let (v1, v2, v3) = (DataKey::generate(), DataKey::generate(), DataKey::generate());
    let ring = Keyring::load(
        &master(),
        [
            row(10, "pii", 1, KeyStatus::Deprecated, &v1),
            row(12, "pii", 3, KeyStatus::Rotating, &v3),
            row(11, "pii", 2, KeyStatus::Active, &v2),
        ],
    )
    .unwrap();
    assert_eq!(ring.active("pii").unwrap().key_id(), 11);
    let readable: Vec<u32> = ring.readable("pii").iter().map(|c| c.key_id()).collect();
    assert_eq!(readable, [12, 11, 10]);
    assert!(ring.readable("other").is_empty());

    let aad = column_aad("public", "customers", "ssn");
    for id in [10, 11, 12] {
        let mut env = Vec::new();
        ring.cipher(id).unwrap().encrypt(Mode::Deterministic, &aad, b"v", &mut env).unwrap();
        let mut out = Vec::new();
        ring.decrypt(&aad, &env, &mut out).unwrap();
        assert_eq!(out, b"v");
    }
    let versions: Vec<u32> = ring.keys().iter().map(|k| k.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(ring.keys()[1].fingerprint.as_deref(), Some(v2.fingerprint().as_str()));
}

#[test]
fn a_key_name_without_an_active_version_cannot_encrypt() {
    let ring =
        Keyring::load(&master(), [row(1, "pii", 1, KeyStatus::Deprecated, &DataKey::generate())])
            .unwrap();
    assert_eq!(ring.active("pii").unwrap_err(), CryptoError::NoActiveKey { name: "pii".into() });
    assert!(ring.active("other").is_err());
}

#[test]
fn revoked_key_is_not_loaded_and_its_values_fail_with_a_clear_error() {
    let key = DataKey::generate();
    let aad = column_aad("public", "customers", "ssn");
    let mut env = Vec::new();
    ColumnCipher::new(7, &key).encrypt(Mode::Randomized, &aad, b"v", &mut env).unwrap();
    let mut revoked = row(7, "pii", 1, KeyStatus::Revoked, &key);
    // Never unwrapped: even a damaged wrapped key loads as revoked.
    revoked.wrapped = vec![0; 3];
    let ring = Keyring::load(&master(), [revoked]).unwrap();
    let e = ring.decrypt(&aad, &env, &mut Vec::new()).unwrap_err();
    assert_eq!(e, CryptoError::RevokedKey { id: 7, name: "pii".into(), version: 1 });
    assert!(e.to_string().contains("pii v1") && e.to_string().contains("REVOKED"), "{e}");
    assert!(ring.active("pii").is_err());
    assert!(ring.readable("pii").is_empty());
}

#[test]
fn an_envelope_of_an_unloaded_key_names_its_id() {
    let ring = Keyring::load(&master(), []).unwrap();
    let mut env = Vec::new();
    let aad = column_aad("s", "t", "c");
    ColumnCipher::new(42, &DataKey::generate())
        .encrypt(Mode::Randomized, &aad, b"v", &mut env)
        .unwrap();
    let e = ring.decrypt(&aad, &env, &mut Vec::new()).unwrap_err();
    assert_eq!(e, CryptoError::UnknownKey { id: 42 });
    assert_eq!(ring.decrypt(&aad, b"PW", &mut Vec::new()), Err(CryptoError::Authentication));
}

#[test]
fn keyring_with_the_wrong_master_key_does_not_load() {
    let rows = [row(1, "pii", 1, KeyStatus::Active, &DataKey::generate())];
    let e = Keyring::load(&MasterKey::generate(), rows).unwrap_err();
    assert_eq!(e, KeyError::Unwrap { name: "pii".into(), version: 1 });
}

#[test]
fn keyring_refuses_duplicates_and_altered_fingerprints() {
    let (a, b) = (DataKey::generate(), DataKey::generate());
    let e = Keyring::load(
        &master(),
        [row(1, "pii", 1, KeyStatus::Active, &a), row(1, "pii", 2, KeyStatus::Active, &b)],
    )
    .unwrap_err();
    assert_eq!(e, KeyError::DuplicateId { id: 1 });
    let e = Keyring::load(
        &master(),
        [row(1, "pii", 1, KeyStatus::Active, &a), row(2, "pii", 1, KeyStatus::Active, &b)],
    )
    .unwrap_err();
    assert_eq!(e, KeyError::DuplicateVersion { name: "pii".into(), version: 1 });
    let mut swapped = row(1, "pii", 1, KeyStatus::Active, &a);
    swapped.fingerprint = Some(b.fingerprint());
    assert_eq!(
        Keyring::load(&master(), [swapped]).unwrap_err(),
        KeyError::FingerprintMismatch { name: "pii".into(), version: 1 }
    );
}

#[test]
fn keyring_debug_shows_key_metadata_only() {
    let key = DataKey::from_bytes([0x5A; 32]);
    let ring = Keyring::load(&master(), [row(1, "pii", 1, KeyStatus::Active, &key)]).unwrap();
    let debug = format!("{ring:?} {:?}", row(1, "pii", 1, KeyStatus::Active, &key));
    assert!(debug.contains("pii") && debug.contains("Active"), "{debug}");
    assert!(!debug.contains("5a5a") && !debug.contains("90, 90"), "{debug}");
    assert!(!debug.contains("wrapped"), "{debug}");
}
