//! The AEAD of an encrypted datastore: XChaCha20-Poly1305 with a random
//! 24-byte nonce per seal (so nonces never repeat in practice).
//!
//! A sealed value is `nonce (24) | ciphertext | tag (16)`. What a seal
//! binds as associated data is up to its user: a blob its header and
//! chunk id (`blob.rs`), a manifest its object path (`manifest.rs`), a
//! key object its id and KDF (`keys.rs`). The keys themselves are in
//! `crypto.rs`.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

/// Value of the marker's `encryption` field, and of a key object's cipher.
pub const CIPHER_NAME: &str = "xchacha20poly1305";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a seal adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const KEY_LEN: usize = 32;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_every_kind_of_tamper() {
        let c = cipher(&[7; KEY_LEN]);
        let sealed = seal_with(&c, b"ad", b"secret plaintext");
        assert_eq!(sealed.len(), 16 + SEAL_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(open_with(&c, b"ad", &sealed).unwrap(), b"secret plaintext");
        assert_eq!(open_with(&c, b"other ad", &sealed), Err(OpenError));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open_with(&c, b"ad", &bad), Err(OpenError), "flip at {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(open_with(&c, b"ad", &sealed[..len]), Err(OpenError));
        }
        let other = cipher(&[8; KEY_LEN]);
        assert_eq!(open_with(&other, b"ad", &sealed), Err(OpenError));
        // A fresh nonce each time.
        assert_ne!(seal_with(&c, b"ad", b"x"), seal_with(&c, b"ad", b"x"));
    }
}
