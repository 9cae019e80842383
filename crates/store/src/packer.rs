//! Filling packs and writing them in the background.
//!
//! Blobs are appended to an in-memory [`PackBuilder`]; a full pack goes to
//! a writer thread, which writes the pack, then its index (each fsynced),
//! and only then adds its chunks to the shared catalog, so no other writer
//! can reference a chunk before it is durable.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::pack::{PackBuilder, PackIndex};

pub(crate) struct Packer {
    store: Datastore,
    current: Option<PackBuilder>,
    target: usize,
    /// Every chunk handed to this packer.
    added: HashSet<ChunkId>,
    tx: Option<SyncSender<PackBuilder>>,
    /// Buffers of written packs, to fill again.
    spare: Mutex<Receiver<Vec<u8>>>,
    thread: Option<JoinHandle<Result<Vec<PackIndex>, StoreError>>>,
}

impl Packer {
    pub fn new(store: Datastore) -> Packer {
        let (tx, rx) = sync_channel::<PackBuilder>(1);
        let (spare_tx, spare) = sync_channel::<Vec<u8>>(2);
        let writer_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("standby-pack-writer".into())
            .spawn(move || {
                let mut written = Vec::new();
                for builder in rx {
                    let key = writer_store.index_key();
                    let (idx, buf) = builder.write_keep_keyed(writer_store.backend(), key)?;
                    writer_store.catalog().insert(&idx);
                    written.push(idx);
                    let _ = spare_tx.try_send(buf);
                }
                Ok(written)
            })
            .ok();
        Packer {
            target: store.options().pack_size,
            store,
            current: None,
            added: HashSet::new(),
            tx: Some(tx),
            spare: Mutex::new(spare),
            thread,
        }
    }

    /// True when the store (from a sound index of a present pack) or this
    /// packer already holds `id`; a suspect chunk is stored again.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.added.contains(id) || self.store.catalog().contains(id)
    }

    /// True when this packer stored `id` itself.
    pub fn added(&self, id: &ChunkId) -> bool {
        self.added.contains(id)
    }

    /// Append an encoded blob; returns false if the chunk was already added.
    pub fn add(&mut self, id: ChunkId, kind: BlobKind, blob: &[u8]) -> Result<bool, StoreError> {
        if !self.added.insert(id) {
            return Ok(false);
        }
        let target = self.target;
        let spare = &self.spare;
        let builder = self.current.get_or_insert_with(|| {
            let buf = spare.lock().ok().and_then(|rx| rx.try_recv().ok());
            PackBuilder::with_buffer(target, buf.unwrap_or_default())
        });
        builder.add(id, kind, blob);
        if builder.len() >= target {
            self.send()?;
        }
        Ok(true)
    }

    /// Append a blob even if the catalog knows the chunk (gc moving it).
    pub fn add_copy(&mut self, id: ChunkId, kind: BlobKind, blob: &[u8]) -> Result<(), StoreError> {
        self.added.remove(&id);
        self.add(id, kind, blob).map(|_| ())
    }

    fn send(&mut self) -> Result<(), StoreError> {
        let Some(builder) = self.current.take() else {
            return Ok(());
        };
        if builder.is_empty() {
            return Ok(());
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(builder).is_ok(),
            None => false,
        };
        if !sent {
            // The writer thread stopped: its error says why.
            return Err(self.join().err().unwrap_or_else(|| self.thread_gone()));
        }
        Ok(())
    }

    fn thread_gone(&self) -> StoreError {
        StoreError::io(
            "write packs to",
            self.store.root().join("packs"),
            std::io::Error::other("pack writer thread stopped"),
        )
    }

    fn join(&mut self) -> Result<Vec<PackIndex>, StoreError> {
        self.tx = None;
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(self.thread_gone())),
            None => Err(self.thread_gone()),
        }
    }

    /// Write what is pending; every pack and index is durable on return.
    pub fn finish(mut self) -> Result<Vec<PackIndex>, StoreError> {
        self.send()?;
        self.join()
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        // Abort: drop the pending pack, let the writer finish what it has.
        self.current = None;
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
