//! Restoring a point onto a disk that already holds data (the old disk at
//! home on a failback, an earlier restore, a warm replica): only the
//! chunks that differ are written.
//!
//! Which chunks differ is found one of two ways:
//! - the disk's state is known ([`OntoBase::Point`]: it holds exactly
//!   another point's disk): the two points' chunk ids are compared, and
//!   the disk is not read at all;
//! - else ([`OntoBase::Unknown`]) each chunk of the disk is read and
//!   hashed as the store hashes it, holes counting as zero chunks without
//!   being read.
//!
//! The changed chunks are then either written in place
//! ([`Datastore::apply_onto`]: the disk is a mix while it runs, the
//! caller marks it so) or staged in a journal ([`Datastore::stage_onto`])
//! that [`replay_journal`] writes in place later: staged and synced
//! before anything is overwritten, a journal makes the switch from one
//! point to the next all or nothing for whoever commits it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::manifest::{DiskEntry, PointId};
use crate::progress::Progress;

/// Bytes handled per batch.
const BATCH: usize = 16 << 20;

/// The first bytes of a journal.
const MAGIC: &[u8; 8] = b"SBYJRNL1";

/// What is known of the disk a restore writes onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OntoBase {
    /// Nothing: each chunk is read and compared.
    Unknown,
    /// It holds exactly this point's disk of the same name.
    Point(PointId),
}

/// What a restore onto an existing disk did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OntoStats {
    pub size: u64,
    pub chunks: u64,
    /// Chunks that differed, written (or made holes, when zero).
    pub chunks_written: u64,
    pub bytes_written: u64,
    /// Bytes of the existing disk read to compare them (0 when its state
    /// was known).
    pub bytes_read: u64,
    /// The base point's ids told what differs: the disk was not read.
    pub known: bool,
}

/// The chunks of a point's disk that differ from an existing disk.
pub struct OntoPlan {
    point: PointId,
    entry: DiskEntry,
    ids: Vec<ChunkId>,
    changed: Vec<u64>,
    stats: OntoStats,
}

impl OntoPlan {
    pub fn stats(&self) -> &OntoStats {
        &self.stats
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::io(op, path, e)
}

impl Datastore {
    /// Which chunks of disk `disk` of point `id` differ from `dest` (see
    /// the module). A known base that cannot serve (not in this store, a
    /// disk of another size or chunk size) is read instead.
    pub fn plan_onto(
        &self,
        id: &PointId,
        disk: &str,
        dest: &Path,
        base: &OntoBase,
        progress: &dyn Progress,
    ) -> Result<OntoPlan, StoreError> {
        let _lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let entry = self.point_disk(id, disk)?;
        let ids = self.read_disk_index(&entry)?;
        let len = std::fs::metadata(dest).map_err(io("stat", dest))?.len();
        let mut stats = OntoStats {
            size: entry.size,
            chunks: entry.chunks,
            ..OntoStats::default()
        };
        let known = match base {
            OntoBase::Point(b) => self.base_ids(b, &entry, len),
            OntoBase::Unknown => None,
        };
        let changed = match known {
            Some(base_ids) => {
                stats.known = true;
                ids.iter()
                    .enumerate()
                    .filter(|(i, id)| base_ids.get(*i).unwrap_or(&ChunkId::ZERO) != *id)
                    .map(|(i, _)| i as u64)
                    .collect()
            }
            None => {
                let (changed, read) = self.scan(dest, len, &entry, &ids, progress)?;
                stats.bytes_read = read;
                changed
            }
        };
        stats.chunks_written = changed.len() as u64;
        stats.bytes_written = changed.iter().map(|&i| entry.chunk_len(i) as u64).sum();
        Ok(OntoPlan {
            point: id.clone(),
            entry,
            ids,
            changed,
            stats,
        })
    }

    /// The chunk ids of point `base`'s disk like `entry`, when a disk of
    /// `len` bytes holding it can be compared with `entry` id by id.
    fn base_ids(&self, base: &PointId, entry: &DiskEntry, len: u64) -> Option<Vec<ChunkId>> {
        let m = self
            .load_manifest(base)
            .map_err(|e| tracing::info!(%base, "known base unreadable, reading the disk: {e}"))
            .ok()?;
        let b = m.disk(&entry.name)?;
        if b.chunk_size != entry.chunk_size || b.size != len {
            tracing::info!(%base, "known base of another shape, reading the disk");
            return None;
        }
        self.read_disk_index(b).ok()
    }

