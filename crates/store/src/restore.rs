//! Restoring a disk of a point to a sparse file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::datastore::Datastore;
use crate::manifest::PointId;
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
    /// Write disk `disk` of point `id` to `dest`. The data goes to
    /// `<dest>.partial`, renamed to `dest` once complete and synced; on any
    /// error neither file is left behind.
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
        let manifest = self.load_manifest(id)?;
        let entry = manifest
            .disk(disk)
            .ok_or_else(|| StoreError::DiskNotFound {
                point: id.to_string(),
                disk: disk.to_string(),
            })?;
        let ids = self.read_disk_index(entry).map_err(wrap)?;
        let partial = partial_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| wrap(StoreError::io("create", &partial, e)))?;
        let result = self.fill(&file, &partial, entry, &ids, progress);
        let result = result.and_then(|stats| {
            file.sync_data()
                .map_err(|e| StoreError::io("sync", &partial, e))?;
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
        result.map_err(wrap)
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
        // Chunks are fetched and decoded in parallel, a batch at a time, and
        // written in order by one thread: parallel writes to one file
        // contend on the inode lock and are several times slower.
        let batch = ((RESTORE_BATCH as u64 / cs).max(1)) as usize;
        let (tx, rx) = sync_channel::<Vec<(u64, Vec<u8>)>>(2);
        let written = std::thread::scope(|scope| -> Result<u64, StoreError> {
            let writer = scope.spawn(move || -> Result<u64, StoreError> {
                let mut written = 0;
                for chunks in rx {
                    for (offset, data) in chunks {
                        file.write_all_at(&data, offset)
                            .map_err(|e| StoreError::io("write", path, e))?;
                        written += data.len() as u64;
                        progress.inc(data.len() as u64);
                    }
                }
                Ok(written)
            });
            let decoded = (|| {
                for (b, group) in ids.chunks(batch).enumerate() {
                    let first = (b * batch) as u64;
                    let chunks: Vec<(u64, Vec<u8>)> = group
                        .par_iter()
                        .enumerate()
                        .filter(|(_, id)| !id.is_zero())
                        .map(|(k, id)| {
                            let i = first + k as u64;
                            let data = self.read_chunk(id, BlobKind::Data)?;
                            let len = entry.chunk_len(i);
                            if data.len() != len {
                                return Err(StoreError::Corrupt {
                                    object: format!("chunk {id}"),
                                    root: self.root().to_path_buf(),
                                    reason: format!("holds {} bytes, expected {len}", data.len()),
                                });
                            }
                            Ok((i * cs, data))
                        })
                        .collect::<Result<_, StoreError>>()?;
                    let zero_bytes: u64 = group
                        .iter()
                        .enumerate()
                        .filter(|(_, id)| id.is_zero())
                        .map(|(k, _)| entry.chunk_len(first + k as u64) as u64)
                        .sum();
                    progress.inc(zero_bytes);
                    if tx.send(chunks).is_err() {
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
        Ok(RestoreStats {
            size: entry.size,
            bytes_written: written,
            zero_chunks,
        })
    }
}
