//! Entry points of the fuzz targets (`fuzz/` at the repository root), not
//! an API. Each reads arbitrary bytes as the store reads them from a
//! datastore (blobs, pack indexes, manifests, key objects) and must only
//! ever return an error, never panic or allocate beyond the format's
//! bounds. Where a checksum would stop the fuzzer at the door, the input
//! is read once as it is and once with its checksum made right, so the
//! checks behind it are reached too.

use crate::auth::StoreAuth;
use crate::blob::{self, BlobKind, MAX_RAW_LEN};
use crate::chunk::ChunkId;
use crate::crypto::{Crypto, MasterKeys};
use crate::manifest::{Manifest, PointId};
use crate::pack;

/// The fixed master keys the fuzz targets and their seeds use.
pub fn crypto() -> Crypto {
    Crypto::new(MasterKeys::from_bytes(&[7u8; 96]).expect("96 bytes"))
}

/// The fixed store key of a plain (authenticated) datastore the fuzz
/// targets use.
fn store_auth() -> StoreAuth {
    StoreAuth::from_key(&[9u8; 32])
}

/// A blob as a pack holds it: `input` is the chunk id (32 bytes) then the
/// blob. Read as data and as index, plain and sealed, as it is and with
/// its CRC made right (so decompression is reached); whatever decodes
/// encodes back to the same plaintext.
pub fn blob(input: &[u8]) {
    let Some((id, bytes)) = input.split_first_chunk::<32>() else {
        return;
    };
    let id = ChunkId(*id);
    read_blob(&id, bytes);
    if bytes.len() >= blob::BLOB_HEADER_SIZE {
        let mut fixed = bytes.to_vec();
        let crc = crc32fast::hash(&fixed[blob::BLOB_HEADER_SIZE..]);
        fixed[16..20].copy_from_slice(&crc.to_le_bytes());
        read_blob(&id, &fixed);
    }
}

fn read_blob(id: &ChunkId, bytes: &[u8]) {
    let id = *id;
    let crypto = crypto();
    let header = blob::BlobHeader::parse(bytes);
    let _ = blob::check(bytes);
    for kind in [BlobKind::Data, BlobKind::Index] {
        if let Ok(data) = blob::decode(bytes, kind, None) {
            assert!(data.len() <= MAX_RAW_LEN);
            let again = blob::encode(kind, &data, blob::DEFAULT_LEVEL);
            assert_eq!(blob::decode(&again, kind, None).as_deref(), Ok(&data[..]));
        }
        let _ = blob::decode(bytes, kind, Some(&id));
        let _ = blob::decode_with(bytes, kind, &id, Some(&crypto));
        if let Ok(h) = &header {
            let mut out = vec![0u8; h.raw_len()];
            let _ = blob::decode_into(bytes, kind, Some(&id), &mut out);
            let _ = blob::decode_into_with(bytes, kind, &id, Some(&crypto), &mut out);
        }
    }
}

/// A pack index file, plain and keyed; what parses encodes back to the
/// same entries. The first bytes are also read as a pack header.
pub fn pack_index(bytes: &[u8]) {
    let _ = pack::check_pack_header(bytes);
    let crypto = crypto();
    let auth = store_auth();
    for key in [None, Some(crypto.index_key()), Some(auth.index_key())] {
        if let Ok(index) = pack::decode_index_keyed(bytes, key) {
            let again = pack::encode_index_keyed(&index.pack, &index.entries, key);
            let back = pack::decode_index_keyed(&again, key).expect("re-encoded index");
            assert!(back.checksum_ok);
            assert_eq!(back.entries, index.entries);
        }
    }
}

/// A manifest object, plain, authenticated (a plain store's MAC) and
/// sealed. A manifest that parses is read again with its checksum made
/// right, then what readers compute from a valid one is computed, and it
/// seals, and is authenticated, and opens back to itself either way.
pub fn manifest(bytes: &[u8]) {
    let crypto = crypto();
    let auth = store_auth();
    let _ = Manifest::from_bytes(bytes);
    let path = "manifests/vm/20261126T101500.123Z.json";
    let _ = Manifest::from_object(path, bytes, Some(&crypto), None);
    let _ = Manifest::from_object(path, bytes, None, Some(&auth));
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = text.parse::<PointId>();
        let _ = PointId::from_manifest_path(text);
    }
    let Ok(mut m) = serde_json::from_slice::<Manifest>(bytes) else {
        return;
    };
    m.checksum = m.compute_checksum();
    let Ok(fixed) = m.to_bytes() else {
        return;
    };
    let Ok(m) = Manifest::from_bytes(&fixed) else {
        return;
    };
    for d in &m.disks {
        for i in 0..d.index.len() {
            assert!(d.ids_in_index_chunk(i) <= d.ids_per_index_chunk as usize);
        }
        if d.chunks > 0 {
            let _ = d.chunk_len(0);
            assert!(d.chunk_len(d.chunks - 1) > 0);
        }
    }
    let path = m.id.manifest_path();
    assert_eq!(PointId::from_manifest_path(&path).as_ref(), Some(&m.id));
    let sealed = m
        .to_object(Some(&crypto), None)
        .expect("a valid manifest seals");
    assert_eq!(
        Manifest::from_object(&path, &sealed, Some(&crypto), None).as_ref(),
        Ok(&m)
    );
    let signed = m
        .to_object(None, Some(&auth))
        .expect("a valid manifest is signed");
    assert_eq!(
        Manifest::from_object(&path, &signed, None, Some(&auth)),
        Ok(m)
    );
}

