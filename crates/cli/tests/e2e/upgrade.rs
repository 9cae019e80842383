//! Upgrades: an installation an earlier standby made opens with this one.
//!
//! `tests/fixtures/upgrade/<version>/` holds what the standby of
//! `<version>` left behind (its configuration, its SQLite `state.db`, its
//! admin token, a plain and an encrypted datastore with a full and an
//! incremental point of one VM disk), made by `scripts/make-upgrade-fixture`
//! (the ignored test [`make_upgrade_fixture`] below, run by the tree of
//! that version). The disks themselves are not kept: [`fixture_disk`]
//! regenerates them from the seed in `fixture.json`, whose BLAKE3 hashes
//! say the generator still makes the same bytes. Never change
//! `fixture_disk`; a new kind of disk gets a new generator.
//!
//! Every fixture directory is checked by today's binaries: the controller
//! starts on it (migrating the database in place when the schema grew),
//! lists the points, restores both byte for byte from both datastores,
//! verifies the datastores, takes a new point on top of the old chain and
//! restores that too.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Lab, free_port};

/// The VM's disk: 320 KiB, five chunks of 64 KiB of different kinds.
const DISK_SIZE: usize = 5 * CHUNK;
const CHUNK: usize = 64 * 1024;
/// The seed of the fixtures this tree makes.
const SEED: u64 = 0x5354_414e_4442_5931;
/// The placeholder address in a fixture's configuration.
const FIXTURE_LISTEN: &str = "127.0.0.1:7780";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade")
}

