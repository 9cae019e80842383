//! The standby datastore: a content-addressed store of VM disk images.
//!
//! # Layout
//!
//! ```text
//! <root>/standby-store.json           format marker {"format":2,"kind":"standby-datastore",...}
//! <root>/packs/<2 hex>/<pack id>.pack  "SBPK" + version, then blobs back to back
//! <root>/packs/<2 hex>/<pack id>.idx   (chunk id, offset, length, kind) per blob + BLAKE3
//! <root>/manifests/<vm>/<time>.json    one recovery point, written last
//! <root>/templates/<name>.json         a template: a point's manifest kept under a name
//! <root>/tmp/                          files being written (renamed into place)
//! <root>/locks/gc.lock, gc.epoch       writer / gc exclusion
//! <root>/locks/gc.lease, shared/*.lease   the same on object stores
//! <root>/keys/<id>.json                encrypted store: the master keys, wrapped
//! <root>.store-key (outside the store) unencrypted store: its store key
//! ```
//!
//! The layout is the same on a local directory ([`backend::LocalBackend`])
//! and on an object store ([`object::ObjectBackend`]: Azure Blob, S3 or
//! local files through `object_store`), where `<root>` is a prefix in a
//! container or bucket, each file is one object written with one atomic
//! put (no `tmp/`), and a pack is one object read by byte ranges. The
//! marker, the key objects' directory and how a new store is laid out
//! are in `layout.rs`.
//!
//! # Formats
//!
//! - A disk is cut into fixed-size chunks (a power of two, 64 KiB–4 MiB).
//!   Chunk id = BLAKE3 of the plaintext ([`ChunkId`]); an all-zero chunk
//!   gets the reserved zero id and is never stored.
//! - A chunk is stored as a blob ([`blob`]): a 20-byte header (magic
//!   "SBCK", version, compression, encryption, kind, raw length, stored
//!   length, CRC32 of the payload) and the payload, zstd level 1 unless
//!   that does not shrink it.
//! - Blobs are appended to packs of ~32 MiB (16–64 MiB), written whole
//!   with one fsync; each pack has an index file ([`pack`]) with a BLAKE3
//!   checksum. At open, all index files are loaded into an in-memory map
//!   chunk id → location.
//! - A disk's index (its chunk ids in order) is cut into index chunks of
//!   2048 ids, stored as blobs of kind 1 ([`index`]), so an unchanged
//!   region of the index costs nothing in the next point.
//! - A [`Manifest`] (JSON) names the point, its vm, site, time,
//!   consistency, VM config, labels and, per disk, size, chunk size and
//!   index chunk ids; a BLAKE3 checksum over its canonical JSON detects
//!   any changed byte.
//!
//! # Authentication (every datastore, format 2)
//!
//! Every manifest and pack index carries a keyed MAC under a key kept
//! outside the store (`auth.rs`): an unencrypted store's **store key**
//! (a key file on the host that opens it, [`backend::Backend::store_key_file`]),
//! an encrypted store's master keys. A planted or altered manifest is
//! refused with an error naming it (never listed, never the newest
//! point); a planted or altered index is reported and never deduplicated
//! against. Index and data chunks are authenticated through the hashes
//! a MAC'd manifest names. An unencrypted store of format 1 is refused
//! until [`Datastore::upgrade`] signed it in place (`upgrade.rs`,
//! docs/upgrade.md). Every size a manifest states is bounded before use
//! (`limits.rs`).
//!
//! # Encryption (optional, per datastore)
//!
//! An encrypted datastore ([`Datastore::create_encrypted`],
//! [`Datastore::open_with_key`]) has random master keys and keyed
//! hashing ([`crypto`]), stored only wrapped in key objects under a key
//! file or an Argon2id passphrase ([`keys`]). Blobs are compressed, then
//! sealed with XChaCha20-Poly1305 (header and chunk id as associated data;
//! the AEAD is `seal.rs`, the blob's seal [`blob`]); chunk ids are BLAKE3
//! keyed with a secret id key; pack index trailers are keyed MACs;
//! manifests are sealed whole (their path still shows vm and time; the
//! seal is in `manifest.rs`).
//! A wrong key is refused at open; a tampered object is an error naming
//! it. Sync between stores of different schemes re-encodes
//! (`reencode.rs`). See `docs/encryption.md`.
//!
//! Encryption and the backend are independent: an encrypted datastore
//! lives on an object store as well ([`Datastore::create_encrypted_on`],
//! [`Datastore::open_on_with_key`]), its key objects next to its data,
//! and is locked with leases like any other there.
//!
//! # Invariants
//!
//! - Write order: a pack is durable before its index, and every pack and
//!   index of a point is durable before its manifest, which is written
//!   atomically (temporary file, fsync, link into place, directory fsync).
//!   A crash leaves no visible point, only garbage for gc.
//! - A chunk enters the shared catalog only once its pack and index are
//!   durable, so no writer references a chunk that may never exist.
//! - Pack ids are random: concurrent writers, in one process or many,
//!   never write the same file.
//! - Point writers, syncs, restores and verifies hold the store shared;
//!   gc holds it exclusive and fails at once if it cannot: an flock on
//!   `locks/gc.lock` locally, renewed lease objects on object stores
//!   (the `lock` module and docs/datastore-format.md give the protocol).
//!   gc also never touches a pack younger than its grace period, and
//!   after sweeping writes a new
//!   gc epoch so other processes reload their catalog before writing.
//! - On a local directory nothing is written unless the store's `tmp/`
//!   and the object's top directory exist (an unmounted disk is not
//!   silently replaced by an empty store), and a new directory is
//!   followed by an fsync of its parent.
//! - gc on an object store checks before each delete that its lease is
//!   still its own and no writer holds the store; a point writer renews
//!   its lease at commit and refuses to commit when gc deleted packs
//!   since it began or a pack it deduplicated against is gone.
//! - Every read of a blob checks its CRC, and every chunk read for a
//!   restore or verify is re-hashed (keyed in an encrypted store, after its
//!   seal opened): corrupt bytes give an error naming the chunk, never
//!   wrong data or a panic.
//! - An encrypted store never holds a master key, key file or passphrase
//!   in the clear, and never mixes schemes: an unencrypted blob or manifest
//!   in it (or a sealed one in a plain store) is an error.
//!
//! # Modules
//!
//! Lower modules never use higher ones (no import cycles), from the bottom:
//!
//! - leaves: `error`, `limits` (chunk and manifest sizes), [`chunk`],
//!   `seal` (the AEAD), `progress`;
//! - [`crypto`] (master keys, keyed hashing), [`backend`] (with
//!   [`ObjectStats`]), [`object`], `layout`, `lock`;
//! - [`blob`] (the blob codec, sealing included), [`index`], [`pack`],
//!   `manifest` (its seal and MAC included), [`keys`], `auth` (the store
//!   key of an unencrypted store), `catalog`;
//! - `datastore`: the [`Datastore`] handle (open, create, encrypted
//!   stores, reads, its scheme);
//! - above it, each adding `impl Datastore` blocks or types of their own:
//!   `packer`, `writer` ([`Datastore::begin_point`]), `gc`, `prune`,
//!   `upgrade` (format 1 to 2),
//!   `restore`, `verify`, `reencode`, `sync`, `template` (a point's
//!   manifest kept under a name, a gc root; copied like a point),
//!   [`transfer`] (a copy to a
//!   store open elsewhere, through a [`transfer::PointReceiver`]);
//! - `fuzz`: the entry points of the fuzz targets in `fuzz/` (hidden, not
//!   an API).
//!
//! All I/O on the store goes through [`backend::Backend`]; a datastore
//! opens on any backend with [`Datastore::open_on`] and friends. Restore,
//! sync and sampled verify read the chunks of one pack in batches
//! ([`backend::Backend::get_ranges`]) and several packs in parallel.

