//! Chunk blobs: a fixed header followed by the stored payload.
//!
//! ```text
//! offset size field
//!      0    4 magic "SBCK"
//!      4    1 format version (1)
//!      5    1 compression: 0 none, 1 zstd
//!      6    1 encryption: 0 none, 1 XChaCha20-Poly1305 (others reserved)
//!      7    1 kind: 0 data chunk, 1 index chunk
//!      8    4 raw (plaintext) length, u32 little endian
//!     12    4 stored payload length, u32 little endian
//!     16    4 CRC32 of the stored payload, u32 little endian
//!     20    . payload
//! ```
//!
//! The stored length makes a pack readable blob by blob without its index.
//!
//! In an encrypted datastore (encryption 1) the payload is compressed
//! first, then sealed with the data key ([`crate::crypto`], the AEAD of
//! `seal.rs`):
//!
//! ```text
//! payload = nonce (24 random bytes) | ciphertext | Poly1305 tag (16)
//! associated data = header bytes 0..16 (magic to stored length) | chunk id (32)
//! ```
//!
//! so compression, kind and lengths cannot be edited, and a blob cannot be
//! passed off as another chunk's. Raw length is the plaintext length,
//! stored length the sealed payload's; the CRC covers the sealed payload
//! and still catches plain corruption cheaply, before the AEAD runs.

use std::cell::RefCell;

use crate::chunk::ChunkId;
use crate::crypto::Crypto;
use crate::seal::{self, SEAL_OVERHEAD};

pub const BLOB_MAGIC: [u8; 4] = *b"SBCK";
pub const BLOB_VERSION: u8 = 1;
/// Largest plaintext a blob may hold (the largest chunk size).
pub const MAX_RAW_LEN: usize = 4 << 20;
/// zstd level used for new blobs.
pub const DEFAULT_LEVEL: i32 = 1;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Index = 1,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Index),
            _ => None,
        }
    }
}

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
const ENCRYPTION_NONE: u8 = 0;
const ENCRYPTION_XCHACHA20POLY1305: u8 = 1;

/// The on-disk header. Integers are little-endian byte arrays so the struct
/// has no padding and its size is the on-disk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlobHeader {
    magic: [u8; 4],
    version: u8,
    compression: u8,
    encryption: u8,
    kind: u8,
    raw_len: [u8; 4],
    stored_len: [u8; 4],
    crc: [u8; 4],
}

pub const BLOB_HEADER_SIZE: usize = 20;
const _: () = assert!(std::mem::size_of::<BlobHeader>() == BLOB_HEADER_SIZE);

/// Why a blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("truncated blob ({0} bytes)")]
    Truncated(usize),
    #[error("bad blob header magic")]
    BadMagic,
    #[error("unsupported blob format version {0}")]
    BadVersion(u8),
    #[error("unknown compression {0}")]
    UnknownCompression(u8),
    #[error("unsupported encryption {0}")]
    Encrypted(u8),
    #[error("unknown blob kind {0}")]
    UnknownKind(u8),
    #[error("blob length {0} out of range")]
    BadLength(u32),
    #[error("blob length {found} differs from pack index ({expected})")]
    LengthMismatch { expected: usize, found: usize },
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed length {found} differs from header ({expected})")]
    RawLengthMismatch { expected: usize, found: usize },
    #[error("blob kind {found:?} where {expected:?} was expected")]
    KindMismatch { expected: BlobKind, found: BlobKind },
    #[error("content hash mismatch")]
    HashMismatch,
    #[error("blob is encrypted and the datastore has no key")]
    NeedsKey,
    #[error("unencrypted blob in an encrypted datastore")]
    NotSealed,
    #[error(
        "authentication failed: the blob was altered, moved from another chunk id or sealed with another key"
    )]
    Authentication,
}

