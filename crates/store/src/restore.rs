//! Restoring a disk of a point to a sparse file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::datastore::Datastore;
use crate::manifest::PointId;
use crate::progress::Progress;

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
            file.sync_all()
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
        let written: u64 = ids
            .par_iter()
            .enumerate()
            .with_min_len(8)
            .map(|(i, id)| -> Result<u64, StoreError> {
                let len = entry.chunk_len(i as u64);
                if id.is_zero() {
                    progress.inc(len as u64);
                    return Ok(0);
                }
                let data = self.read_chunk(id, BlobKind::Data)?;
                if data.len() != len {
                    return Err(StoreError::Corrupt {
                        object: format!("chunk {id}"),
                        root: self.root().to_path_buf(),
                        reason: format!("holds {} bytes, expected {len}", data.len()),
                    });
                }
                file.write_all_at(&data, i as u64 * cs)
                    .map_err(|e| StoreError::io("write", path, e))?;
                progress.inc(len as u64);
                Ok(len as u64)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        Ok(RestoreStats {
            size: entry.size,
            bytes_written: written,
            zero_chunks,
        })
    }
}
