//! Key objects: the master keys of an encrypted datastore, wrapped.
//!
//! The master keys ([`crate::crypto`]) are never stored in the clear. Each
//! key object `keys/<id>.json` holds them sealed with XChaCha20-Poly1305
//! under a key-encryption key (KEK) that comes from outside the datastore:
//!
//! - a **key file**: 32 random bytes, hex, kept by the operator elsewhere
//!   ([`generate_key_file`]); KEK = BLAKE3 `derive_key` of its bytes;
//! - a **passphrase**: KEK = Argon2id(passphrase, random 16-byte salt) with
//!   the memory, time and parallelism stated in the object.
//!
//! ```json
//! {
//!   "format": 1,
//!   "id": "<16 hex>",
//!   "created": "2026-11-26T10:15:00Z",
//!   "kdf": {"type": "keyfile"}
//!        | {"type": "argon2id", "memory_kib": 131072, "iterations": 4,
//!           "parallelism": 1, "salt": "<32 hex>"},
//!   "cipher": "xchacha20poly1305",
//!   "sealed": "<hex: nonce 24 | ciphertext of data, id and MAC keys (96) | tag 16>",
//!   "checksum": "<BLAKE3 hex of this JSON with an empty checksum>"
//! }
//! ```
//!
//! The seal's associated data is `"standby key object v1\0" id "\0" kdf`
//! (the kdf as JSON), so the parameters cannot be swapped. The checksum
//! is not a security measure: it tells an altered object ("corrupt key
//! object") from a wrong key, which a seal alone cannot. Several objects
//! may wrap the same master keys (`Datastore::add_key`); any one opens
//! the store.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::StoreError;
use crate::backend::Backend;
use crate::crypto::{self, Crypto, KEYED_HASH_NAME, MASTER_KEYS_LEN, MasterKeys};
pub use crate::layout::KEYS_DIR;
use crate::layout::{MARKER_FILE, Marker, already_exists};
use crate::seal::{self, CIPHER_NAME, KEY_LEN};

/// Where the key of an encrypted datastore comes from. Secrets are
/// zeroized when dropped and never shown by `Debug`.
pub enum KeySource {
    /// A key file made by [`generate_key_file`].
    File(PathBuf),
    /// A passphrase, stretched with Argon2id.
    Passphrase(String),
}

impl Drop for KeySource {
    fn drop(&mut self) {
        if let KeySource::Passphrase(p) = self {
            p.zeroize();
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => f.debug_tuple("File").field(path).finish(),
            KeySource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Passphrase(_) => f.write_str("passphrase"),
        }
    }
}

/// Argon2id cost of a passphrase key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 128 MiB, 4 passes, 1 lane: about 0.5 s on the development machine
    /// (one core), which is what an attacker pays per guess too.
    fn default() -> Self {
        KdfParams {
            memory_kib: 128 << 10,
            iterations: 4,
            parallelism: 1,
        }
    }
}

/// Upper bounds on what a key object may ask for, so a forged object
/// cannot make `open` allocate the machine away.
const MAX_MEMORY_KIB: u32 = 4 << 20;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;

const KEY_OBJECT_FORMAT: u32 = 1;
const SEAL_CONTEXT: &[u8] = b"standby key object v1\0";
const KEY_FILE_CONTEXT: &str = "standby 2026-11-26 key file to key-encryption key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Kdf {
    Keyfile,
    Argon2id {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyObject {
    format: u32,
    id: String,
    created: chrono::DateTime<chrono::Utc>,
    kdf: Kdf,
    cipher: String,
    sealed: String,
    #[serde(default)]
    checksum: String,
}

impl KeyObject {
    fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum.clear();
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }

    fn ad(&self) -> Vec<u8> {
        let mut ad = SEAL_CONTEXT.to_vec();
        ad.extend_from_slice(self.id.as_bytes());
        ad.push(0);
        ad.extend_from_slice(&serde_json::to_vec(&self.kdf).unwrap_or_default());
        ad
    }

    fn path(&self) -> String {
        format!("{KEYS_DIR}/{}.json", self.id)
    }
}