impl BlobHeader {
    pub fn parse(bytes: &[u8]) -> Result<BlobHeader, BlobError> {
        let Some(b) = bytes.get(..BLOB_HEADER_SIZE) else {
            return Err(BlobError::Truncated(bytes.len()));
        };
        let four = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let header = BlobHeader {
            magic: four(0),
            version: b[4],
            compression: b[5],
            encryption: b[6],
            kind: b[7],
            raw_len: four(8),
            stored_len: four(12),
            crc: four(16),
        };
        if header.magic != BLOB_MAGIC {
            return Err(BlobError::BadMagic);
        }
        if header.version != BLOB_VERSION {
            return Err(BlobError::BadVersion(header.version));
        }
        if header.compression > COMPRESSION_ZSTD {
            return Err(BlobError::UnknownCompression(header.compression));
        }
        if header.encryption > ENCRYPTION_XCHACHA20POLY1305 {
            return Err(BlobError::Encrypted(header.encryption));
        }
        if BlobKind::from_u8(header.kind).is_none() {
            return Err(BlobError::UnknownKind(header.kind));
        }
        let raw = u32::from_le_bytes(header.raw_len);
        if raw as usize > MAX_RAW_LEN {
            return Err(BlobError::BadLength(raw));
        }
        let stored = u32::from_le_bytes(header.stored_len);
        if stored as usize > MAX_RAW_LEN + 1024 + SEAL_OVERHEAD {
            return Err(BlobError::BadLength(stored));
        }
        Ok(header)
    }

    fn to_bytes(self) -> [u8; BLOB_HEADER_SIZE] {
        let mut out = [0u8; BLOB_HEADER_SIZE];
        out[0..4].copy_from_slice(&self.magic);
        out[4] = self.version;
        out[5] = self.compression;
        out[6] = self.encryption;
        out[7] = self.kind;
        out[8..12].copy_from_slice(&self.raw_len);
        out[12..16].copy_from_slice(&self.stored_len);
        out[16..20].copy_from_slice(&self.crc);
        out
    }

    pub fn kind(&self) -> BlobKind {
        BlobKind::from_u8(self.kind).unwrap_or(BlobKind::Data)
    }

    /// True when the payload is sealed (encryption 1).
    pub fn is_sealed(&self) -> bool {
        self.encryption == ENCRYPTION_XCHACHA20POLY1305
    }

    pub fn raw_len(&self) -> usize {
        u32::from_le_bytes(self.raw_len) as usize
    }

    /// Size of the whole blob, header included.
    pub fn blob_len(&self) -> usize {
        BLOB_HEADER_SIZE + u32::from_le_bytes(self.stored_len) as usize
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(level).ok();
        }
        let c = c.as_mut()?;
        c.set_compression_level(level).ok()?;
        // Output no larger than the input: if it does not fit, store raw.
        let mut out = Vec::with_capacity(data.len());
        c.compress_to_buffer(data, &mut out).ok()?;
        Some(out)
    })
}

fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, BlobError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| BlobError::Decompress(e.to_string()))?,
            );
        }
        let d = d.as_mut().expect("decompressor set above");
        let mut out = Vec::with_capacity(raw_len);
        d.decompress_to_buffer(data, &mut out)
            .map_err(|e| BlobError::Decompress(e.to_string()))?;
        Ok(out)
    })
}

fn decompress_into(data: &[u8], out: &mut [u8]) -> Result<usize, BlobError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| BlobError::Decompress(e.to_string()))?,
            );
        }
        let d = d.as_mut().expect("decompressor set above");
        d.decompress_to_buffer(data, out)
            .map_err(|e| BlobError::Decompress(e.to_string()))
    })
}

/// Encode `data` as a blob, compressed when that makes it smaller.
pub fn encode(kind: BlobKind, data: &[u8], level: i32) -> Vec<u8> {
    debug_assert!(data.len() <= MAX_RAW_LEN);
    let compressed = compress(data, level).filter(|c| c.len() < data.len());
    let (compression, payload) = match &compressed {
        Some(c) => (COMPRESSION_ZSTD, c.as_slice()),
        None => (COMPRESSION_NONE, data),
    };
    let header = BlobHeader {
        magic: BLOB_MAGIC,
        version: BLOB_VERSION,
        compression,
        encryption: ENCRYPTION_NONE,
        kind: kind as u8,
        raw_len: (data.len() as u32).to_le_bytes(),
        stored_len: (payload.len() as u32).to_le_bytes(),
        crc: crc32fast::hash(payload).to_le_bytes(),
    };
    let mut out = Vec::with_capacity(BLOB_HEADER_SIZE + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check a whole blob's header and CRC without decompressing.
pub fn check(blob: &[u8]) -> Result<BlobHeader, BlobError> {
    let header = BlobHeader::parse(blob)?;
    if blob.len() != header.blob_len() {
        return Err(BlobError::LengthMismatch {
            expected: blob.len(),
            found: header.blob_len(),
        });
    }
    let payload = &blob[BLOB_HEADER_SIZE..];
    if crc32fast::hash(payload) != u32::from_le_bytes(header.crc) {
        return Err(BlobError::ChecksumMismatch);
    }
    Ok(header)
}

/// Decode a whole blob: check header and CRC, decompress, and when `id` is
/// given check the plaintext hashes to it.
pub fn decode(blob: &[u8], kind: BlobKind, id: Option<&ChunkId>) -> Result<Vec<u8>, BlobError> {
    let header = check(blob)?;
    if header.is_sealed() {
        return Err(BlobError::NeedsKey);
    }
    if header.kind() != kind {
        return Err(BlobError::KindMismatch {
            expected: kind,
            found: header.kind(),
        });
    }
    let payload = &blob[BLOB_HEADER_SIZE..];
    let data = match header.compression {
        COMPRESSION_NONE => payload.to_vec(),
        _ => decompress(payload, header.raw_len())?,
    };
    if data.len() != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: header.raw_len(),
            found: data.len(),
        });
    }
    if id.is_some_and(|id| ChunkId::hash(&data) != *id) {
        return Err(BlobError::HashMismatch);
    }
    Ok(data)
}

