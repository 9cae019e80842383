//! Bounds of what a datastore holds: the chunk size, and every size a
//! manifest states, used by the writer (which never writes past them)
//! and by the manifest check (which refuses a manifest past them before
//! anything is allocated from its numbers: a forged manifest must not
//! make gc, verify or restore allocate without limit).

/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;

/// A power of two from 64 KiB to 4 MiB.
pub fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// Largest disk a point may hold: 64 TiB.
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Most chunks a disk may have: 2^26, so a disk's chunk ids take at most
/// 2 GiB of memory (4 TiB at 64 KiB chunks; a larger disk needs larger
/// chunks, up to [`MAX_DISK_SIZE`] at 1 MiB).
pub const MAX_DISK_CHUNKS: u64 = 1 << 26;
/// Most disks a point may have.
pub const MAX_DISKS: usize = 256;