/// Write a new key file at `path`: 32 random bytes as hex, mode 0600.
/// An existing file is never replaced.
pub fn generate_key_file(path: &Path) -> Result<(), StoreError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    crypto::random_bytes(&mut key[..]).map_err(|e| StoreError::io("generate key", path, e))?;
    let mut text = Zeroizing::new(hex::encode(&key[..]));
    text.push('\n');
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io("create key file", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write key file", path, e))
}

/// The key of a key file: 64 hex digits, surrounding whitespace allowed.
pub(crate) fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let text =
        Zeroizing::new(std::fs::read(path).map_err(|e| StoreError::io("read key file", path, e))?);
    let bad = || StoreError::KeyFile {
        path: path.to_path_buf(),
        reason: "expected 64 hex digits (32 bytes)".into(),
    };
    let trimmed = text.trim_ascii();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if trimmed.len() != 2 * KEY_LEN {
        return Err(bad());
    }
    hex::decode_to_slice(trimmed, &mut key[..]).map_err(|_| bad())?;
    Ok(key)
}

/// The key-encryption key for `kdf` from `source`, or None when the
/// source is of the other kind.
fn derive_kek(kdf: &Kdf, source: &KeySource) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, String> {
    match (kdf, source) {
        (Kdf::Keyfile, KeySource::File(path)) => {
            let key = read_key_file(path).map_err(|e| e.to_string())?;
            Ok(Some(Zeroizing::new(blake3::derive_key(
                KEY_FILE_CONTEXT,
                &key[..],
            ))))
        }
        (
            Kdf::Argon2id {
                memory_kib,
                iterations,
                parallelism,
                salt,
            },
            KeySource::Passphrase(pass),
        ) => {
            if *memory_kib > MAX_MEMORY_KIB
                || *iterations > MAX_ITERATIONS
                || *parallelism > MAX_PARALLELISM
            {
                return Err("argon2id parameters out of range".into());
            }
            let salt = hex::decode(salt).map_err(|_| "salt is not hex".to_string())?;
            let params = argon2::Params::new(*memory_kib, *iterations, *parallelism, Some(KEY_LEN))
                .map_err(|e| format!("invalid argon2id parameters: {e}"))?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut kek = Zeroizing::new([0u8; KEY_LEN]);
            argon
                .hash_password_into(pass.as_bytes(), &salt, &mut kek[..])
                .map_err(|e| format!("argon2id failed: {e}"))?;
            Ok(Some(kek))
        }
        _ => Ok(None),
    }
}

/// A new key object wrapping `keys` for `source`: its path and bytes.
pub(crate) fn wrap(
    keys: &MasterKeys,
    source: &KeySource,
    params: KdfParams,
) -> Result<(String, Vec<u8>), StoreError> {
    let kdf = match source {
        KeySource::File(_) => Kdf::Keyfile,
        KeySource::Passphrase(_) => {
            let mut salt = [0u8; 16];
            crypto::random_bytes(&mut salt).map_err(|e| StoreError::io("generate", "salt", e))?;
            Kdf::Argon2id {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
                salt: hex::encode(salt),
            }
        }
    };
    let mut object = KeyObject {
        format: KEY_OBJECT_FORMAT,
        id: format!("{:016x}", rand::random::<u64>()),
        created: chrono::Utc::now(),
        kdf,
        cipher: CIPHER_NAME.into(),
        sealed: String::new(),
        checksum: String::new(),
    };
    let kek = match derive_kek(&object.kdf, source) {
        Ok(Some(kek)) => kek,
        Ok(None) => unreachable!("the kdf was chosen for the source"),
        Err(reason) => {
            return Err(match source {
                KeySource::File(path) => StoreError::KeyFile {
                    path: path.clone(),
                    reason,
                },
                KeySource::Passphrase(_) => StoreError::Kdf(reason),
            });
        }
    };
    let sealed = seal::seal_with(&seal::cipher(&kek), &object.ad(), &*keys.to_bytes());
    object.sealed = hex::encode(sealed);
    object.checksum = object.compute_checksum();
    let mut bytes = serde_json::to_vec_pretty(&object).map_err(|source| StoreError::Json {
        what: "key object".into(),
        source,
    })?;
    bytes.push(b'\n');
    Ok((object.path(), bytes))
}

