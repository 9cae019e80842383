//! Pack files and their index files.
//!
//! ```text
//! <id>.pack: "SBPK" | version u32 LE | blob | blob | ...
//! <id>.idx : "SBIX" | version u32 LE | pack id (16 bytes) | count u32 LE
//!            | count x (chunk id 32 | offset u64 LE | blob length u32 LE | kind u8)
//!            | BLAKE3 of everything before (32 bytes)
//! ```
//!
//! In an encrypted datastore the trailer is BLAKE3 keyed with the store's
//! MAC key instead, so an index cannot be edited (or forged) without the
//! key; everything else is the same.
//!
//! A pack is built in memory and written whole, with one fsync; its index
//! is written after it, so an index never names a pack that is not durable.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::StoreError;
use crate::backend::Backend;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;

pub const PACK_MAGIC: [u8; 4] = *b"SBPK";
pub const IDX_MAGIC: [u8; 4] = *b"SBIX";
pub const PACK_VERSION: u32 = 1;
pub const IDX_VERSION: u32 = 1;
pub const PACK_HEADER_SIZE: usize = 8;
const IDX_HEADER_SIZE: usize = 4 + 4 + 16 + 4;
const IDX_ENTRY_SIZE: usize = 32 + 8 + 4 + 1;
const IDX_TRAILER_SIZE: usize = 32;
/// The longest stored blob a valid index can list (header, payload and
/// the slack zstd may add to incompressible data; see `blob`).
const MAX_BLOB_LEN: usize = crate::blob::BLOB_HEADER_SIZE + crate::blob::MAX_RAW_LEN + 1024;

/// Default pack size target and the allowed range.
pub const DEFAULT_PACK_SIZE: usize = 32 << 20;
pub const MIN_PACK_SIZE: usize = 16 << 20;
pub const MAX_PACK_SIZE: usize = 64 << 20;

/// Random name of a pack; writers never collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn random() -> PackId {
        PackId(rand::random())
    }

    pub fn pack_path(&self) -> String {
        let hex = self.to_string();
        format!("packs/{}/{hex}.pack", &hex[..2])
    }

    pub fn idx_path(&self) -> String {
        let hex = self.to_string();
        format!("packs/{}/{hex}.idx", &hex[..2])
    }

    /// The pack named by an object path such as `packs/ab/ab...cd.idx`.
    pub fn from_path(path: &str) -> Option<(PackId, &'static str)> {
        let name = path.rsplit('/').next()?;
        let (stem, ext) = name.rsplit_once('.')?;
        let ext = match ext {
            "pack" => "pack",
            "idx" => "idx",
            _ => return None,
        };
        Some((stem.parse().ok()?, ext))
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({self})")
    }
}

impl FromStr for PackId {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id)?;
        Ok(PackId(id))
    }
}

/// One blob of a pack, as listed in its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
    pub kind: BlobKind,
}

/// A parsed pack index.
#[derive(Debug, Clone)]
pub struct PackIndex {
    pub pack: PackId,
    pub entries: Vec<IdxEntry>,
    /// False when the trailing checksum did not match: the entries parsed
    /// but may be wrong (every blob read is still checked by its own CRC
    /// and hash).
    pub checksum_ok: bool,
}

pub fn pack_header() -> [u8; PACK_HEADER_SIZE] {
    let mut h = [0u8; PACK_HEADER_SIZE];
    h[..4].copy_from_slice(&PACK_MAGIC);
    h[4..].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h
}

/// Check the header of a pack file.
pub fn check_pack_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < PACK_HEADER_SIZE {
        return Err(format!("truncated pack header ({} bytes)", bytes.len()));
    }
    if bytes[..4] != PACK_MAGIC {
        return Err("bad pack header magic".into());
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != PACK_VERSION {
        return Err(format!("unsupported pack format version {version}"));
    }
    Ok(())
}

pub fn encode_index(pack: &PackId, entries: &[IdxEntry]) -> Vec<u8> {
    encode_index_keyed(pack, entries, None)
}

/// The trailer of an index body: BLAKE3, keyed with `key` when given.
fn trailer(body: &[u8], key: Option<&[u8; 32]>) -> blake3::Hash {
    match key {
        Some(key) => blake3::keyed_hash(key, body),
        None => blake3::hash(body),
    }
}

/// [`encode_index`], the trailer keyed with `key` (the MAC key of an
/// encrypted datastore) when given.
pub fn encode_index_keyed(pack: &PackId, entries: &[IdxEntry], key: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(IDX_HEADER_SIZE + entries.len() * IDX_ENTRY_SIZE + IDX_TRAILER_SIZE);
    out.extend_from_slice(&IDX_MAGIC);
    out.extend_from_slice(&IDX_VERSION.to_le_bytes());
    out.extend_from_slice(&pack.0);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.push(e.kind as u8);
    }
    let sum = trailer(&out, key);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Parse an index file. Structural damage is an error; a checksum mismatch
