//! Hardening: forged and planted objects, bounded allocation, gc racing
//! writers.

use super::*;

/// Write `m` with other disks as a new point of its vm one second later,
/// checksummed (and authenticated) like a genuine one: only its stated
/// numbers are forged.
fn plant_forged(ds: &Datastore, m: &Manifest, disks: Vec<DiskEntry>) -> PointId {
    let time = m.time + chrono::Duration::seconds(1);
    let id = PointId::new(&m.vm, time).unwrap();
    let forged = Manifest {
        id: id.clone(),
        time,
        ..m.clone()
    }
    .with_disks(disks);
    let bytes = ds.encode_manifest(&forged).unwrap();
    ds.backend().put_new(&id.manifest_path(), &bytes).unwrap();
    id
}

#[test]
fn hardening_a_manifest_claiming_2_40_chunks_is_refused_by_gc_verify_and_restore() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 3 << 20, 1);
    let (m, _) = backup(&f.ds, "vm1", &image, opts());
    let mut disk = m.disks[0].clone();
    // 2^40 chunks described by 257 index entries: 32 TiB of ids to
    // allocate if the numbers were trusted.
    disk.chunk_size = CS;
    disk.chunks = 1 << 40;
    disk.size = (1u64 << 40) * u64::from(CS);
    disk.ids_per_index_chunk = u32::MAX;
    disk.index = vec![ChunkId::ZERO; disk.chunks.div_ceil(u64::from(u32::MAX)) as usize];
    let forged = plant_forged(&f.ds, &m, vec![disk.clone()]);

    let e = chain(&f.ds.gc(GcOptions::default(), &()).unwrap_err());
    assert!(e.contains(&forged.manifest_path()) && e.contains("limit"), "{e}");
    let report = f.ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&forged.manifest_path()) && p.message.contains("limit")),
        "{:?}",
        report.problems
    );
    let e = chain(
        &f.ds
            .restore_disk(&forged, "data", &f.work.join("out.img"), &())
            .unwrap_err(),
    );
    assert!(e.contains("limit"), "{e}");
    assert!(!f.work.join("out.img").exists());

    // Within the index rule but past the size limits: refused too.
    let mut big = m.disks[0].clone();
    big.chunk_size = 4 << 20;
    big.size = 1 << 50;
    big.chunks = big.size.div_ceil(4 << 20);
    big.index = vec![ChunkId::ZERO; big.chunks.div_ceil(2048) as usize];
    let forged = plant_forged(
        &f.ds,
        &Manifest {
            time: m.time + chrono::Duration::seconds(5),
            ..m.clone()
        },
        vec![big],
    );
    let e = chain(&f.ds.load_manifest(&forged).unwrap_err());
    assert!(e.contains("bytes: more than the limit"), "{e}");
    // The genuine point is untouched and restores.
    f.ds.restore_disk(&m.id, "data", &f.work.join("ok.img"), &())
        .unwrap();
    assert_same(&image, &f.work.join("ok.img"));
}
