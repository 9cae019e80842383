//! Encryption of a datastore: the master keys and what is done with them.
//!
//! An encrypted datastore has three random 256-bit master keys:
//!
//! - the **data key** seals blobs and manifests with XChaCha20-Poly1305
//!   (random 24-byte nonce per seal, so nonces never repeat in practice);
//! - the **id key** keys BLAKE3 for chunk ids, so the storage provider
//!   cannot confirm a guess of a chunk's plaintext from its id;
//! - the **MAC key** keys BLAKE3 for the trailer of pack index files.
//!
//! The keys live in memory only, zeroized on drop, and are stored in the
//! datastore only wrapped (see [`crate::keys`]). Every sealed object binds
//! what it is to its associated data: a blob its header and chunk id, a
//! manifest its object path. See `docs/encryption.md` for the formats.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::blob::{self, BlobError, BlobKind};
use crate::chunk::{self, ChunkId};
use crate::datastore::Datastore;
use crate::manifest::Manifest;
use crate::pack::{self, PackIndex};

/// Value of the marker's `encryption` field, and of a key object's cipher.
pub const CIPHER_NAME: &str = "xchacha20poly1305";
/// Value of the marker's `chunk_hash` field in an encrypted datastore.
pub const KEYED_HASH_NAME: &str = "blake3-keyed";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a seal adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const KEY_LEN: usize = 32;

/// The master keys of an encrypted datastore.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct MasterKeys {
    data: [u8; KEY_LEN],
    id: [u8; KEY_LEN],
    mac: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys(<redacted>)")
    }
}

/// Serialized length of [`MasterKeys`].
pub(crate) const MASTER_KEYS_LEN: usize = 3 * KEY_LEN;

impl MasterKeys {
    /// Fresh keys from the operating system's random source.
    pub fn random() -> std::io::Result<MasterKeys> {
        let mut keys = MasterKeys {
            data: [0; KEY_LEN],
            id: [0; KEY_LEN],
            mac: [0; KEY_LEN],
        };
        random_bytes(&mut keys.data)?;
        random_bytes(&mut keys.id)?;
        random_bytes(&mut keys.mac)?;
        Ok(keys)
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; MASTER_KEYS_LEN]> {
        let mut out = Zeroizing::new([0u8; MASTER_KEYS_LEN]);
        out[..KEY_LEN].copy_from_slice(&self.data);
        out[KEY_LEN..2 * KEY_LEN].copy_from_slice(&self.id);
        out[2 * KEY_LEN..].copy_from_slice(&self.mac);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<MasterKeys> {
        if bytes.len() != MASTER_KEYS_LEN {
            return None;
        }
        let mut keys = MasterKeys {
            data: [0; KEY_LEN],
            id: [0; KEY_LEN],
            mac: [0; KEY_LEN],
        };
        keys.data.copy_from_slice(&bytes[..KEY_LEN]);
        keys.id.copy_from_slice(&bytes[KEY_LEN..2 * KEY_LEN]);
        keys.mac.copy_from_slice(&bytes[2 * KEY_LEN..]);
        Some(keys)
    }
}

/// Fill `out` from the operating system's random source.
pub(crate) fn random_bytes(out: &mut [u8]) -> std::io::Result<()> {
    use rand::TryRngCore;
    rand::rngs::OsRng
        .try_fill_bytes(out)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A seal that did not open: altered bytes, other associated data (a blob
/// moved to another id, an edited header) or another key. Which one
/// cannot be told, by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("authentication failed")
    }
}

impl std::error::Error for OpenError {}

/// Seal `plaintext` under `key`: nonce || ciphertext || tag.
pub(crate) fn seal_with(cipher: &XChaCha20Poly1305, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    // The thread rng is a CSPRNG seeded from the OS; a nonce needs only
    // uniqueness, which 192 random bits give.
    rand::fill(&mut nonce);
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), ad, &mut out[NONCE_LEN..])
        .expect("a blob is far below the cipher's length limit");
    out.extend_from_slice(&tag);
    out
}

/// Open what [`seal_with`] made. The plaintext is returned in a fresh
/// buffer.
pub(crate) fn open_with(
    cipher: &XChaCha20Poly1305,
    ad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(OpenError);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut out = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            ad,
            &mut out,
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError)?;
    Ok(out)
}

/// A cipher for a 32-byte key (the key is zeroized when it is dropped).
pub(crate) fn cipher(key: &[u8; KEY_LEN]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(key))
}