/// Like [`decode`], but the plaintext goes into `out`, which must be
/// exactly as long as the blob's raw length (a blob of another length is
/// [`BlobError::RawLengthMismatch`]). On error `out` holds garbage.
pub fn decode_into(
    blob: &[u8],
    kind: BlobKind,
    id: Option<&ChunkId>,
    out: &mut [u8],
) -> Result<(), BlobError> {
    let header = check(blob)?;
    if header.is_sealed() {
        return Err(BlobError::NeedsKey);
    }
    if header.kind() != kind {
        return Err(BlobError::KindMismatch {
            expected: kind,
            found: header.kind(),
        });
    }
    if out.len() != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: out.len(),
            found: header.raw_len(),
        });
    }
    let payload = &blob[BLOB_HEADER_SIZE..];
    let n = match header.compression {
        COMPRESSION_NONE if payload.len() == out.len() => {
            out.copy_from_slice(payload);
            out.len()
        }
        COMPRESSION_NONE => payload.len(),
        _ => decompress_into(payload, out)?,
    };
    if n != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: header.raw_len(),
            found: n,
        });
    }
    if id.is_some_and(|id| ChunkId::hash(out) != *id) {
        return Err(BlobError::HashMismatch);
    }
    Ok(())
}

/// Associated data of a sealed blob: its header up to the CRC, and the id.
fn sealed_ad(header: &[u8; BLOB_HEADER_SIZE], id: &ChunkId) -> [u8; 16 + 32] {
    let mut ad = [0u8; 16 + 32];
    ad[..16].copy_from_slice(&header[..16]);
    ad[16..].copy_from_slice(&id.0);
    ad
}