/// A key object as `keys/<id>.json` holds it (see `keys.rs`): whether
/// it opened with the fuzz passphrase.
pub fn key_object(bytes: &[u8]) -> Option<bool> {
    crate::keys::fuzz_open(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{Consistency, Datastore, DiskWriteOptions, KdfParams, KeySource, PointMeta};

    fn files(root: &Path, sub: &str, ext: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![root.join(sub)];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == ext) {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn write_point(store: &Datastore, img: &Path) {
        let meta = PointMeta {
            vm: "pbx1".into(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({"cpus": 2, "memory_mb": 512}),
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
        };
        let mut w = store.begin_point(meta).unwrap();
        w.write_disk("data", img, DiskWriteOptions::default(), &())
            .unwrap();
        w.commit().unwrap();
    }

    /// Objects of a datastore written by the store code, plain and
    /// encrypted, go through the fuzz entry points whole (checksums,
    /// seals and the key object's passphrase all right). With
    /// `STANDBY_FUZZ_SEEDS=<repo>/fuzz/corpus` they are written as the
    /// seeds of the store's fuzz targets.
    #[test]
    fn real_objects_pass_the_fuzz_entry_points() {
        let seeds = std::env::var_os("STANDBY_FUZZ_SEEDS").map(PathBuf::from);
        let seed = |target: &str, name: &str, bytes: &[u8]| {
            if let Some(dir) = &seeds {
                fs::create_dir_all(dir.join(target)).unwrap();
                fs::write(dir.join(target).join(name), bytes).unwrap();
            }
        };
        let tmp = tempfile::tempdir().unwrap();
        // A small disk: text, zeros, text again; compresses to little.
        let text: Vec<u8> = b"standby fuzz seed disk, compressible text\n"
            .iter()
            .copied()
            .cycle()
            .take(64 << 10)
            .collect();
        let mut img = text.clone();
        img.extend(vec![0u8; 64 << 10]);
        img.extend(&text[..1000]);
        let img_path = tmp.path().join("disk.img");
        fs::write(&img_path, img).unwrap();

        let plain = tmp.path().join("plain");
        write_point(&Datastore::open_or_create(&plain).unwrap(), &img_path);
        for (i, m) in files(&plain, "manifests", "json").iter().enumerate() {
            let bytes = fs::read(m).unwrap();
            assert!(Manifest::from_bytes(&bytes).is_ok());
            manifest(&bytes);
            seed("manifest", &format!("plain-{i}.json"), &bytes);
        }
        let mut blobs = 0;
        for (i, idx) in files(&plain, "packs", "idx").iter().enumerate() {
            let bytes = fs::read(idx).unwrap();
            pack_index(&bytes);
            seed("pack_index", &format!("plain-{i}.idx"), &bytes);
            let index = pack::decode_index(&bytes).unwrap();
            let packed = fs::read(idx.with_extension("pack")).unwrap();
            for (j, e) in index.entries.iter().enumerate() {
                let at = e.offset as usize;
                let mut input = e.id.0.to_vec();
                input.extend(&packed[at..at + e.len as usize]);
                assert!(blob::decode(&input[32..], e.kind, Some(&e.id)).is_ok());
                super::blob(&input);
                seed("blob", &format!("plain-{i}-{j}.blob"), &input);
                blobs += 1;
            }
        }
        assert!(blobs >= 2, "{blobs} blobs");

        // Encrypted with passphrase "fuzz" at the smallest Argon2id cost,
        // which the key-object entry point opens.
        let sealed = tmp.path().join("sealed");
        let kdf = KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        };
        let key = KeySource::Passphrase("fuzz".into());
        let store =
            Datastore::create_encrypted_with_kdf(&sealed, &key, kdf, Default::default()).unwrap();
        write_point(&store, &img_path);
        for (i, m) in files(&sealed, "manifests", "json").iter().enumerate() {
            let bytes = fs::read(m).unwrap();
            manifest(&bytes);
            seed("manifest", &format!("sealed-{i}.json"), &bytes);
        }
        for (i, idx) in files(&sealed, "packs", "idx").iter().enumerate() {
            let bytes = fs::read(idx).unwrap();
            pack_index(&bytes);
            seed("pack_index", &format!("keyed-{i}.idx"), &bytes);
        }
        let keys = files(&sealed, "keys", "json");
        assert!(!keys.is_empty());
        for (i, k) in keys.iter().enumerate() {
            let bytes = fs::read(k).unwrap();
            assert_eq!(key_object(&bytes), Some(true), "the key object opens");
            seed("key_object", &format!("passphrase-{i}.json"), &bytes);
        }

        // Blobs sealed with the entry points' own keys, so the seal opens.
        let crypto = crypto();
        for (kind, name, data) in [
            (
                BlobKind::Data,
                "sealed-data",
                &b"a small sealed data chunk"[..],
            ),
            (BlobKind::Index, "sealed-index", &[0x11u8; 64][..]),
        ] {
            let id = crypto.hash(data);
            let mut input = id.0.to_vec();
            input.extend(blob::encode_with(kind, data, 1, &id, Some(&crypto)));
            assert_eq!(
                blob::decode_with(&input[32..], kind, &id, Some(&crypto)).as_deref(),
                Ok(data)
            );
            super::blob(&input);
            seed("blob", &format!("{name}.blob"), &input);
        }
    }
}