    /// Read `dest` (`len` bytes; beyond them, and in holes, zeros) chunk
    /// by chunk and compare each with `ids`: the chunks that differ, and
    /// the bytes read. One thread reads ahead while the others hash.
    fn scan(
        &self,
        dest: &Path,
        len: u64,
        entry: &DiskEntry,
        ids: &[ChunkId],
        progress: &dyn Progress,
    ) -> Result<(Vec<u64>, u64), StoreError> {
        let file = File::open(dest).map_err(io("open", dest))?;
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        progress.set_total(entry.size);
        let cs = u64::from(entry.chunk_size);
        let per = (BATCH as u64 / cs).max(1);
        let batches = entry.chunks.div_ceil(per);
        let (tx, rx) = sync_channel::<(u64, Option<Vec<u8>>)>(2);
        let mut changed = Vec::new();
        let mut read = 0u64;
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let file = &file;
            let reader = scope.spawn(move || -> Result<u64, StoreError> {
                let mut read = 0;
                for b in 0..batches {
                    let start = b * per * cs;
                    let end = ((b + 1) * per * cs).min(entry.size);
                    // Ask for the next two batches now: the disk keeps
                    // working while this one is read and hashed.
                    let ahead = (end as i64, (2 * per * cs) as i64);
                    let _ = nix::fcntl::posix_fadvise(
                        file,
                        ahead.0,
                        ahead.1,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                    );
                    // A hole, or past the end of the file: zeros, unread.
                    let buf = match data_in(file, start, end.min(len)) {
                        false => None,
                        true => {
                            let mut buf = vec![0u8; (end - start) as usize];
                            let upto = (end.min(len) - start) as usize;
                            file.read_exact_at(&mut buf[..upto], start)
                                .map_err(io("read", dest))?;
                            read += upto as u64;
                            Some(buf)
                        }
                    };
                    if tx.send((b, buf)).is_err() {
                        break;
                    }
                }
                Ok(read)
            });
            for (b, buf) in rx {
                let first = b * per;
                let group = &ids[first as usize..((first + per) as usize).min(ids.len())];
                let differs: Vec<bool> = match &buf {
                    None => group.iter().map(|id| !id.is_zero()).collect(),
                    Some(buf) => buf
                        .par_chunks(cs as usize)
                        .zip(group.par_iter())
                        .map(|(data, id)| self.chunk_id(data) != *id)
                        .collect(),
                };
                changed.extend(
                    differs
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| **d)
                        .map(|(k, _)| first + k as u64),
                );
                progress.inc(
                    (0..group.len() as u64)
                        .map(|k| entry.chunk_len(first + k) as u64)
                        .sum::<u64>(),
                );
            }
            read = reader.join().unwrap_or_else(|_| {
                Err(StoreError::io(
                    "read",
                    dest,
                    std::io::Error::other("reader thread panicked"),
                ))
            })?;
            Ok(())
        })?;
        Ok((changed, read))
    }

    /// Decode the changed chunks of `plan` a batch at a time and hand each
    /// to `put(offset, data)` in disk order (`None`: a zero chunk).
    fn each_changed(
        &self,
        plan: &OntoPlan,
        progress: &dyn Progress,
        mut put: impl FnMut(u64, Option<&[u8]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let _lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let cs = u64::from(plan.entry.chunk_size);
        let per = (BATCH as u64 / cs).max(1) as usize;
        for group in plan.changed.chunks(per) {
            let wanted: Vec<ChunkId> = group
                .iter()
                .map(|&i| plan.ids[i as usize])
                .filter(|id| !id.is_zero())
                .collect();
            let blobs = self.read_stored_many(&wanted)?;
            // Each chunk's place, and its blob in `blobs` (zero chunks
            // have none).
            let mut n = 0;
            let mut slots: Vec<Slot> = group
                .iter()
                .map(|&i| {
                    let id = plan.ids[i as usize];
                    let blob = n;
                    let len = match id.is_zero() {
                        true => 0,
                        false => {
                            n += 1;
                            plan.entry.chunk_len(i)
                        }
                    };
                    Slot {
                        chunk: i,
                        id,
                        data: vec![0u8; len],
                        blob,
                    }
                })
                .collect();
            slots
                .par_iter_mut()
                .filter(|s| !s.id.is_zero())
                .try_for_each(|s| {
                    let (blob, loc) = &blobs[s.blob];
                    self.decode_blob_into(blob, BlobKind::Data, &s.id, &mut s.data)
                        .map_err(|e| self.corrupt_chunk(&s.id, &loc.pack, e))
                })?;
            for s in &slots {
                put(s.chunk * cs, (!s.id.is_zero()).then_some(s.data.as_slice()))?;
                progress.inc(plan.entry.chunk_len(s.chunk) as u64);
            }
        }
        Ok(())
    }

    /// Write the changed chunks of `plan` into `dest` in place, size it
    /// as the point's disk, and sync it.
    pub fn apply_onto(
        &self,
        plan: &OntoPlan,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<OntoStats, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .open(dest)
            .map_err(io("open", dest))?;
        file.set_len(plan.entry.size).map_err(io("resize", dest))?;
        progress.set_total(plan.stats.bytes_written);
        self.each_changed(plan, progress, |off, data| {
            write_chunk(
                &file,
                dest,
                off,
                data,
                plan.entry.chunk_len(off / u64::from(plan.entry.chunk_size)),
            )
        })
        .map_err(|e| restore_error(plan, e))?;
        file.sync_data().map_err(io("sync", dest))?;
        Ok(plan.stats.clone())
    }

    /// Write the changed chunks of `plan` to a new journal file at
    /// `journal`, synced, for [`replay_journal`] to write into the disk.
    pub fn stage_onto(
        &self,
        plan: &OntoPlan,
        journal: &Path,
        progress: &dyn Progress,
    ) -> Result<OntoStats, StoreError> {
        let file = File::create(journal).map_err(io("create", journal))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let head = |w: &mut BufWriter<&File>| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&plan.entry.size.to_le_bytes())?;
            w.write_all(&plan.entry.chunk_size.to_le_bytes())
        };
        head(&mut w).map_err(io("write", journal))?;
        progress.set_total(plan.stats.bytes_written);
        let cs = u64::from(plan.entry.chunk_size);
        self.each_changed(plan, progress, |off, data| {
            let len = plan.entry.chunk_len(off / cs) as u32;
            let mut put = || -> std::io::Result<()> {
                w.write_all(&off.to_le_bytes())?;
                w.write_all(&len.to_le_bytes())?;
                match data {
                    Some(d) => {
                        w.write_all(&[0])?;
                        w.write_all(d)
                    }
                    None => w.write_all(&[1]),
                }
            };
            put().map_err(io("write", journal))
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(journal);
            restore_error(plan, e)
        })?;
        let end = |w: &mut BufWriter<&File>| -> std::io::Result<()> {
            w.write_all(&u64::MAX.to_le_bytes())?;
            w.flush()
        };
        end(&mut w).map_err(io("write", journal))?;
        drop(w);
        file.sync_all().map_err(io("sync", journal))?;
        Ok(plan.stats.clone())
    }
}

