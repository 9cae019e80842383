//! Restoring a disk of a point to a sparse file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::manifest::{DiskEntry, PointId};
use crate::progress::Progress;

/// Bytes of chunks decoded per batch.
const RESTORE_BATCH: usize = 16 << 20;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    pub size: u64,
    pub bytes_written: u64,
    /// Chunks left as holes.
    pub zero_chunks: u64,
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

impl Datastore {
    /// The entry of disk `disk` of point `id`.
    pub(crate) fn point_disk(&self, id: &PointId, disk: &str) -> Result<DiskEntry, StoreError> {
        self.load_manifest(id)?
            .disk(disk)
            .cloned()
            .ok_or_else(|| StoreError::DiskNotFound {
                point: id.to_string(),
                disk: disk.to_string(),
            })
    }

    /// Write disk `disk` of point `id` to `dest`. The data goes to
    /// `<dest>.partial`, renamed to `dest` once complete and synced; on any
    /// error neither file is left behind. Holds the store like a writer
    /// does, so gc cannot remove packs while it reads.
    pub fn restore_disk(
        &self,
        id: &PointId,
        disk: &str,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreStats, StoreError> {
        let wrap = |e: StoreError| StoreError::Restore {
            point: id.to_string(),
            disk: disk.to_string(),
            source: Box::new(e),
        };
        // Held like a writer: gc waits instead of deleting packs under us.
        let _lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let entry = self.point_disk(id, disk)?;
        self.restore_entry(&entry, dest, progress).map_err(wrap)
    }

    /// Write the disk `entry` (of a point or a template) to `dest`, as
    /// [`Datastore::restore_disk`] does; the caller holds the store.
    pub(crate) fn restore_entry(
        &self,
        entry: &DiskEntry,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreStats, StoreError> {
        let ids = self.read_disk_index(entry)?;
        let partial = partial_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| StoreError::io("create", &partial, e))?;
        let t0 = std::time::Instant::now();
        let result = self.fill(&file, &partial, entry, &ids, progress);
        let t1 = t0.elapsed();
        let result = result.and_then(|stats| {
            file.sync_data()
                .map_err(|e| StoreError::io("sync", &partial, e))?;
            tracing::debug!(fill = ?t1, sync = ?(t0.elapsed() - t1), "restore timing");
            std::fs::rename(&partial, dest)
                .map_err(|e| StoreError::io("rename into place", dest, e))?;
            if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StoreError::io("sync directory", dir, e))?;
            }
            Ok(stats)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    fn fill(
        &self,
        file: &File,
        path: &Path,
        entry: &crate::manifest::DiskEntry,
        ids: &[crate::chunk::ChunkId],
        progress: &dyn Progress,
    ) -> Result<RestoreStats, StoreError> {
        // A fresh file of the right length: zero chunks stay holes.
        file.set_len(entry.size)
            .map_err(|e| StoreError::io("resize", path, e))?;
        progress.set_total(entry.size);
        let cs = u64::from(entry.chunk_size);
        let zero_chunks = ids.iter().filter(|id| id.is_zero()).count() as u64;
        let mut out = Output::new(file, path);
        // Chunks are fetched and decoded in parallel, a batch at a time,
        // straight into their place in an aligned batch buffer, and
        // written in order by one thread: parallel writes to one file
        // contend on the inode lock and are several times slower.
        // Buffers go round between the two, so no fresh memory is touched.
        let batch = ((RESTORE_BATCH as u64 / cs).max(1)) as usize;
        let (tx, rx) = sync_channel::<Batch>(2);
        let (recycle_tx, recycle_rx) = sync_channel::<AlignedBuf>(4);
        let written = std::thread::scope(|scope| -> Result<u64, StoreError> {
            let out = &mut out;
            let writer = scope.spawn(move || -> Result<u64, StoreError> {
                let mut written = 0;
                for b in rx {
                    written += out.write_batch(&b, cs, progress)?;
                    let _ = recycle_tx.try_send(b.buf);
                }
                Ok(written)
            });
            let decoded = (|| {
                for (b, group) in ids.chunks(batch).enumerate() {
                    let first = (b * batch) as u64;
                    let start = first * cs;
                    let end = (start + group.len() as u64 * cs).min(entry.size);
                    let mut buf = recycle_rx
                        .try_recv()
                        .unwrap_or_else(|_| AlignedBuf::new(batch * cs as usize));
                    // Fetched per pack in ranged batches, then decoded
                    // (opened with the store's key when it is encrypted,
                    // and checked against their ids) in parallel.
                    let wanted: Vec<ChunkId> =
                        group.iter().filter(|id| !id.is_zero()).copied().collect();
                    let blobs = self.read_stored_many(&wanted)?;
                    let mut slot_of = vec![usize::MAX; group.len()];
                    let mut n = 0;
                    for (k, id) in group.iter().enumerate() {
                        if !id.is_zero() {
                            slot_of[k] = n;
                            n += 1;
                        }
                    }
                    buf.as_mut()[..(end - start) as usize]
                        .par_chunks_mut(cs as usize)
                        .enumerate()
                        .zip(group.par_iter())
                        .filter(|(_, id)| !id.is_zero())
                        .try_for_each(|((k, slot), id)| {
                            let (blob, loc) = &blobs[slot_of[k]];
                            self.decode_blob_into(blob, BlobKind::Data, id, slot)
                                .map_err(|e| self.corrupt_chunk(id, &loc.pack, e))
                        })?;
                    let zero_bytes: u64 = group
                        .iter()
                        .enumerate()
                        .filter(|(_, id)| id.is_zero())
                        .map(|(k, _)| entry.chunk_len(first + k as u64) as u64)
                        .sum();
                    progress.inc(zero_bytes);
                    let present = group.iter().map(|id| !id.is_zero()).collect();
                    if tx
                        .send(Batch {
                            start,
                            len: (end - start) as usize,
                            present,
                            buf,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(())
            })();
            drop(tx);
            let result = writer.join().unwrap_or_else(|_| {
                Err(StoreError::io(
                    "write",
                    path,
                    std::io::Error::other("writer thread panicked"),
                ))
            });
            decoded?;
            result
        })?;
        tracing::debug!(direct = out.direct.is_some(), "restore written");
        Ok(RestoreStats {
            size: entry.size,
            bytes_written: written,
            zero_chunks,
        })
    }
}

/// Alignment of buffers, offsets and lengths for direct I/O.
const ALIGN: usize = 4096;

/// A zeroed buffer whose usable part starts on an [`ALIGN`] boundary.
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, off, len }
    }

    fn as_ref(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Decoded chunks of consecutive chunk numbers, from byte `start` of the
/// disk; `present[k]` is false for a zero chunk (left as a hole).
struct Batch {
    start: u64,
    len: usize,
    present: Vec<bool>,
    buf: AlignedBuf,
}

/// The file being restored, written with direct I/O when the filesystem
/// allows it: the data goes from our buffers to the disk without passing
/// through (and filling) the page cache, and the final sync has little
/// left to do. Otherwise buffered writes, with writeback started after
/// each batch.
struct Output<'a> {
    file: &'a File,
    path: &'a Path,
    direct: Option<File>,
}

impl<'a> Output<'a> {
    fn new(file: &'a File, path: &'a Path) -> Output<'a> {
        let direct = open_direct(path);
        Output { file, path, direct }
    }

    fn write_batch(
        &mut self,
        b: &Batch,
        cs: u64,
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        let data = &b.buf.as_ref()[..b.len];
        let cs = cs as usize;
        let mut written = 0u64;
        let mut k = 0;
        while k < b.present.len() {
            if !b.present[k] {
                k += 1;
                continue;
            }
            let first = k;
            while k < b.present.len() && b.present[k] {
                k += 1;
            }
            let run = &data[first * cs..(k * cs).min(b.len)];
            self.write_at(run, b.start + (first * cs) as u64)?;
            written += run.len() as u64;
            progress.inc(run.len() as u64);
        }
        if self.direct.is_none() && written > 0 {
            // Start writeback of this batch now rather than at the final
            // sync (dirty pages are written, clean ones dropped).
            let _ = nix::fcntl::posix_fadvise(
                self.file,
                b.start as i64,
                b.len as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        Ok(written)
    }

    /// Write `data` at `offset`: its aligned part directly when possible,
    /// the rest (the end of a disk whose size is not a multiple of
    /// [`ALIGN`]) buffered.
    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), StoreError> {
        let mut done = 0;
        if let Some(direct) = &self.direct {
            let aligned = data.len() / ALIGN * ALIGN;
            if aligned > 0
                && offset.is_multiple_of(ALIGN as u64)
                && data.as_ptr().align_offset(ALIGN) == 0
            {
                match direct.write_all_at(&data[..aligned], offset) {
                    Ok(()) => done = aligned,
                    // Direct I/O refused after all: carry on buffered.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                        tracing::debug!(path = %self.path.display(), "direct I/O refused");
                        self.direct = None;
                    }
                    Err(e) => return Err(StoreError::io("write", self.path, e)),
                }
            }
        }
        if done < data.len() {
            self.file
                .write_all_at(&data[done..], offset + done as u64)
                .map_err(|e| StoreError::io("write", self.path, e))?;
        }
        Ok(())
    }
}

/// A second handle on `path` for direct I/O, if the filesystem has it.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "no direct I/O"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_write_runs_and_leave_holes_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let cs = 64 << 10;
        let len = 3 * cs + 12345;
        // An unaligned start goes buffered.
        for (direct, start) in [(true, 0), (false, 0), (true, 7)] {
            let path = dir.path().join(format!("out-{direct}-{start}"));
            let file = File::create(&path).unwrap();
            file.set_len(start + len as u64).unwrap();
            let mut out = Output::new(&file, &path);
            if !direct {
                out.direct = None;
            }
            let mut buf = AlignedBuf::new(4 * cs);
            for (i, b) in buf.as_mut()[..len].iter_mut().enumerate() {
                *b = (i % 251) as u8 + 1;
            }
            let batch = Batch {
                start,
                len,
                present: vec![true, false, true, true],
                buf,
            };
            let n = out.write_batch(&batch, cs as u64, &()).unwrap();
            assert_eq!(n as usize, len - cs);
            let got = std::fs::read(&path).unwrap();
            let mut want = vec![0u8; start as usize];
            want.extend_from_slice(&batch.buf.as_ref()[..len]);
            want[start as usize + cs..start as usize + 2 * cs].fill(0);
            assert!(got == want, "direct {direct} start {start}");
        }
    }
}
