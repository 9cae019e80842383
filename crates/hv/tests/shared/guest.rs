//! The tiny guest both hv test binaries boot (`qemu`, `libvirt`): built
//! once per binary into `target/tmp/guest`, where scripts/build-guest
//! keeps its .debs cached. Included by each binary's `common.rs`.

use std::path::{Path, PathBuf};
use std::time::Instant;

pub const INSTALL: &str = "apt-get install -y qemu-system-x86 qemu-utils busybox-static cpio";

/// `target/` of this build (CARGO_TARGET_TMPDIR is `target/tmp`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Build `standby-vnf` and the guest (kernel + initrd) once per test
/// binary, into `target/tmp/guest` (the .debs stay cached there).
pub fn guest() -> &'static (PathBuf, PathBuf) {
    static GUEST: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    GUEST.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "standby-vnf", "--bin", "standby-vnf"])
            .env("CARGO_TARGET_DIR", target_dir())
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p standby-vnf failed");
        let vnf = target_dir().join("debug/standby-vnf");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
        let t = Instant::now();
        let st = std::process::Command::new(repo_root().join("scripts/build-guest"))
            .arg("--vnf")
            .arg(&vnf)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("scripts/build-guest: {e}; install: {INSTALL}"));
        assert!(st.success(), "scripts/build-guest failed; needs: {INSTALL}");
        eprintln!("guest built in {:.1?}", t.elapsed());
        (out.join("vmlinuz"), out.join("initrd.img"))
    })
}