/// alone is reported through [`PackIndex::checksum_ok`].
pub fn decode_index(bytes: &[u8]) -> Result<PackIndex, String> {
    decode_index_keyed(bytes, None)
}

/// [`decode_index`], the trailer checked as a MAC under `key` when given.
pub fn decode_index_keyed(bytes: &[u8], key: Option<&[u8; 32]>) -> Result<PackIndex, String> {
    if bytes.len() < IDX_HEADER_SIZE + IDX_TRAILER_SIZE {
        return Err(format!("truncated index ({} bytes)", bytes.len()));
    }
    if bytes[..4] != IDX_MAGIC {
        return Err("bad index header magic".into());
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != IDX_VERSION {
        return Err(format!("unsupported index format version {version}"));
    }
    let pack = PackId(bytes[8..24].try_into().expect("16 bytes"));
    let count = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")) as usize;
    let body_len = bytes.len() - IDX_TRAILER_SIZE;
    if IDX_HEADER_SIZE + count.saturating_mul(IDX_ENTRY_SIZE) != body_len {
        return Err(format!(
            "index length {} does not match its {count} entries",
            bytes.len()
        ));
    }
    // blake3::Hash compares in constant time.
    let expected: [u8; 32] = bytes[body_len..].try_into().expect("32 bytes");
    let checksum_ok = trailer(&bytes[..body_len], key) == blake3::Hash::from(expected);
    let mut entries = Vec::with_capacity(count);
    for raw in bytes[IDX_HEADER_SIZE..body_len].chunks_exact(IDX_ENTRY_SIZE) {
        let kind =
            BlobKind::from_u8(raw[44]).ok_or_else(|| format!("unknown blob kind {}", raw[44]))?;
        let entry = IdxEntry {
            id: ChunkId(raw[..32].try_into().expect("32 bytes")),
            offset: u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes")),
            kind,
        };
        // A damaged entry must not make a reader allocate gigabytes.
        if entry.len as usize > MAX_BLOB_LEN {
            return Err(format!(
                "entry of chunk {} has impossible length {}",
                entry.id, entry.len
            ));
        }
        if entry.offset < PACK_HEADER_SIZE as u64 {
            return Err(format!(
                "entry of chunk {} has offset {} inside the pack header",
                entry.id, entry.offset
            ));
        }
        entries.push(entry);
    }
    Ok(PackIndex {
        pack,
        entries,
        checksum_ok,
    })
}

/// A pack being filled in memory.
#[derive(Debug)]
pub struct PackBuilder {
    id: PackId,
    buf: Vec<u8>,
    entries: Vec<IdxEntry>,
    ids: HashSet<ChunkId>,
    /// The pack starts at `buf[start]`, a page boundary (for direct I/O).
    start: usize,
}

/// Alignment of a pack's bytes in memory.
const PACK_ALIGN: usize = 4096;

impl PackBuilder {
    pub fn new(capacity: usize) -> PackBuilder {
        PackBuilder::with_buffer(capacity, Vec::new())
    }

    /// Like [`PackBuilder::new`], reusing `buf` (from
    /// [`PackBuilder::write_keep`]) when it is large enough: touching
    /// fresh memory for every pack costs page faults.
    pub fn with_buffer(capacity: usize, mut buf: Vec<u8>) -> PackBuilder {
        // Room for the alignment padding and one blob past the target, so
        // the buffer never moves (and stays aligned).
        let room = capacity + crate::blob::BLOB_HEADER_SIZE + crate::blob::MAX_RAW_LEN + PACK_ALIGN;
        buf.clear();
        if buf.capacity() < room {
            buf = Vec::with_capacity(room);
        }
        let start = buf.as_ptr().align_offset(PACK_ALIGN).min(PACK_ALIGN);
        buf.resize(start, 0);
        buf.extend_from_slice(&pack_header());
        PackBuilder {
            id: PackId::random(),
            buf,
            entries: Vec::new(),
            ids: HashSet::new(),
            start,
        }
    }

    /// The pack's bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    /// Append an encoded blob; a chunk already in this pack is skipped.
    pub fn add(&mut self, id: ChunkId, kind: BlobKind, blob: &[u8]) {
        if !self.ids.insert(id) {
            return;
        }
        self.entries.push(IdxEntry {
            id,
            offset: (self.buf.len() - self.start) as u64,
            len: blob.len() as u32,
            kind,
        });
        self.buf.extend_from_slice(blob);
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the pack, then its index. Both are durable when this returns.
    pub fn write(self, backend: &dyn Backend) -> Result<PackIndex, StoreError> {
        self.write_keep(backend).map(|(idx, _)| idx)
    }

    /// Like [`PackBuilder::write`], also giving back the buffer for
    /// [`PackBuilder::with_buffer`].
    pub fn write_keep(self, backend: &dyn Backend) -> Result<(PackIndex, Vec<u8>), StoreError> {
        self.write_keep_keyed(backend, None)
    }

    /// [`PackBuilder::write_keep`], the index trailer keyed with `key`.
    pub fn write_keep_keyed(
        self,
        backend: &dyn Backend,
        key: Option<&[u8; 32]>,
    ) -> Result<(PackIndex, Vec<u8>), StoreError> {
        backend.put(&self.id.pack_path(), self.bytes())?;
        let idx = encode_index_keyed(&self.id, &self.entries, key);
        backend.put(&self.id.idx_path(), &idx)?;
        let idx = PackIndex {
            pack: self.id,
            entries: self.entries,
            checksum_ok: true,
        };
        Ok((idx, self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (PackId, Vec<IdxEntry>) {
        let pack = PackId::random();
        let entries = (0..10u8)
            .map(|i| IdxEntry {
                id: ChunkId::hash(&[i]),
                offset: 8 + u64::from(i) * 100,
                len: 100,
                kind: if i % 2 == 0 {
                    BlobKind::Data
                } else {
                    BlobKind::Index
                },
            })
            .collect();
        (pack, entries)
    }

    #[test]
    fn index_round_trip_and_damage() {
        let (pack, entries) = sample();
        let bytes = encode_index(&pack, &entries);
        let idx = decode_index(&bytes).unwrap();
        assert!(idx.checksum_ok);
        assert_eq!(idx.pack, pack);
        assert_eq!(idx.entries, entries);

        let mut flipped = bytes.clone();
        flipped[IDX_HEADER_SIZE + 3] ^= 1;
        assert!(!decode_index(&flipped).unwrap().checksum_ok);
        assert!(decode_index(&bytes[..bytes.len() - 1]).is_err());
        let mut magic = bytes.clone();
        magic[0] = 0;
        assert!(decode_index(&magic).is_err());
        for len in 0..bytes.len() {
            let _ = decode_index(&bytes[..len]);
        }
    }

    #[test]
    fn index_entries_with_impossible_length_or_offset_are_damage() {
        let (pack, mut entries) = sample();
        entries[3].len = u32::MAX;
        let e = decode_index(&encode_index(&pack, &entries)).unwrap_err();
        assert!(e.contains("impossible length"), "{e}");
        let (pack, mut entries) = sample();
        entries[5].offset = 2;
        let e = decode_index(&encode_index(&pack, &entries)).unwrap_err();
        assert!(e.contains("pack header"), "{e}");
        let (pack, mut entries) = sample();
        entries[0].len = MAX_BLOB_LEN as u32;
        assert!(decode_index(&encode_index(&pack, &entries)).is_ok());
    }

    #[test]
    fn keyed_trailer_is_a_mac() {
        let (pack, entries) = sample();
        let key = [7u8; 32];
        let bytes = encode_index_keyed(&pack, &entries, Some(&key));
        assert!(decode_index_keyed(&bytes, Some(&key)).unwrap().checksum_ok);
        assert!(
            !decode_index_keyed(&bytes, Some(&[8u8; 32]))
                .unwrap()
                .checksum_ok
        );
        assert!(!decode_index(&bytes).unwrap().checksum_ok);
        assert!(
            !decode_index_keyed(&encode_index(&pack, &entries), Some(&key))
                .unwrap()
                .checksum_ok
        );
        let mut flipped = bytes.clone();
        flipped[IDX_HEADER_SIZE + 40] ^= 1;
        assert!(
            !decode_index_keyed(&flipped, Some(&key))
                .unwrap()
                .checksum_ok
        );
    }

    #[test]
    fn pack_paths() {
        let id = PackId::random();
        let (parsed, ext) = PackId::from_path(&id.idx_path()).unwrap();
        assert_eq!((parsed, ext), (id, "idx"));
        assert!(
            id.pack_path()
                .starts_with(&format!("packs/{}/", &id.to_string()[..2]))
        );
        assert!(PackId::from_path("packs/ab/nothex.pack").is_none());
        assert!(check_pack_header(&pack_header()).is_ok());
        assert!(check_pack_header(b"SBPX\x01\0\0\0").is_err());
    }
}