/// Encode `data`, the plaintext of chunk `id`, for a datastore that
/// encrypts with `crypto`, or exactly as [`encode`] does without.
pub fn encode_with(
    kind: BlobKind,
    data: &[u8],
    level: i32,
    id: &ChunkId,
    crypto: Option<&Crypto>,
) -> Vec<u8> {
    let Some(crypto) = crypto else {
        return encode(kind, data, level);
    };
    debug_assert!(data.len() <= MAX_RAW_LEN);
    let compressed = compress(data, level).filter(|c| c.len() < data.len());
    let (compression, payload) = match &compressed {
        Some(c) => (COMPRESSION_ZSTD, c.as_slice()),
        None => (COMPRESSION_NONE, data),
    };
    let mut header = BlobHeader {
        magic: BLOB_MAGIC,
        version: BLOB_VERSION,
        compression,
        encryption: ENCRYPTION_XCHACHA20POLY1305,
        kind: kind as u8,
        raw_len: (data.len() as u32).to_le_bytes(),
        stored_len: ((payload.len() + SEAL_OVERHEAD) as u32).to_le_bytes(),
        crc: [0; 4],
    };
    let sealed = seal::seal_with(
        crypto.data_cipher(),
        &sealed_ad(&header.to_bytes(), id),
        payload,
    );
    header.crc = crc32fast::hash(&sealed).to_le_bytes();
    let mut out = Vec::with_capacity(BLOB_HEADER_SIZE + sealed.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// Check header and CRC, and open the payload of a sealed blob: the
/// (maybe compressed) plaintext payload.
fn open_sealed(
    blob: &[u8],
    kind: BlobKind,
    id: &ChunkId,
    crypto: &Crypto,
) -> Result<(BlobHeader, Vec<u8>), BlobError> {
    let header = check(blob)?;
    if !header.is_sealed() {
        return Err(BlobError::NotSealed);
    }
    let payload = seal::open_with(
        crypto.data_cipher(),
        &sealed_ad(&header.to_bytes(), id),
        &blob[BLOB_HEADER_SIZE..],
    )
    .map_err(|_| BlobError::Authentication)?;
    // Authenticated: the kind is what the writer said it was.
    if header.kind() != kind {
        return Err(BlobError::KindMismatch {
            expected: kind,
            found: header.kind(),
        });
    }
    Ok((header, payload))
}

/// [`decode`] for a datastore that encrypts with `crypto`: the blob must
/// be sealed for chunk `id`, and its plaintext must hash to `id` under the
/// store's id key.
pub fn decode_with(
    blob: &[u8],
    kind: BlobKind,
    id: &ChunkId,
    crypto: Option<&Crypto>,
) -> Result<Vec<u8>, BlobError> {
    let Some(crypto) = crypto else {
        return decode(blob, kind, Some(id));
    };
    let (header, payload) = open_sealed(blob, kind, id, crypto)?;
    let data = match header.compression {
        COMPRESSION_NONE => payload,
        _ => decompress(&payload, header.raw_len())?,
    };
    if data.len() != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: header.raw_len(),
            found: data.len(),
        });
    }
    if crypto.hash(&data) != *id {
        return Err(BlobError::HashMismatch);
    }
    Ok(data)
}

