//! The append-only journal inside the disk image.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset 0      header block, HEADER_BLOCK bytes:
//!                 magic  [u8; 8] = b"SBYVNF\0\0"
//!                 version u32    = 1
//!                 data_offset u32 = 4096 (start of the first record)
//!                 crc32 u32      over the 16 bytes above
//!                 zeros up to 4096
//! offset 4096   records, packed back to back:
//!                 magic u32 = 0x5342_5231 ("SBR1" read as big-endian)
//!                 len   u32   payload length, at most MAX_PAYLOAD
//!                 seq   u64   1, 2, 3, ... without gaps
//!                 crc   u32   CRC32 of seq (8 bytes LE) followed by payload
//!                 payload [u8; len]
//! ```
//!
//! Replay reads records from `data_offset` until the first one that is not
//! valid: zeros, bad magic, oversize or truncated length, bad CRC, or a
//! sequence number that is not the previous one plus one (a stale record
//! left behind by an earlier, longer torn write). Everything from there on
//! is ignored and the next append overwrites it.
//!
//! An append is acknowledged only after `pwrite` + `fdatasync` both
//! succeeded; a failed append does not move the tail, so the next attempt
//! overwrites whatever was partially written.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::VnfError;

pub const HEADER_BLOCK: u64 = 4096;
pub const HEADER_MAGIC: [u8; 8] = *b"SBYVNF\0\0";
pub const FORMAT_VERSION: u32 = 1;
pub const RECORD_MAGIC: u32 = 0x5342_5231;
/// Size of a record header (magic, len, seq, crc).
pub const RECORD_HEADER: u64 = 20;
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Smallest disk image accepted.
pub const MIN_DISK_SIZE: u64 = 64 * 1024;

const _: () = assert!(RECORD_HEADER == 4 + 4 + 8 + 4);
const _: () = assert!(HEADER_BLOCK >= 20 && MIN_DISK_SIZE > HEADER_BLOCK);

/// One valid record found by replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Byte offset of the record header in the image.
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// Encode one record (header + payload).
pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_header() -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(&HEADER_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_BLOCK as u32).to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The open journal: where the next record goes and which seq it gets.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    tail: u64,
    last_seq: u64,
}

impl Journal {
    /// Open (creating a sparse image of `create_size` bytes if missing),
    /// format a blank image, and replay. Returns the valid records.
    pub fn open(path: &Path, create_size: u64) -> Result<(Journal, Vec<Record>), VnfError> {
        let io = |action: &'static str| {
            let path = path.to_owned();
            move |source| VnfError::Disk {
                action,
                path,
                source,
            }
        };
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io("create"))?;
                f.set_len(create_size).map_err(io("size"))?;
                tracing::info!(path = %path.display(), size = create_size, "created disk image");
                f
            }
            Err(e) => return Err(io("open")(e)),
        };
        let size = file.seek(SeekFrom::End(0)).map_err(io("measure"))?;
        if size < MIN_DISK_SIZE {
            return Err(VnfError::DiskTooSmall {
                path: path.to_owned(),
                size,
                min: MIN_DISK_SIZE,
            });
        }
        let mut block = vec![0u8; HEADER_BLOCK as usize];
        file.read_exact_at(&mut block, 0)
            .map_err(io("read the header of"))?;
        let want = encode_header();
        if block.iter().all(|b| *b == 0) {
            file.write_all_at(&want, 0).map_err(io("format"))?;
            file.sync_data().map_err(io("sync"))?;
            tracing::info!(path = %path.display(), "formatted blank disk image");
        } else if block[..20] != want {
            return Err(VnfError::NotAJournal {
                path: path.to_owned(),
            });
        }
        let records = scan_file(&file, size).map_err(io("replay"))?;
        let (tail, last_seq) = match records.last() {
            Some(r) => (r.offset + RECORD_HEADER + r.payload.len() as u64, r.seq),
            None => (HEADER_BLOCK, 0),
        };
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                size,
                tail,
                last_seq,
            },
            records,
        ))
    }

    /// Append `payloads` as consecutive records and make them durable with
    /// one `fdatasync`. Returns the first assigned sequence number. On error
    /// nothing is acknowledged and the tail does not move.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64, VnfError> {
        let first = self.last_seq + 1;
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            if p.len() > MAX_PAYLOAD as usize {
                return Err(VnfError::RecordTooLarge { len: p.len() });
            }
            buf.extend_from_slice(&encode_record(first + i as u64, p));
        }
        let end = self.tail + buf.len() as u64;
        if end > self.size {
            return Err(VnfError::DiskFull {
                path: self.path.clone(),
                needed: buf.len() as u64,
                free: self.size - self.tail,
            });
        }
        let needed = buf.len() as u64;
        let io = |action: &'static str| {
            let path = self.path.clone();
            move |source: std::io::Error| {
                if source.raw_os_error() == Some(28) {
                    // ENOSPC on the host file system under a sparse image.
                    VnfError::DiskFull {
                        path,
                        needed,
                        free: 0,
                    }
                } else {
                    VnfError::Disk {
                        action,
                        path,
                        source,
                    }
                }
            }
        };
        let written = self
            .file
            .write_all_at(&buf, self.tail)
            .map_err(io("write to"))
            .and_then(|()| self.file.sync_data().map_err(io("sync")));
        if let Err(e) = written {
            // The caller answers with an error: a record that reached the
            // page cache must not be replayed (or captured by a point) as if
            // it had been acknowledged. Best effort: the write may be what
            // failed.
            let _ = self.file.write_all_at(&vec![0; buf.len()], self.tail);
            return Err(e);
        }
        self.tail = end;
        self.last_seq += payloads.len() as u64;
        Ok(first)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Offset where the next record will be written.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Replay an image read-only (for tests and tools): the valid records.