/// Why one key object did not give the keys.
enum Miss {
    /// Another kind of source, or the seal did not open.
    NotThisKey,
    /// The object is damaged; the reason says how.
    Corrupt(String),
}

fn try_open(bytes: &[u8], path: &str, source: &KeySource) -> Result<MasterKeys, Miss> {
    let object: KeyObject =
        serde_json::from_slice(bytes).map_err(|e| Miss::Corrupt(format!("invalid json: {e}")))?;
    if object.format != KEY_OBJECT_FORMAT {
        return Err(Miss::Corrupt(format!(
            "unsupported key object format {}",
            object.format
        )));
    }
    if object.checksum != object.compute_checksum() {
        return Err(Miss::Corrupt("checksum mismatch".into()));
    }
    if object.path() != path {
        return Err(Miss::Corrupt(format!(
            "holds key object {} at the wrong path",
            object.id
        )));
    }
    if object.cipher != CIPHER_NAME {
        return Err(Miss::Corrupt(format!("unknown cipher '{}'", object.cipher)));
    }
    let kek = match derive_kek(&object.kdf, source) {
        Ok(Some(kek)) => kek,
        Ok(None) => return Err(Miss::NotThisKey),
        Err(reason) => return Err(Miss::Corrupt(reason)),
    };
    let sealed =
        hex::decode(&object.sealed).map_err(|_| Miss::Corrupt("sealed keys are not hex".into()))?;
    let plain = seal::open_with(&seal::cipher(&kek), &object.ad(), &sealed)
        .map_err(|_| Miss::NotThisKey)?;
    let plain = Zeroizing::new(plain);
    if plain.len() != MASTER_KEYS_LEN {
        return Err(Miss::Corrupt("sealed keys have the wrong length".into()));
    }
    MasterKeys::from_bytes(&plain).ok_or(Miss::NotThisKey)
}

/// For the fuzz target (see [`crate::fuzz`]): `bytes` read as the key
/// object it names, then once more with its checksum made right, so the
/// checks after it are reached too. A passphrase opens objects of a small
/// Argon2id cost; a larger cost is checked but never run.
pub(crate) fn fuzz_open(bytes: &[u8]) -> Option<bool> {
    let source = |kdf: &Kdf| match kdf {
        Kdf::Argon2id {
            memory_kib,
            iterations,
            ..
        } if u64::from(*memory_kib) * u64::from(*iterations) <= 256 => {
            KeySource::Passphrase("fuzz".into())
        }
        _ => KeySource::File(PathBuf::from("/nonexistent/standby-fuzz.key")),
    };
    let Ok(mut object) = serde_json::from_slice::<KeyObject>(bytes) else {
        let _ = try_open(bytes, "keys/0.json", &KeySource::Passphrase("fuzz".into()));
        return None;
    };
    let source = source(&object.kdf);
    let _ = try_open(bytes, &object.path(), &source);
    object.checksum = object.compute_checksum();
    let fixed = serde_json::to_vec(&object).ok()?;
    Some(try_open(&fixed, &object.path(), &source).is_ok())
}

