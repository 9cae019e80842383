//! Per-disk indexes: the chunk ids of a disk in order, cut into index
//! chunks stored as blobs of kind [`BlobKind::Index`].
//!
//! An index chunk's payload is its ids back to back (32 bytes each). A
//! payload of only zero ids is itself all zeros, so like a data chunk it
//! gets the zero id and is not stored: an empty region of a disk costs no
//! index either.
//!
//! [`BlobKind::Index`]: crate::blob::BlobKind::Index

use crate::chunk::ChunkId;

/// Ids per index chunk: 2048 ids = 64 KiB of payload.
pub const IDS_PER_INDEX_CHUNK: usize = 2048;

/// One index chunk: its id, and its payload unless it is all zero.
pub struct IndexChunk {
    pub id: ChunkId,
    pub payload: Option<Vec<u8>>,
}

/// Cut a disk's ids into index chunks.
pub fn split(ids: &[ChunkId], per: usize) -> Vec<IndexChunk> {
    split_with(ids, per, ChunkId::hash)
}

/// [`split`], an index chunk's id being `hash` of its payload (keyed
/// BLAKE3 in an encrypted datastore).
pub fn split_with(ids: &[ChunkId], per: usize, hash: impl Fn(&[u8]) -> ChunkId) -> Vec<IndexChunk> {
    ids.chunks(per)
        .map(|group| {
            if group.iter().all(ChunkId::is_zero) {
                return IndexChunk {
                    id: ChunkId::ZERO,
                    payload: None,
                };
            }
            let payload: Vec<u8> = group.iter().flat_map(|id| id.0).collect();
            IndexChunk {
                id: hash(&payload),
                payload: Some(payload),
            }
        })
        .collect()
}

/// Ids of an index chunk holding `count` ids.
pub fn decode(payload: &[u8], count: usize) -> Result<Vec<ChunkId>, String> {
    if payload.len() != count * 32 {
        return Err(format!(
            "index chunk holds {} bytes, expected {count} ids",
            payload.len()
        ));
    }
    Ok(payload
        .chunks_exact(32)
        .map(|raw| ChunkId(raw.try_into().expect("32 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_decode() {
        let mut ids = vec![ChunkId::ZERO; 5000];
        ids[4999] = ChunkId::hash(b"last");
        let chunks = split(&ids, IDS_PER_INDEX_CHUNK);
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].id.is_zero() && chunks[0].payload.is_none());
        assert!(chunks[1].id.is_zero());
        let payload = chunks[2].payload.as_ref().unwrap();
        assert_eq!(chunks[2].id, ChunkId::hash(payload));
        let back = decode(payload, 5000 - 2 * IDS_PER_INDEX_CHUNK).unwrap();
        assert_eq!(back, ids[2 * IDS_PER_INDEX_CHUNK..]);
        assert!(decode(payload, 3).is_err());
    }
}