mod auth;
pub mod backend;
pub mod blob;
mod catalog;
pub mod chunk;
pub mod crypto;
mod datastore;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod gc;
pub mod index;
pub mod keys;
mod layout;
mod limits;
mod lock;
mod manifest;
pub mod object;
mod onto;
pub mod pack;
mod packer;
mod progress;
mod prune;
mod reencode;
mod repair;
mod restore;
mod seal;
mod sync;
mod template;
pub mod transfer;
mod upgrade;
mod verify;
mod writer;

pub use backend::ObjectStats;
pub use chunk::ChunkId;
pub use datastore::{Datastore, StoreOptions, StoreStats, SyncStats};
pub use error::StoreError;
pub use gc::{GcOptions, GcReport};
pub use keys::{KdfParams, KeySource, generate_key_file};
pub use layout::MARKER_FILE;
pub use limits::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, valid_chunk_size};
pub use manifest::{Consistency, DiskEntry, Manifest, PointId, PointMeta, valid_vm_name};
pub use object::{ObjectBackend, ObjectService, ObjectStoreConfig};
pub use onto::{OntoBase, OntoPlan, OntoStats, replay_journal};
pub use pack::PackId;
pub use progress::{CountingProgress, Progress};
pub use prune::PruneReport;
pub use repair::RepairReport;
pub use restore::RestoreStats;
pub use template::{Template, template_path, valid_template_name};
pub use upgrade::UpgradeReport;
pub use verify::{Problem, VerifyReport};
pub use writer::{DiskWriteOptions, DiskWriteStats, PointWriter};

#[cfg(test)]
mod tests;