/// Open the master keys of the datastore behind `backend` with `source`:
/// the first key object that opens with it and whose keys pass the
/// marker's `key_check`.
pub(crate) fn unlock(
    backend: &dyn Backend,
    source: &KeySource,
    key_check: Option<&str>,
) -> Result<(MasterKeys, String), StoreError> {
    let location = backend.location().to_path_buf();
    // A source of the wrong kind (key file given, only passphrase objects
    // present) is a wrong key too.
    let mut corrupt: Option<(String, String)> = None;
    if let KeySource::File(path) = source {
        // An unreadable or malformed key file is its own error, once.
        read_key_file(path)?;
    }
    for object in backend.list(KEYS_DIR)? {
        if !object.path.ends_with(".json") {
            continue;
        }
        let bytes = backend.get(&object.path)?;
        match try_open(&bytes, &object.path, source) {
            Ok(keys) => {
                let check = Crypto::new(keys.clone()).key_check();
                if key_check.is_some_and(|c| c != check) {
                    corrupt.get_or_insert((
                        object.path.clone(),
                        "it opens, but holds the keys of another datastore".into(),
                    ));
                    continue;
                }
                return Ok((keys, object.path));
            }
            Err(Miss::NotThisKey) => {}
            Err(Miss::Corrupt(reason)) => {
                tracing::warn!(object = %object.path, %reason, "damaged key object");
                corrupt.get_or_insert((object.path.clone(), reason));
            }
        }
    }
    match corrupt {
        Some((object, reason)) => Err(StoreError::Corrupt {
            object: format!("key object {object}"),
            root: location,
            reason: format!("{reason}; no other key object opens with the given key"),
        }),
        None => Err(StoreError::WrongKey { location }),
    }
}

/// Problems of the key objects of a datastore, for verify: (object, what
/// is wrong). Only what can be checked without a key.
pub(crate) fn check_objects(backend: &dyn Backend) -> Result<Vec<(String, String)>, StoreError> {
    let mut problems = Vec::new();
    for object in backend.list(KEYS_DIR)? {
        if !object.path.ends_with(".json") {
            continue;
        }
        let bytes = backend.get(&object.path)?;
        let parsed: Result<KeyObject, _> = serde_json::from_slice(&bytes);
        let reason = match parsed {
            Err(e) => Some(format!("invalid json: {e}")),
            Ok(o) if o.checksum != o.compute_checksum() => Some("checksum mismatch".into()),
            Ok(o) if o.path() != object.path => Some("at the wrong path".into()),
            Ok(_) => None,
        };
        if let Some(reason) = reason {
            problems.push((format!("key object {}", object.path), reason));
        }
    }
    Ok(problems)
}

/// The crypto of a datastore with `marker`, opened with `key`: None for
/// an unencrypted one. An encrypted datastore needs a key, an unencrypted
/// one takes none.
pub(crate) fn unlock_marker(
    backend: &dyn Backend,
    marker: &Marker,
    key: Option<&KeySource>,
) -> Result<Option<Crypto>, StoreError> {
    let location = backend.location().to_path_buf();
    match (marker.encryption.as_deref(), key) {
        (None, None) => {
            if marker.chunk_hash.as_deref().is_some_and(|h| h != "blake3") {
                return Err(StoreError::Corrupt {
                    object: format!("marker {MARKER_FILE}"),
                    root: location,
                    reason: "unencrypted, with keyed chunk ids".into(),
                });
            }
            Ok(None)
        }
        (None, Some(_)) => Err(StoreError::NotEncrypted { location }),
        (Some(_), None) => Err(StoreError::KeyRequired { location }),
        (Some(CIPHER_NAME), Some(key)) => {
            if marker.chunk_hash.as_deref() != Some(KEYED_HASH_NAME) {
                return Err(StoreError::Corrupt {
                    object: format!("marker {MARKER_FILE}"),
                    root: location,
                    reason: "encrypted, without keyed chunk ids".into(),
                });
            }
            let (keys, object) = unlock(backend, key, marker.key_check.as_deref())?;
            tracing::debug!(%object, "datastore unlocked");
            Ok(Some(Crypto::new(keys)))
        }
        (Some(other), Some(_)) => Err(StoreError::Corrupt {
            object: format!("marker {MARKER_FILE}"),
            root: location,
            reason: format!("unknown encryption '{other}'"),
        }),
    }
}

