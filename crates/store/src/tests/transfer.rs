//! Copies to a store open elsewhere ([`crate::transfer`]): the receiver
//! here is a second store behind the wire form of each call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::transfer::{Batch, Begin, PointReceiver, Received};

/// The receiving half over the wire form, as an agent serves it; fails
/// every batch from `fail_after` on (a cut link).
struct Wire {
    dst: Datastore,
    fail_after: usize,
    batches: AtomicUsize,
    received: Mutex<Received>,
    /// Bytes on the wire, batches only.
    wire_bytes: AtomicUsize,
}

impl Wire {
    fn new(dst: &Datastore) -> Wire {
        Wire::cut_after(dst, usize::MAX)
    }

    fn cut_after(dst: &Datastore, n: usize) -> Wire {
        Wire {
            dst: dst.clone(),
            fail_after: n,
            batches: AtomicUsize::new(0),
            received: Mutex::default(),
            wire_bytes: AtomicUsize::new(0),
        }
    }
}

impl PointReceiver for Wire {
    fn begin(&self, point: &PointId) -> Result<Begin, StoreError> {
        self.dst.receive_begin(point)
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        Ok(self.dst.receive_missing(ids))
    }
    fn send(&self, batch: Batch) -> Result<(), StoreError> {
        if self.batches.fetch_add(1, Ordering::SeqCst) >= self.fail_after {
            return Err(StoreError::io(
                "send a batch to",
                "peer",
                std::io::Error::other("link down"),
            ));
        }
        let bytes = batch.encode();
        self.wire_bytes.fetch_add(bytes.len(), Ordering::SeqCst);
        let got = self.dst.receive_batch(&Batch::decode(&bytes).unwrap())?;
        let mut r = self.received.lock().unwrap();
        r.chunks += got.chunks;
        r.bytes += got.bytes;
        Ok(())
    }
    fn finish(&self, point: &PointId, manifest: &Manifest) -> Result<bool, StoreError> {
        let json = serde_json::to_vec(manifest).unwrap();
        self.dst
            .receive_manifest(point, &serde_json::from_slice(&json).unwrap())
    }
}

#[test]
fn a_point_sent_over_the_wire_restores_identically_and_the_next_sends_only_changes() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 24 << 20, 41);
    let (m1, _) = backup(&f.ds, "vm", &image, opts());
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();
    let wire = Wire::new(&dst);
    let s1 = f.ds.send_point(&m1.id, &wire, &()).unwrap();
    assert!(s1.chunks_copied > 0 && !s1.already_present, "{s1:?}");
    assert_eq!(wire.received.lock().unwrap().chunks, s1.chunks_copied);
    assert_eq!(dst.load_manifest(&m1.id).unwrap(), m1);
    let out = f.work.join("out.img");
    dst.restore_disk(&m1.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
    assert!(f.ds.send_point(&m1.id, &wire, &()).unwrap().already_present);

    // 2 % of the disk changed: about 2 % of it goes on the wire.
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut changed = 0u64;
    while changed < (24 << 20) / 50 {
        let at = rng.random_range(0..(24u64 << 20) - 4096);
        let mut b = vec![0u8; 4096];
        rng.fill_bytes(&mut b);
        file.write_all_at(&b, at).unwrap();
        changed += 4096;
    }
    let (m2, _) = backup(&f.ds, "vm", &image, opts());
    let before = wire.wire_bytes.load(Ordering::SeqCst);
    let s2 = f.ds.send_point(&m2.id, &wire, &()).unwrap();
    let sent = wire.wire_bytes.load(Ordering::SeqCst) - before;
    assert!(s2.chunks_skipped > 0, "{s2:?}");
    // Each 4 KiB write dirties a 64 KiB chunk: at most 16× the change
    // (and its index chunk) travels, far less than the disk.
    assert!(
        sent < (24 << 20) / 3,
        "{sent} bytes sent for {changed} changed"
    );
    dst.restore_disk(&m2.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
    assert!(dst.verify(&()).unwrap().ok());
}

#[test]
fn a_cut_copy_resumes_at_the_batch_it_was_in() {
    let f = fixture();
    let image = f.work.join("disk.img");
    // Random data: about 40 MiB stored, three batches.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut data = vec![0u8; 40 << 20];
    rng.fill_bytes(&mut data);
    fs::write(&image, &data).unwrap();
    let (m, _) = backup(&f.ds, "vm", &image, opts());
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();

    let cut = Wire::cut_after(&dst, 1);
    let e = f.ds.send_point(&m.id, &cut, &()).unwrap_err();
    assert!(chain(&e).contains("link down"), "{}", chain(&e));
    // Nothing visible, but the first batch is kept.
    assert!(!dst.has_point(&m.id).unwrap());
    let first = cut.received.lock().unwrap().chunks;
    assert!(first > 0);

    let wire = Wire::new(&dst);
    let s = f.ds.send_point(&m.id, &wire, &()).unwrap();
    let again = wire.received.lock().unwrap().chunks;
    // The whole point is `full` chunks: the resumed copy sent only what
    // the cut one had not.
    let full =
        f.ds.send_point(
            &m.id,
            &Wire::new(&Datastore::open_or_create(&f.work.join("d2")).unwrap()),
            &(),
        )
        .unwrap()
        .chunks_copied;
    assert_eq!(first + again, full, "{s:?}");
    assert_eq!(s.chunks_copied, again);
    let out = f.work.join("out.img");
    dst.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
}

#[test]
fn a_receiver_refuses_damaged_blobs_a_manifest_ahead_of_its_chunks_and_another_scheme() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 9);
    let (m, _) = backup(&f.ds, "vm", &image, opts());
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();

    // A manifest before its chunks is refused, naming a missing chunk.
    let e = dst.receive_manifest(&m.id, &m).unwrap_err();
    assert!(chain(&e).contains("not copied yet"), "{}", chain(&e));
    assert!(!dst.has_point(&m.id).unwrap());

    // A flipped byte in a blob: the whole batch is refused.
    let (id, loc) = some_chunk(&f.ds, &m);
    let mut blob = f.ds.read_blob(&loc).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x40;
    let good = f.ds.read_stored(&m.disks[0].index[0]).unwrap().0;
    let batch = Batch {
        blobs: vec![
            (m.disks[0].index[0], crate::blob::BlobKind::Index, good),
            (id, crate::blob::BlobKind::Data, blob),
        ],
    };
    let e = dst.receive_batch(&batch).unwrap_err();
    assert!(
        chain(&e).contains(&format!("received chunk {id}")),
        "{}",
        chain(&e)
    );
    assert_eq!(
        dst.receive_missing(&[m.disks[0].index[0], id]),
        [true, true]
    );
    // A cut-off wire form is an error, not a panic.
    let wire = batch.encode();
    assert!(Batch::decode(&wire[..wire.len() - 3]).is_err());
    assert!(
        Batch::decode(&[7; 40])
            .unwrap_err()
            .contains("unknown blob kind")
    );

    // An encrypted destination does not take blobs as stored.
    let key = f.work.join("key");
    generate_key_file(&key).unwrap();
    let enc = Datastore::create_encrypted(
        &f.work.join("enc"),
        &KeySource::File(key),
        StoreOptions::default(),
    )
    .unwrap();
    let e = f.ds.send_point(&m.id, &Wire::new(&enc), &()).unwrap_err();
    assert!(
        chain(&e).contains("unencrypted") && chain(&e).contains("re-encodes"),
        "{}",
        chain(&e)
    );
    assert!(!enc.has_point(&m.id).unwrap());
}