/// The disk of generation `generation` (1, 2, ...) made from `seed`:
/// chunk 0 text (compresses to almost nothing), chunk 1 4 KiB of noise
/// then text, chunk 2 zeros (a hole, never stored), chunk 3 text naming
/// the generation (so each generation changes it), chunk 4 2 KiB of noise
/// of the generation then zeros. Deterministic: fixtures keep no disk.
fn fixture_disk(seed: u64, generation: u64) -> Vec<u8> {
    let mut disk = vec![0u8; DISK_SIZE];
    let text = |out: &mut [u8], what: &str| {
        let line = format!("standby upgrade fixture, seed {seed:016x}, {what}\n");
        for (i, b) in out.iter_mut().enumerate() {
            *b = line.as_bytes()[i % line.len()];
        }
    };
    let noise = |out: &mut [u8], mut x: u64| {
        for b in out.iter_mut() {
            // xorshift64; a zero state would stay zero.
            x |= 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    };
    text(&mut disk[..CHUNK], "chunk 0");
    noise(&mut disk[CHUNK..CHUNK + 4096], seed);
    text(&mut disk[CHUNK + 4096..2 * CHUNK], "chunk 1");
    text(
        &mut disk[3 * CHUNK..4 * CHUNK],
        &format!("chunk 3, generation {generation}"),
    );
    noise(
        &mut disk[4 * CHUNK..4 * CHUNK + 2048],
        seed ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    disk
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The configuration of a fixture: two sites, a plain datastore at site 1
/// and an encrypted one at site 2, one VM (never run: its disk is a file
/// written by the test) in one group copying to both.
fn fixture_config(listen: &str) -> String {
    format!(
        r#"# An upgrade fixture (see README.md beside this file).
[controller]
listen = "{listen}"
data_dir = "controller"

[sites.site1]
[sites.site2]

[hosts.site1-host1]
site = "site1"
driver = "process"
disk_dir = "site1/disks"

[hosts.site2-host1]
site = "site2"
driver = "process"
disk_dir = "site2/disks"

[datastores.site1-store]
site = "site1"
path = "site1/store"

[datastores.site2-store]
site = "site2"
path = "site2/store"
[datastores.site2-store.encryption]
key_file = "site2.key"

[vms.pbx1]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "5s"
command = "sleep"
args = ["600"]
[[vms.pbx1.disks]]
name = "data"
size = "{DISK_SIZE}"

[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
[groups.gold.retention]
keep_last = 10
"#
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Make the fixture of this tree in `STANDBY_UPGRADE_FIXTURE_OUT` (see
/// `scripts/make-upgrade-fixture`).
#[test]
#[ignore = "makes a fixture: scripts/make-upgrade-fixture"]
fn make_upgrade_fixture() {
    let out = PathBuf::from(
        std::env::var("STANDBY_UPGRADE_FIXTURE_OUT")
            .expect("STANDBY_UPGRADE_FIXTURE_OUT names the directory to make"),
    );
    assert!(!out.exists(), "{} exists already", out.display());
    let dir = tempfile::Builder::new()
        .prefix("standby-fixture-")
        .tempdir()
        .unwrap();
    let api = free_port();
    std::fs::write(
        dir.path().join("standby.toml"),
        fixture_config(&format!("127.0.0.1:{api}")),
    )
    .unwrap();
    let keygen = std::process::Command::new(crate::harness::STANDBY)
        .args(["store", "keygen"])
        .arg(dir.path().join("site2.key"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let disk = dir.path().join("site1/disks/pbx1/data.img");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();

    let mut lab = Lab::from_dir(dir, api);
    let mut points = Vec::new();
    for generation in [1, 2] {
        let bytes = fixture_disk(SEED, generation);
        std::fs::write(&disk, &bytes).unwrap();
        let run = lab.json(&["protect", "run", "gold"]);
        let vm = &run["vms"][0];
        assert_eq!(vm["synced"].as_array().unwrap().len(), 1, "{run:#}");
        points.push(json!({
            "id": vm["point"],
            "generation": generation,
            "blake3": blake3_hex(&bytes),
        }));
    }
    let version = lab.run(&["--version"]);
    let version = String::from_utf8(version.stdout)
        .unwrap()
        .trim()
        .to_string();
    lab.stop_server();
    let controller = lab.path("controller");
    // The stopped controller checkpointed its WAL into state.db: the file
    // alone is its database.
    let wal = std::fs::metadata(controller.join("state.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the stopped controller left frames in its WAL");

    std::fs::create_dir_all(out.join("controller")).unwrap();
    std::fs::write(out.join("standby.toml"), fixture_config(FIXTURE_LISTEN)).unwrap();
    std::fs::copy(lab.path("site2.key"), out.join("site2.key")).unwrap();
    for f in ["state.db", "admin.token"] {
        std::fs::copy(controller.join(f), out.join("controller").join(f)).unwrap();
    }
    for store in ["site1/store", "site2/store"] {
        copy_dir(&lab.path(store), &out.join(store));
    }
    let marker: Value =
        serde_json::from_slice(&std::fs::read(out.join("site1/store/standby-store.json")).unwrap())
            .unwrap();
    let fixture = json!({
        "standby": version,
        "datastore_format": marker["format"],
        "seed": format!("{SEED:016x}"),
        "disk_size": DISK_SIZE,
        "points": points,
    });
    std::fs::write(
        out.join("fixture.json"),
        serde_json::to_string_pretty(&fixture).unwrap() + "\n",
    )
    .unwrap();
}

/// The fixture directories, oldest version first.
fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("fixture.json").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixture in {}", fixtures().display());
    dirs
}

/// A copy of fixture `src` in a temporary directory with its controller
/// started; and the fixture's description.
/// A copy of the fixture `src` with its datastores upgraded
/// (`standby store upgrade`, as docs/upgrade.md asks before the new
/// controller starts), and the controller started on it.
fn open_fixture(src: &Path) -> (Lab, Value) {
    open_fixture_with(src, true)
}

fn open_fixture_with(src: &Path, upgrade: bool) -> (Lab, Value) {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(src.join("fixture.json")).unwrap()).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("standby-upgrade-")
        .tempdir()
        .unwrap();
    copy_dir(src, dir.path());
    // Git keeps no file modes but the executable bit: the key file is the
    // operator's, 0600 as `store keygen` wrote it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("site2.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let api = free_port();
    let cfg = dir.path().join("standby.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(FIXTURE_LISTEN), "{}", cfg.display());
    std::fs::write(
        &cfg,
        text.replace(FIXTURE_LISTEN, &format!("127.0.0.1:{api}")),
    )
    .unwrap();
    if upgrade {
        for store in ["site1-store", "site2-store"] {
            let out = upgrade_store(&cfg, store);
            assert!(
                out.status.success(),
                "store upgrade {store}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    (Lab::from_dir(dir, api), fixture)
}

/// `standby store upgrade STORE` with the configuration `cfg`, offline.
fn upgrade_store(cfg: &Path, store: &str) -> std::process::Output {
    std::process::Command::new(crate::harness::STANDBY)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--json",
            "store",
            "upgrade",
            store,
        ])
        .output()
        .unwrap()
}

/// The point ids of pbx1 with their copies.
fn points(lab: &Lab) -> Vec<(String, Vec<String>)> {
    lab.json(&["points", "list", "pbx1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let copies = p["copies"].as_array().unwrap();
            (
                p["id"].as_str().unwrap().to_string(),
                copies
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Restore `id` at `site` from `store` (not started) and return the disk.
fn restore(lab: &Lab, id: &str, site: &str, store: &str) -> Vec<u8> {
    let r = lab.json(&["restore", id, "--site", site, "--from", store, "--no-start"]);
    assert_eq!(r["datastore"], store, "{r:#}");
    std::fs::read(lab.path(&format!("{site}/disks/pbx1/data.img"))).unwrap()
}

#[test]
fn ecosystem_upgrade_every_fixture_restores_byte_identically_and_takes_new_points() {
    for src in fixture_dirs() {
        let (mut lab, fixture) = open_fixture(&src);
        let seed = u64::from_str_radix(fixture["seed"].as_str().unwrap(), 16).unwrap();
        let expected: Vec<(String, Vec<u8>)> = fixture["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let bytes = fixture_disk(seed, p["generation"].as_u64().unwrap());
                assert_eq!(
                    blake3_hex(&bytes),
                    p["blake3"],
                    "{}: fixture_disk no longer makes the disk the fixture was made from",
                    src.display()
                );
                (p["id"].as_str().unwrap().to_string(), bytes)
            })
            .collect();
        let both = vec!["site1-store".to_string(), "site2-store".to_string()];
        let want: Vec<_> = expected
            .iter()
            .map(|(id, _)| (id.clone(), both.clone()))
            .collect();
        assert_eq!(points(&lab), want, "{}", src.display());

        // Each point from each datastore, byte for byte: the older (full)
        // one from the encrypted store at site 2, the newer (incremental)
        // one from the plain store at site 1, then the other way round.
        let (old, new) = (&expected[0], &expected[expected.len() - 1]);
        for (point, site, store) in [
            (old, "site2", "site2-store"),
            (new, "site1", "site1-store"),
            (old, "site1", "site1-store"),
            (new, "site2", "site2-store"),
        ] {
            let got = restore(&lab, &point.0, site, store);
            assert!(
                got == point.1,
                "{}: {} restored from {store} differs from what it was taken from",
                src.display(),
                point.0
            );
        }
        for store in ["site1-store", "site2-store"] {
            let v = lab.json(&["store", "verify", store]);
            assert!(
                v["problems"].as_array().unwrap().is_empty(),
                "{}: {store}: {v:#}",
                src.display()
            );
        }

        // A new point on top of the old chain: the VM is at site 2 now
        // (the last restore), its disk the newest point's; a new
        // generation changes two chunks, and only they are stored.
        let next = fixture_disk(seed, 1000);
        std::fs::write(lab.path("site2/disks/pbx1/data.img"), &next).unwrap();
        let run = lab.json(&["protect", "run", "gold"]);
        let taken = &run["vms"][0];
        assert_eq!(taken["chunks_new"], 2, "{}: {run:#}", src.display());
        let id = taken["point"].as_str().unwrap().to_string();
        let manifest = manifest_of(&lab, "site1/store", &id);
        assert_eq!(manifest["disks"][0]["base"], new.0.as_str(), "{manifest:#}");

        // The database the controller migrated (or opened) stays good
        // across a restart, and the new point restores from either store.
        lab.stop_server();
        lab.start_server();
        let ids: Vec<String> = points(&lab).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), expected.len() + 1);
        assert_eq!(ids.last(), Some(&id));
        for (site, store) in [("site1", "site2-store"), ("site2", "site1-store")] {
            assert!(
                restore(&lab, &id, site, store) == next,
                "{}: the new point restored from {store} differs",
                src.display()
            );
        }
    }
}

/// The manifest of point `id` in the plain datastore at `store`.
fn manifest_of(lab: &Lab, store: &str, id: &str) -> Value {
    let (vm, time) = id.split_once('@').unwrap();
    let path = lab.path(&format!("{store}/manifests/{vm}/{time}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A datastore a newer standby wrote (a newer format in its marker) is
/// refused by name and left alone; the controller still starts and serves
/// the other datastore.
#[test]
fn ecosystem_upgrade_a_datastore_of_a_newer_format_is_refused_clearly() {
    let src = fixture_dirs().pop().unwrap();
    let (mut lab, fixture) = open_fixture(&src);
    lab.stop_server();
    let marker_path = lab.path("site1/store/standby-store.json");
    let mut marker: Value = serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
    let newer = marker["format"].as_u64().unwrap() + 1;
    marker["format"] = newer.into();
    let text = serde_json::to_vec_pretty(&marker).unwrap();
    std::fs::write(&marker_path, &text).unwrap();
    lab.start_server();

    let err = lab.fails(&["store", "verify", "site1-store"]);
    assert!(
        err.contains(&format!("unsupported datastore format {newer}"))
            && err.contains("a newer standby wrote it"),
        "{err}"
    );
    let id = fixture["points"][0]["id"].as_str().unwrap();
    let err = lab.fails(&[
        "restore",
        id,
        "--site",
        "site2",
        "--from",
        "site1-store",
        "--no-start",
    ]);
    assert!(err.contains("a newer standby wrote it"), "{err}");
    assert_eq!(std::fs::read(&marker_path).unwrap(), text);
    // The other datastore still serves.
    let seed = u64::from_str_radix(fixture["seed"].as_str().unwrap(), 16).unwrap();
    let want = fixture_disk(seed, fixture["points"][0]["generation"].as_u64().unwrap());
    assert!(restore(&lab, id, "site2", "site2-store") == want);
}

/// A datastore of the previous format is refused, naming the command
/// that upgrades it, until that command ran: an unauthenticated point is
/// never listed, restored or booted. The upgrade signs what the store
/// holds, says where the store key went, and a second run does nothing.
#[test]
fn hardening_an_unupgraded_datastore_is_refused_until_store_upgrade_ran() {
    let src = fixture_dirs().pop().unwrap();
    let (lab, fixture) = open_fixture_with(&src, false);
    let err = lab.fails(&["store", "verify", "site1-store"]);
    assert!(err.contains("standby store upgrade"), "{err}");
    let id = fixture["points"][0]["id"].as_str().unwrap();
    let err = lab.fails(&[
        "restore",
        id,
        "--site",
        "site2",
        "--from",
        "site1-store",
        "--no-start",
    ]);
    assert!(err.contains("standby store upgrade"), "{err}");

    let cfg = lab.path("standby.toml");
    let out = upgrade_store(&cfg, "site1-store");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = fixture["points"].as_array().unwrap().len();
    assert_eq!(report["manifests_signed"], points as u64, "{report:#}");
    assert!(
        report["skipped"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let key = lab.path("site1/store.store-key");
    assert_eq!(
        report["store_key_file"],
        key.to_str().unwrap(),
        "{report:#}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again: Value = serde_json::from_slice(&upgrade_store(&cfg, "site1-store").stdout).unwrap();
    assert_eq!(again["already_upgraded"], true, "{again:#}");

    let v = lab.json(&["store", "verify", "site1-store"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v:#}");
    let seed = u64::from_str_radix(fixture["seed"].as_str().unwrap(), 16).unwrap();
    let want = fixture_disk(seed, fixture["points"][0]["generation"].as_u64().unwrap());
    assert!(restore(&lab, id, "site2", "site1-store") == want);
}