/// [`decode_into`] for a datastore that encrypts with `crypto`.
pub fn decode_into_with(
    blob: &[u8],
    kind: BlobKind,
    id: &ChunkId,
    crypto: Option<&Crypto>,
    out: &mut [u8],
) -> Result<(), BlobError> {
    let Some(crypto) = crypto else {
        return decode_into(blob, kind, Some(id), out);
    };
    let (header, payload) = open_sealed(blob, kind, id, crypto)?;
    if out.len() != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: out.len(),
            found: header.raw_len(),
        });
    }
    let n = match header.compression {
        COMPRESSION_NONE if payload.len() == out.len() => {
            out.copy_from_slice(&payload);
            out.len()
        }
        COMPRESSION_NONE => payload.len(),
        _ => decompress_into(&payload, out)?,
    };
    if n != header.raw_len() {
        return Err(BlobError::RawLengthMismatch {
            expected: header.raw_len(),
            found: n,
        });
    }
    if crypto.hash(out) != *id {
        return Err(BlobError::HashMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressed_and_raw() {
        let text = b"standby ".repeat(8192);
        let blob = encode(BlobKind::Data, &text, DEFAULT_LEVEL);
        assert!(blob.len() < text.len() / 4);
        assert_eq!(blob[5], COMPRESSION_ZSTD);
        let id = ChunkId::hash(&text);
        assert_eq!(decode(&blob, BlobKind::Data, Some(&id)).unwrap(), text);

        let random: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
        let blob = encode(BlobKind::Index, &random, DEFAULT_LEVEL);
        assert_eq!(blob[5], COMPRESSION_NONE);
        assert_eq!(blob.len(), BLOB_HEADER_SIZE + random.len());
        assert_eq!(decode(&blob, BlobKind::Index, None).unwrap(), random);
        assert_eq!(
            decode(&blob, BlobKind::Data, None).unwrap_err(),
            BlobError::KindMismatch {
                expected: BlobKind::Data,
                found: BlobKind::Index
            }
        );
    }

    #[test]
    fn decode_into_matches_decode() {
        let text = b"standby ".repeat(8192);
        let random: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
        for data in [text, random] {
            let id = ChunkId::hash(&data);
            let blob = encode(BlobKind::Data, &data, DEFAULT_LEVEL);
            let mut out = vec![0u8; data.len()];
            decode_into(&blob, BlobKind::Data, Some(&id), &mut out).unwrap();
            assert_eq!(out, data);
            let mut short = vec![0u8; data.len() - 1];
            assert!(decode_into(&blob, BlobKind::Data, Some(&id), &mut short).is_err());
            let mut bad = blob.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(decode_into(&bad, BlobKind::Data, Some(&id), &mut out).is_err());
            assert_eq!(
                decode_into(&blob, BlobKind::Data, Some(&ChunkId::hash(b"x")), &mut out),
                Err(BlobError::HashMismatch)
            );
        }
    }

    #[test]
    fn corruption_is_an_error_not_a_panic() {
        let text = b"0123456789".repeat(1000);
        let id = ChunkId::hash(&text);
        let blob = encode(BlobKind::Data, &text, DEFAULT_LEVEL);
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, BlobKind::Data, None), Err(BlobError::BadMagic));
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(&bad, BlobKind::Data, Some(&id)).is_err(),
                "flip at {i}"
            );
        }
        for len in 0..blob.len() {
            assert!(decode(&blob[..len], BlobKind::Data, Some(&id)).is_err());
        }
        assert_eq!(
            decode(&blob, BlobKind::Data, Some(&ChunkId::hash(b"other"))),
            Err(BlobError::HashMismatch)
        );
    }

    mod sealed {
        use super::*;
        use crate::crypto::MasterKeys;

        fn crypto() -> Crypto {
            Crypto::new(MasterKeys::random().unwrap())
        }

        #[test]
        fn round_trip_and_no_plaintext() {
            let c = crypto();
            let text = b"standby secret ".repeat(4000);
            let random: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
            for data in [&text, &random] {
                let id = c.chunk_id(data);
                let blob = encode_with(BlobKind::Data, data, DEFAULT_LEVEL, &id, Some(&c));
                assert_eq!(blob[6], ENCRYPTION_XCHACHA20POLY1305);
                assert!(BlobHeader::parse(&blob).unwrap().is_sealed());
                assert!(!blob.windows(14).any(|w| w == b"standby secret"));
                assert_eq!(
                    decode_with(&blob, BlobKind::Data, &id, Some(&c)).unwrap(),
                    *data
                );
                let mut out = vec![0u8; data.len()];
                decode_into_with(&blob, BlobKind::Data, &id, Some(&c), &mut out).unwrap();
                assert_eq!(out, *data);
                // Without the key, or with another, it never opens.
                assert_eq!(
                    decode(&blob, BlobKind::Data, Some(&id)),
                    Err(BlobError::NeedsKey)
                );
                assert_eq!(
                    decode_with(&blob, BlobKind::Data, &id, Some(&crypto())),
                    Err(BlobError::Authentication)
                );
            }
            assert_eq!(
                encode_with(BlobKind::Data, &text, 1, &ChunkId::hash(&text), None),
                encode(BlobKind::Data, &text, 1),
                "the unencrypted path is unchanged"
            );
        }

        #[test]
        fn moved_edited_or_flipped_blobs_never_open() {
            let c = crypto();
            let a = b"chunk a ".repeat(1000);
            let b = b"chunk b ".repeat(1000);
            let (ida, idb) = (c.chunk_id(&a), c.chunk_id(&b));
            let blob = encode_with(BlobKind::Data, &a, DEFAULT_LEVEL, &ida, Some(&c));
            // Listed under another id: the associated data differs.
            assert_eq!(
                decode_with(&blob, BlobKind::Data, &idb, Some(&c)),
                Err(BlobError::Authentication)
            );
            // Kind edited (the CRC covers the payload only): the header is bound.
            let mut edited = blob.clone();
            edited[7] = BlobKind::Index as u8;
            assert_eq!(
                decode_with(&edited, BlobKind::Index, &ida, Some(&c)),
                Err(BlobError::Authentication)
            );
            for i in 0..blob.len() {
                let mut bad = blob.clone();
                bad[i] ^= 0x10;
                assert!(
                    decode_with(&bad, BlobKind::Data, &ida, Some(&c)).is_err(),
                    "flip at {i}"
                );
                let mut out = vec![0u8; a.len()];
                assert!(decode_into_with(&bad, BlobKind::Data, &ida, Some(&c), &mut out).is_err());
            }
            // A plain blob has no place in an encrypted store.
            let plain = encode(BlobKind::Data, &a, DEFAULT_LEVEL);
            assert_eq!(
                decode_with(&plain, BlobKind::Data, &ida, Some(&c)),
                Err(BlobError::NotSealed)
            );
        }
    }
}
