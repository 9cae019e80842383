//! Restoring onto an existing disk: only what differs is written, read or
//! not as the disk's state is known, in place or through a journal.

use super::*;
use crate::onto::{OntoBase, replay_journal};

/// Change `n` chunks of `image` (every `step`-th, from chunk 1) and
/// zero chunk 39 (random data in [`make_image`]): `n + 1` chunks differ.
fn change(image: &Path, n: u64, step: u64) {
    let f = fs::OpenOptions::new().write(true).open(image).unwrap();
    for k in 0..n {
        let at = (1 + k * step) * u64::from(CS);
        assert_ne!(1 + k * step, 39);
        f.write_all_at(&vec![(k % 250) as u8 + 1; CS as usize], at)
            .unwrap();
    }
    f.write_all_at(&vec![0u8; CS as usize], 39 * u64::from(CS))
        .unwrap();
}

#[test]
fn a_known_base_writes_only_the_changed_chunks_without_reading() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 8 << 20, 11);
    let (old, _) = backup(&f.ds, "pbx1", &image, opts());
    change(&image, 5, 7);
    let (new, _) = backup(&f.ds, "pbx1", &image, opts());
    // A disk holding the old point.
    let dest = f.work.join("replica.img");
    f.ds.restore_disk(&old.id, "data", &dest, &()).unwrap();
    let plan =
        f.ds.plan_onto(
            &new.id,
            "data",
            &dest,
            &OntoBase::Point(old.id.clone()),
            &(),
        )
        .unwrap();
    let s = plan.stats().clone();
    assert!(s.known && s.bytes_read == 0, "{s:?}");
    assert_eq!(s.chunks_written, 6, "{s:?}");
    f.ds.apply_onto(&plan, &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn an_unknown_disk_is_read_and_only_what_differs_is_written() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 8 << 20, 12);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    // The old disk: the point, then writes after it (and it grew).
    let dest = f.work.join("home.img");
    fs::copy(&image, &dest).unwrap();
    change(&dest, 4, 9);
    fs::OpenOptions::new()
        .write(true)
        .open(&dest)
        .unwrap()
        .set_len((8 << 20) + 4096)
        .unwrap();
    let plan =
        f.ds.plan_onto(&m.id, "data", &dest, &OntoBase::Unknown, &())
            .unwrap();
    let s = plan.stats().clone();
    assert!(!s.known && s.bytes_read > 0, "{s:?}");
    assert_eq!(s.chunks_written, 5, "{s:?}");
    f.ds.apply_onto(&plan, &dest, &()).unwrap();
    assert_same(&image, &dest);
    // Nothing differs any more: nothing to write.
    let again =
        f.ds.plan_onto(&m.id, "data", &dest, &OntoBase::Unknown, &())
            .unwrap();
    assert_eq!(again.stats().chunks_written, 0);
}

#[test]
fn a_base_of_another_shape_is_read_instead() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 13);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let dest = f.work.join("other.img");
    // Of a length direct I/O cannot read whole: its tail is read buffered.
    make_image(&dest, (2 << 20) + 123, 14);
    let plan =
        f.ds.plan_onto(&m.id, "data", &dest, &OntoBase::Point(m.id.clone()), &())
            .unwrap();
    assert!(!plan.stats().known, "{:?}", plan.stats());
    f.ds.apply_onto(&plan, &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn a_journal_replays_whole_or_not_at_all() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 8 << 20, 15);
    let (old, _) = backup(&f.ds, "pbx1", &image, opts());
    change(&image, 6, 5);
    let (new, _) = backup(&f.ds, "pbx1", &image, opts());
    let dest = f.work.join("replica.img");
    f.ds.restore_disk(&old.id, "data", &dest, &()).unwrap();
    let before = fs::read(&dest).unwrap();
    let plan =
        f.ds.plan_onto(
            &new.id,
            "data",
            &dest,
            &OntoBase::Point(old.id.clone()),
            &(),
        )
        .unwrap();
    let journal = f.work.join("replica.journal");
    f.ds.stage_onto(&plan, &journal, &()).unwrap();
    // Staging wrote nothing into the disk.
    assert!(fs::read(&dest).unwrap() == before);
    // A journal cut short (a crash while staging) is refused, and the
    // disk stays at the old point.
    let whole = fs::read(&journal).unwrap();
    let cut = f.work.join("cut.journal");
    fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let e = replay_journal(&cut, &dest).unwrap_err();
    assert!(chain(&e).contains("incomplete"), "{}", chain(&e));
    assert!(fs::read(&dest).unwrap() == before);
    // Replayed (twice, as after a crash while replaying): the new point.
    replay_journal(&journal, &dest).unwrap();
    replay_journal(&journal, &dest).unwrap();
    assert_same(&image, &dest);
}