/// A changed chunk being decoded: its number, id, plaintext and blob.
struct Slot {
    chunk: u64,
    id: ChunkId,
    data: Vec<u8>,
    blob: usize,
}

fn restore_error(plan: &OntoPlan, e: StoreError) -> StoreError {
    StoreError::Restore {
        point: plan.point.to_string(),
        disk: plan.entry.name.clone(),
        source: Box::new(e),
    }
}

/// Whether `file` holds data (not only a hole) between `start` and
/// `end`; true when the filesystem cannot tell.
fn data_in(file: &File, start: u64, end: u64) -> bool {
    if start >= end {
        return false;
    }
    match nix::unistd::lseek(file.as_fd(), start as i64, nix::unistd::Whence::SeekData) {
        Ok(at) => (at as u64) < end,
        Err(nix::errno::Errno::ENXIO) => false,
        Err(_) => true,
    }
}

/// Write one chunk at `off`: its data, or for a zero chunk a hole (zeros
/// written where the filesystem cannot punch one).
fn write_chunk(
    file: &File,
    path: &Path,
    off: u64,
    data: Option<&[u8]>,
    len: usize,
) -> Result<(), StoreError> {
    match data {
        Some(d) => file.write_all_at(d, off).map_err(io("write", path)),
        None => {
            let punched = nix::fcntl::fallocate(
                file.as_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            );
            match punched {
                Ok(()) => Ok(()),
                Err(_) => file
                    .write_all_at(&vec![0u8; len], off)
                    .map_err(io("write", path)),
            }
        }
    }
}

/// Write a journal made by [`Datastore::stage_onto`] into `dest` (sized
/// as the point's disk) and sync it. Replaying twice does the same as
/// once. An incomplete or foreign journal is refused and writes nothing.
pub fn replay_journal(journal: &Path, dest: &Path) -> Result<u64, StoreError> {
    let bad = |why: &str| StoreError::Corrupt {
        object: format!("journal {}", journal.display()),
        root: journal.parent().unwrap_or(Path::new("")).to_path_buf(),
        reason: why.to_string(),
    };
    // Checked whole before anything is written.
    let mut bytes = Vec::new();
    File::open(journal)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io("read", journal))?;
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad("not a standby journal"));
    }
    let size = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let mut at = 20;
    let mut entries = Vec::new();
    loop {
        let Some(off) = bytes.get(at..at + 8) else {
            return Err(bad("incomplete: no end mark"));
        };
        let off = u64::from_le_bytes(off.try_into().unwrap_or_default());
        at += 8;
        if off == u64::MAX {
            break;
        }
        let (Some(len), Some(kind)) = (bytes.get(at..at + 4), bytes.get(at + 4)) else {
            return Err(bad("incomplete entry"));
        };
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        at += 5;
        let data = match kind {
            0 => {
                let d = bytes
                    .get(at..at + len)
                    .ok_or_else(|| bad("incomplete entry"))?;
                at += len;
                Some(d)
            }
            1 => None,
            _ => return Err(bad("unknown entry kind")),
        };
        entries.push((off, len, data));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(io("open", dest))?;
    file.set_len(size).map_err(io("resize", dest))?;
    let mut written = 0;
    for (off, len, data) in entries {
        write_chunk(&file, dest, off, data, len)?;
        written += len as u64;
    }
    file.sync_data().map_err(io("sync", dest))?;
    Ok(written)
}
