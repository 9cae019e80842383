//! Encryption of a datastore: the master keys and keyed hashing.
//!
//! An encrypted datastore has three random 256-bit master keys:
//!
//! - the **data key** seals blobs and manifests with XChaCha20-Poly1305
//!   (the AEAD is in `seal.rs`; blobs are sealed by `blob.rs`, manifests
//!   by `manifest.rs`);
//! - the **id key** keys BLAKE3 for chunk ids, so the storage provider
//!   cannot confirm a guess of a chunk's plaintext from its id;
//! - the **MAC key** keys BLAKE3 for the trailer of pack index files.
//!
//! The keys live in memory only, zeroized on drop, and are stored in the
//! datastore only wrapped (see `keys.rs`). Every sealed object binds
//! what it is to its associated data: a blob its header and chunk id, a
//! manifest its object path. See `docs/encryption.md` for the formats.

use std::fmt;

use chacha20poly1305::XChaCha20Poly1305;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::chunk::{self, ChunkId};
use crate::seal::cipher;
pub use crate::seal::{CIPHER_NAME, KEY_LEN, NONCE_LEN, OpenError, SEAL_OVERHEAD, TAG_LEN};

/// Value of the marker's `chunk_hash` field in an encrypted datastore.
pub const KEYED_HASH_NAME: &str = "blake3-keyed";

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

    /// The data key's cipher, for the seals of blobs and manifests (see
    /// `seal.rs`).
    pub(crate) fn data_cipher(&self) -> &XChaCha20Poly1305 {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        Crypto::new(MasterKeys::random().unwrap())
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
