//! Chunk ids and the cheap checks made on every chunk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// BLAKE3 of a chunk's plaintext. The all-zero id is reserved for chunks
/// made only of zero bytes, which are never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The reserved id of an all-zero chunk.
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    /// Id of `data`: [`ChunkId::ZERO`] when every byte is zero, else its hash.
    pub fn of(data: &[u8]) -> ChunkId {
        if is_zero(data) {
            ChunkId::ZERO
        } else {
            ChunkId::hash(data)
        }
    }

    /// BLAKE3 of `data`, without the zero check.
    pub fn hash(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// First bytes in hex, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

/// True when every byte of `data` is zero. Works on 64-byte blocks so the
/// compiler can vectorise it; stops at the first non-zero block.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id)?;
        Ok(ChunkId(id))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 65536]));
        assert!(is_zero(&[]));
        let mut d = vec![0u8; 65536 + 3];
        assert!(is_zero(&d));
        d[65536 + 2] = 1;
        assert!(!is_zero(&d));
        d[65538] = 0;
        d[7] = 0x80;
        assert!(!is_zero(&d));
        assert_eq!(ChunkId::of(&[0; 100]), ChunkId::ZERO);
        assert_ne!(ChunkId::of(&[1; 100]), ChunkId::ZERO);
    }

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::hash(b"abc");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        assert!("xyz".parse::<ChunkId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
    }
}