/// Make the master keys of a new encrypted datastore on `backend`, wrap
/// them for `key`, and have `layout` write the key object and then the
/// marker (see `layout::create_layout`). When another creator's marker
/// won, the key object is removed and the error is `AlreadyExists`.
pub(crate) fn create_encrypted_layout(
    backend: &dyn Backend,
    key: &KeySource,
    kdf: KdfParams,
    layout: impl FnOnce(
        &Marker,
        &dyn Fn(&dyn Backend) -> Result<(), StoreError>,
    ) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let location = backend.location();
    let keys =
        MasterKeys::random().map_err(|e| StoreError::io("generate keys for", location, e))?;
    let (path, bytes) = wrap(&keys, key, kdf)?;
    let mut marker = Marker::new(KEYED_HASH_NAME);
    marker.encryption = Some(CIPHER_NAME.into());
    marker.key_check = Some(Crypto::new(keys.clone()).key_check());
    let created = layout(&marker, &|b: &dyn Backend| b.put_new(&path, &bytes))?;
    if !created {
        // Another process made a datastore here first: ours is not it.
        let _ = backend.delete(&path);
        return Err(already_exists(backend));
    }
    tracing::info!(location = %location.display(), object = %path, key = %key, "encrypted datastore created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn key_file_is_private_hex_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        generate_key_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(generate_key_file(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::write(&path, "not a key").unwrap();
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("64 hex digits") && !e.contains("not a key"),
            "{e}"
        );
    }

    #[test]
    fn wrap_and_unlock_with_file_and_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        // Laid out like a datastore: a backend writes only into one.
        crate::layout::create_dirs(dir.path()).unwrap();
        let backend = LocalBackend::new(dir.path());
        let keyfile = dir.path().join("k");
        generate_key_file(&keyfile).unwrap();
        let keys = MasterKeys::random().unwrap();
        let check = crypto::Crypto::new(keys.clone()).key_check();
        let file = KeySource::File(keyfile);
        let pass = KeySource::Passphrase("correct horse".into());
        for source in [&file, &pass] {
            let (path, bytes) = wrap(&keys, source, CHEAP).unwrap();
            assert!(path.starts_with("keys/") && path.ends_with(".json"));
            backend.put_new(&path, &bytes).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.contains("correct horse"));
            for key in keys.to_bytes().chunks(KEY_LEN) {
                assert!(!text.contains(&hex::encode(key)));
            }
        }
        for source in [&file, &pass] {
            let (got, _) = unlock(&backend, source, Some(&check)).unwrap();
            assert_eq!(*got.to_bytes(), *keys.to_bytes());
        }
        let wrong = KeySource::Passphrase("wrong horse".into());
        assert!(matches!(
            unlock(&backend, &wrong, Some(&check)),
            Err(StoreError::WrongKey { .. })
        ));
        let other = dir.path().join("other");
        generate_key_file(&other).unwrap();
        assert!(matches!(
            unlock(&backend, &KeySource::File(other), Some(&check)),
            Err(StoreError::WrongKey { .. })
        ));
        assert!(matches!(
            unlock(&backend, &file, Some("00")),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(check_objects(&backend).unwrap().is_empty());
    }

    #[test]
    fn debug_and_display_hide_the_passphrase() {
        let pass = KeySource::Passphrase("hunter2-secret".into());
        for text in [format!("{pass:?}"), pass.to_string(), format!("{pass:#?}")] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        let file = KeySource::File("/etc/standby/site.key".into());
        assert!(format!("{file:?}").contains("site.key"));
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// `cargo test -p standby-store kdf_default_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn kdf_default_cost() {
        let kdf = Kdf::Argon2id {
            memory_kib: KdfParams::default().memory_kib,
            iterations: KdfParams::default().iterations,
            parallelism: KdfParams::default().parallelism,
            salt: "00".repeat(16),
        };
        let source = KeySource::Passphrase("x".into());
        let t = std::time::Instant::now();
        derive_kek(&kdf, &source).unwrap();
        println!("argon2id {:?}: {:?}", KdfParams::default(), t.elapsed());
    }
}