pub fn scan(path: &Path) -> Result<Vec<Record>, VnfError> {
    let io = |action: &'static str| {
        let path = path.to_owned();
        move |source| VnfError::Disk {
            action,
            path,
            source,
        }
    };
    let mut file = File::open(path).map_err(io("open"))?;
    let size = file.seek(SeekFrom::End(0)).map_err(io("measure"))?;
    let mut head = [0u8; 20];
    if size < HEADER_BLOCK {
        return Ok(vec![]);
    }
    file.read_exact_at(&mut head, 0)
        .map_err(io("read the header of"))?;
    if head != encode_header() {
        return Ok(vec![]);
    }
    scan_file(&file, size).map_err(io("replay"))
}

fn scan_file(file: &File, size: u64) -> std::io::Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut off = HEADER_BLOCK;
    let mut expected = 1u64;
    let mut head = [0u8; RECORD_HEADER as usize];
    while off + RECORD_HEADER <= size {
        file.read_exact_at(&mut head, off)?;
        let magic = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
        if magic != RECORD_MAGIC
            || len > MAX_PAYLOAD
            || off + RECORD_HEADER + u64::from(len) > size
            || seq != expected
        {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, off + RECORD_HEADER)?;
        if record_crc(seq, &payload) != crc {
            break;
        }
        records.push(Record {
            seq,
            offset: off,
            payload,
        });
        off += RECORD_HEADER + u64::from(len);
        expected += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("disk.img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p
    }

    #[test]
    fn append_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path());
        let (mut j, recs) = Journal::open(&p, 0).unwrap();
        assert!(recs.is_empty());
        assert_eq!(j.append(&[b"one".to_vec()]).unwrap(), 1);
        assert_eq!(j.append(&[b"two".to_vec(), b"three".to_vec()]).unwrap(), 2);
        drop(j);
        let (j, recs) = Journal::open(&p, 0).unwrap();
        let payloads: Vec<_> = recs.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            payloads,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(j.last_seq(), 3);
        assert_eq!(j.tail(), HEADER_BLOCK + 3 * RECORD_HEADER + 11);
        assert_eq!(scan(&p).unwrap(), recs);
    }

    #[test]
    fn torn_and_stale_tails_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path());
        let (mut j, _) = Journal::open(&p, 0).unwrap();
        j.append(&[b"keep".to_vec()]).unwrap();
        let tail = j.tail();
        drop(j);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        // A torn record: valid header, payload cut short by zeros.
        let rec = encode_record(2, b"a long payload that was torn");
        f.write_all_at(&rec[..30], tail).unwrap();
        let (mut j, recs) = Journal::open(&p, 0).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(j.tail(), tail);
        // The next append overwrites the torn record; what is left of it
        // after the new, shorter record is ignored.
        j.append(&[b"x".to_vec()]).unwrap();
        drop(j);
        let recs = scan(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].payload, b"x");

        // A complete record with a wrong seq (stale) ends the replay.
        let (j, _) = Journal::open(&p, 0).unwrap();
        f.write_all_at(&encode_record(9, b"stale"), j.tail())
            .unwrap();
        assert_eq!(scan(&p).unwrap().len(), 2);
        // Garbage and bad CRC too.
        let mut bad = encode_record(3, b"flipped");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        f.write_all_at(&bad, j.tail()).unwrap();
        assert_eq!(scan(&p).unwrap().len(), 2);
        f.write_all_at(&[0xff; 64], j.tail()).unwrap();
        assert_eq!(scan(&p).unwrap().len(), 2);
        // An absurd length near the end of the disk is not a panic.
        let mut huge = encode_record(3, b"");
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        f.write_all_at(&huge, (1 << 20) - 20).unwrap();
        assert_eq!(scan(&p).unwrap().len(), 2);
    }

    #[test]
    fn full_disk_is_refused_without_moving_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.img");
        File::create(&p).unwrap().set_len(MIN_DISK_SIZE).unwrap();
        let (mut j, _) = Journal::open(&p, 0).unwrap();
        let payload = vec![b'a'; 10_000];
        let mut n = 0;
        loop {
            match j.append(std::slice::from_ref(&payload)) {
                Ok(_) => n += 1,
                Err(VnfError::DiskFull { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 6);
        assert_eq!(j.last_seq(), 6);
        assert_eq!(j.append(&[b"small".to_vec()]).unwrap(), 7);
    }

    #[test]
    fn too_small_and_foreign_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.img");
        File::create(&p).unwrap().set_len(1000).unwrap();
        assert!(matches!(
            Journal::open(&p, 0),
            Err(VnfError::DiskTooSmall { .. })
        ));
        let p = dir.path().join("foreign.img");
        std::fs::write(&p, vec![1u8; 1 << 17]).unwrap();
        assert!(matches!(
            Journal::open(&p, 0),
            Err(VnfError::NotAJournal { .. })
        ));
        // Missing: created with the requested size.
        let p = dir.path().join("new.img");
        let (j, _) = Journal::open(&p, 1 << 20).unwrap();
        assert_eq!(j.size(), 1 << 20);
    }
}