/// What an encrypted datastore seals and hashes with.
pub struct Crypto {
    keys: MasterKeys,
    data: XChaCha20Poly1305,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Crypto(<redacted>)")
    }
}

/// Context of the key check, a one-way value that tells whether two sets
/// of master keys are the same without revealing them.
const KEY_CHECK_CONTEXT: &[u8] = b"standby datastore key check v1";
/// Prefix of a manifest's associated data (its object path follows).
const MANIFEST_AD: &[u8] = b"standby manifest v1\0";

impl Crypto {
    pub(crate) fn new(keys: MasterKeys) -> Crypto {
        let data = cipher(&keys.data);
        Crypto { keys, data }
    }

    /// Id of a chunk: [`ChunkId::ZERO`] for an all-zero chunk, else BLAKE3
    /// keyed with the id key.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        if chunk::is_zero(data) {
            ChunkId::ZERO
        } else {
            self.hash(data)
        }
    }

    /// BLAKE3 keyed with the id key, without the zero check.
    pub fn hash(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.keys.id, data).as_bytes())
    }

    /// The MAC key of pack index files.
    pub(crate) fn index_key(&self) -> &[u8; KEY_LEN] {
        &self.keys.mac
    }

    #[cfg(test)]
    pub(crate) fn keys(&self) -> &MasterKeys {
        &self.keys
    }

    /// Hex of 16 bytes of BLAKE3 keyed with the MAC key over a constant:
    /// the same for the same master keys, and reveals nothing about them.
    pub fn key_check(&self) -> String {
        let mac = blake3::keyed_hash(&self.keys.mac, KEY_CHECK_CONTEXT);
        hex::encode(&mac.as_bytes()[..16])
    }

    /// True when `other` has the same master keys.
    pub fn same_keys(&self, other: &Crypto) -> bool {
        // Compared through the one-way check, so no early-exit comparison
        // of the secrets themselves.
        self.key_check() == other.key_check()
    }

    /// Seal with the data key: nonce || ciphertext || tag.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.data, ad, plaintext)
    }

    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        open_with(&self.data, ad, sealed)
    }

    /// Associated data of the manifest at object path `path`.
    pub(crate) fn manifest_ad(path: &str) -> Vec<u8> {
        let mut ad = MANIFEST_AD.to_vec();
        ad.extend_from_slice(path.as_bytes());
        ad
    }
}

/// A manifest in an encrypted datastore: its JSON (as in an unencrypted
/// one) sealed with the data key, the object path as associated data.
#[derive(Serialize, Deserialize)]
struct SealedManifest {
    format: u32,
    encryption: String,
    /// Hex of nonce | ciphertext | tag.
    sealed: String,
}

const SEALED_MANIFEST_FORMAT: u32 = 1;

/// What the datastore does differently when it is encrypted.
impl Datastore {
    /// True when the datastore encrypts its chunks and manifests.
    pub fn is_encrypted(&self) -> bool {
        self.inner.crypto.is_some()
    }

    pub(crate) fn crypto(&self) -> Option<&Crypto> {
        self.inner.crypto.as_ref()
    }

    /// True when a stored blob of this datastore is valid in `other` as it
    /// is: both unencrypted, or both with the same master keys.
    pub(crate) fn same_scheme(&self, other: &Datastore) -> bool {
        match (self.crypto(), other.crypto()) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_keys(b),
            _ => false,
        }
    }

    /// Id of a data chunk in this datastore's scheme.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match self.crypto() {
            Some(c) => c.chunk_id(data),
            None => ChunkId::of(data),
        }
    }

    /// Hash of an index chunk's payload in this datastore's scheme.
    pub(crate) fn index_chunk_id(&self, payload: &[u8]) -> ChunkId {
        match self.crypto() {
            Some(c) => c.hash(payload),
            None => ChunkId::hash(payload),
        }
    }

    /// Encode chunk `id`'s plaintext as a blob of this datastore.
    pub(crate) fn encode_blob(&self, kind: BlobKind, id: &ChunkId, data: &[u8]) -> Vec<u8> {
        blob::encode_with(kind, data, self.options().zstd_level, id, self.crypto())
    }

    /// Check and decode a stored blob of chunk `id`.
    pub(crate) fn decode_blob(
        &self,
        stored: &[u8],
        kind: BlobKind,
        id: &ChunkId,
    ) -> Result<Vec<u8>, BlobError> {
        blob::decode_with(stored, kind, id, self.crypto())
    }

    pub(crate) fn decode_blob_into(
        &self,
        stored: &[u8],
        kind: BlobKind,
        id: &ChunkId,
        out: &mut [u8],
    ) -> Result<(), BlobError> {
        blob::decode_into_with(stored, kind, id, self.crypto(), out)
    }

    /// Parse a pack index file, its trailer checked in this scheme.
    pub(crate) fn decode_index(&self, bytes: &[u8]) -> Result<PackIndex, String> {
        pack::decode_index_keyed(bytes, self.crypto().map(Crypto::index_key))
    }

    /// The bytes of `m`'s manifest object: sealed in an encrypted store.
    pub(crate) fn encode_manifest(&self, m: &Manifest) -> Result<Vec<u8>, StoreError> {
        let json = m.to_bytes()?;
        let Some(crypto) = self.crypto() else {
            return Ok(json);
        };
        let path = m.id.manifest_path();
        let envelope = SealedManifest {
            format: SEALED_MANIFEST_FORMAT,
            encryption: CIPHER_NAME.into(),
            sealed: hex::encode(crypto.seal(&Crypto::manifest_ad(&path), &json)),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&envelope).map_err(|source| StoreError::Json {
                what: format!("manifest of point {}", m.id),
                source,
            })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse and check the manifest object at `path`.
    pub(crate) fn decode_manifest(&self, path: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let envelope = || serde_json::from_slice::<SealedManifest>(bytes).ok();
        let Some(crypto) = self.crypto() else {
            return Manifest::from_bytes(bytes).map_err(|e| match envelope() {
                Some(_) => "manifest is encrypted, the datastore is not".into(),
                None => e,
            });
        };
        let Some(envelope) = envelope() else {
            return Err("not a sealed manifest: unencrypted or damaged".into());
        };
        if envelope.format != SEALED_MANIFEST_FORMAT || envelope.encryption != CIPHER_NAME {
            return Err(format!(
                "unsupported sealed manifest format {} ({})",
                envelope.format, envelope.encryption
            ));
        }
        let sealed = hex::decode(&envelope.sealed).map_err(|_| "sealed part is not hex")?;
        let json = crypto
            .open(&Crypto::manifest_ad(path), &sealed)
            .map_err(|_| {
                "authentication failed: altered, moved from another point or sealed with another key"
                    .to_string()
            })?;
        Manifest::from_bytes(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        Crypto::new(MasterKeys::random().unwrap())
    }

    #[test]
    fn seal_open_and_every_kind_of_tamper() {
        let c = crypto();
        let sealed = c.seal(b"ad", b"secret plaintext");
        assert_eq!(sealed.len(), 16 + SEAL_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open(b"ad", &sealed).unwrap(), b"secret plaintext");
        assert_eq!(c.open(b"other ad", &sealed), Err(OpenError));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(c.open(b"ad", &bad), Err(OpenError), "flip at {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(c.open(b"ad", &sealed[..len]), Err(OpenError));
        }
        assert_eq!(crypto().open(b"ad", &sealed), Err(OpenError));
        // A fresh nonce each time.
        assert_ne!(c.seal(b"ad", b"x"), c.seal(b"ad", b"x"));
    }

    #[test]
    fn keyed_ids_differ_from_plain_and_between_stores() {
        let (a, b) = (crypto(), crypto());
        let data = b"some chunk".repeat(100);
        assert_ne!(a.chunk_id(&data), ChunkId::hash(&data));
        assert_ne!(a.chunk_id(&data), b.chunk_id(&data));
        assert_eq!(a.chunk_id(&data), a.chunk_id(&data));
        assert_eq!(a.chunk_id(&[0; 4096]), ChunkId::ZERO);
        assert!(a.same_keys(&a) && !a.same_keys(&b));
        let again = Crypto::new(MasterKeys::from_bytes(&*a.keys().to_bytes()).unwrap());
        assert!(again.same_keys(&a));
        assert_eq!(again.chunk_id(&data), a.chunk_id(&data));
    }

    #[test]
    fn debug_output_has_no_secret() {
        let c = crypto();
        let bytes = c.keys().to_bytes();
        for text in [format!("{c:?}"), format!("{:?}", c.keys())] {
            assert!(text.contains("redacted"), "{text}");
            for key in bytes.chunks(KEY_LEN) {
                assert!(!text.contains(&hex::encode(key)));
                assert!(!text.contains(&format!("{:?}", &key[..4])));
            }
        }
    }
}
