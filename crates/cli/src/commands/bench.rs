//! `standby bench`: the datastore against restic and borg on the same
//! generated disk image, in the same run.
//!
//! The image (default 2 GiB) is 40 % zeros, 35 % compressible text-like
//! data and 25 % random data, in 1 MiB regions. Then 2 % of it is changed in
//! place by scattered 4–64 KiB writes. Each tool takes a full backup, a
//! second backup of the changed image (standby without any dirty-range
//! help: the whole image is read and hashed), and a restore; the repository
//! size is measured after each backup. All reads come from the page cache
//! for every tool alike (the image is far smaller than RAM), and every
//! timing ends when the tool's output is on disk (its run, then `sync`),
//! so a tool that does not fsync is not credited for leaving its work in
//! the page cache. Restores are sparse for every tool.

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use standby_store::{Consistency, Datastore, DiskWriteOptions, PointId, PointMeta};
use standby_types::config::ByteSize;

use crate::output;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Size of the generated disk image.
    #[arg(long, default_value = "2GiB")]
    pub size: ByteSize,
    /// Work directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only measure standby (do not run restic and borg).
    #[arg(long)]
    pub standby_only: bool,
    /// Chunk size for standby.
    #[arg(long, default_value = "64KiB")]
    pub chunk_size: ByteSize,
}

#[derive(Debug, Serialize, Clone)]
pub struct ToolResult {
    pub tool: String,
    pub version: String,
    pub full_secs: f64,
    pub second_secs: f64,
    pub restore_secs: f64,
    pub repo_after_full: u64,
    pub repo_after_second: u64,
    pub full_mb_s: f64,
    pub second_mb_s: f64,
    pub restore_mb_s: f64,
    pub growth: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub image_size: u64,
    pub changed_bytes: u64,
    pub changed_writes: usize,
    pub results: Vec<ToolResult>,
    /// standby's second point when the changed ranges are known (what the
    /// QEMU driver's dirty bitmap gives).
    pub standby_dirty_ranges: Option<ToolResult>,
    /// standby ÷ other, per tool: throughput ratios (higher is better for
    /// standby) and growth ratio (lower is better).
    pub ratios: Vec<serde_json::Value>,
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// xorshift64*: fast, deterministic, good enough for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "INVITE",
    "REGISTER",
    "sip:",
    "alice",
    "bob",
    "carol",
    "example.net",
    "Via: SIP/2.0/UDP",
    "branch=z9hG4bK",
    "Contact:",
    "Expires: 3600",
    "CSeq:",
    "200 OK",
    "\n",
    "tag=",
    "1024",
    "call-id",
    "From:",
    "To:",
    "Max-Forwards: 70",
    "User-Agent: standby",
    "status=ok",
    "{",
    "}",
];

fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let r = rng.next();
        let w = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
        let n = w.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[..n]);
        i += n;
        if i < buf.len() {
            // A sprinkle of digits keeps it from compressing absurdly well.
            buf[i] = b'0' + ((r >> 32) % 10) as u8;
            i += 1;
        }
    }
}

fn generate_image(path: &Path, size: u64) -> Result<()> {
    const REGION: usize = 1 << 20;
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, f);
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut buf = vec![0u8; REGION];
    let zeros = vec![0u8; REGION];
    let regions = size.div_ceil(REGION as u64);
    for r in 0..regions {
        let len = (size - r * REGION as u64).min(REGION as u64) as usize;
        match rng.below(100) {
            0..40 => w.write_all(&zeros[..len])?,
            40..75 => {
                fill_text(&mut rng, &mut buf[..len]);
                w.write_all(&buf[..len])?;
            }
            _ => {
                rng.fill(&mut buf[..len]);
                w.write_all(&buf[..len])?;
            }
        }
    }
    w.into_inner()?.sync_all()?;
    Ok(())
}

/// Change about 2 % of the image in place with 4–64 KiB writes at 4 KiB
/// aligned random offsets. Returns the changed ranges.
fn mutate_image(path: &Path, size: u64) -> Result<Vec<Range<u64>>> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let target = size / 50;
    let mut done = 0;
    let mut ranges = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while done < target {
        let len = (1 + rng.below(16)) * 4096;
        let off = rng.below((size - len) / 4096) * 4096;
        rng.fill(&mut buf[..len as usize]);
        f.write_all_at(&buf[..len as usize], off)?;
        ranges.push(off..off + len);
        done += len;
    }
    f.sync_all()?;
    Ok(ranges)
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                total += dir_size(&e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let hash = |p: &Path| -> Result<blake3::Hash> {
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(p)
            .with_context(|| format!("hashing {}", p.display()))?;
        Ok(h.finalize())
    };
    Ok(hash(a)? == hash(b)?)
}

/// Flush every dirty page of the machine to disk.
fn sync_all() -> Result<()> {
    exec(&mut Command::new("sync"))
}

/// Time `f` until its output is durable: the tool's own run, then a
/// machine-wide `sync` (a no-op for a tool that fsyncs its writes itself,
/// as standby does). Tools that leave their data in the page cache are
/// not credited for it.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    sync_all()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn exec(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("unable to run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn version(prog: &str) -> Result<String> {
    let out = Command::new(prog).arg("version").output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => Command::new(prog)
            .arg("--version")
            .output()
            .with_context(|| format!("{prog} is not installed (scripts/bench installs it: apt-get install restic borgbackup)"))?,
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn result(tool: &str, version: String, size: u64, t: [f64; 3], repo: [u64; 2]) -> ToolResult {
    ToolResult {
        tool: tool.into(),
        version,
        full_secs: t[0],
        second_secs: t[1],
        restore_secs: t[2],
        repo_after_full: repo[0],
        repo_after_second: repo[1],
        full_mb_s: mb_s(size, t[0]),
        second_mb_s: mb_s(size, t[1]),
        restore_mb_s: mb_s(size, t[2]),
        growth: repo[1].saturating_sub(repo[0]),
    }
}

fn standby_point(
    store: &Datastore,
    image: &Path,
    chunk_size: u32,
    base: Option<PointId>,
    dirty: Option<Vec<Range<u64>>>,
) -> Result<PointId> {
    let mut w = store.begin_point(PointMeta {
        vm: "bench".into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::Value::Null,
        labels: Default::default(),
    })?;
    w.write_disk(
        "disk",
        image,
        DiskWriteOptions {
            chunk_size,
            base,
            dirty,
        },
        &(),
    )?;
    Ok(w.commit()?.id)
}

pub async fn run_bench(args: BenchArgs) -> Result<BenchReport> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("standby-bench-")
                .tempdir_in("/var/tmp")?;
            tmp.path().to_path_buf()
        }
    };
    let size = args.size.0;
    let chunk = args.chunk_size.0 as u32;
    let image = dir.join("disk.img");
    let pristine = dir.join("disk-v1.img");
    eprintln!(
        "generating a {} image in {}",
        output::bytes(size),
        dir.display()
    );
    generate_image(&image, size)?;
    std::fs::copy(&image, &pristine)?;

    // The changed image is the same file changed in place, as a VM would.
    let v2 = dir.join("disk-v2.img");
    let changes = {
        std::fs::copy(&pristine, &v2)?;
        mutate_image(&v2, size)?
    };
    let changed: u64 = changes.iter().map(|r| r.end - r.start).sum();
    // Each run starts from the image in the page cache and nothing dirty.
    let reset = |to: &Path| -> Result<()> {
        std::fs::copy(to, &image)?;
        sync_all()
    };

    let mut results = Vec::new();

    // standby
    eprintln!("standby: full point, second point, restore");
    reset(&pristine)?;
    let store_dir = dir.join("standby-store");
    let store = Datastore::open_or_create(&store_dir)?;
    let (p1, t1) = timed(|| standby_point(&store, &image, chunk, None, None))?;
    let r1 = dir_size(&store_dir);
    reset(&v2)?;
    let (p2, t2) = timed(|| standby_point(&store, &image, chunk, Some(p1.clone()), None))?;
    let r2 = dir_size(&store_dir);
    let out = dir.join("restore-standby.img");
    let ((), t3) = timed(|| {
        store.restore_disk(&p2, "disk", &out, &())?;
        Ok(())
    })?;
    if !same_content(&out, &v2)? {
        bail!("standby's restore differs from the image");
    }
    std::fs::remove_file(&out)?;
    results.push(result(
        "standby",
        env!("CARGO_PKG_VERSION").into(),
        size,
        [t1, t2, t3],
        [r1, r2],
    ));

    // standby with the changed ranges known (dirty bitmap).
    let dirty_store_dir = dir.join("standby-store-dirty");
    let dstore = Datastore::open_or_create(&dirty_store_dir)?;
    reset(&pristine)?;
    let (d1, dt1) = timed(|| standby_point(&dstore, &image, chunk, None, None))?;
    let dr1 = dir_size(&dirty_store_dir);
    reset(&v2)?;
    let (_d2, dt2) = timed(|| {
        standby_point(
            &dstore,
            &image,
            chunk,
            Some(d1.clone()),
            Some(changes.clone()),
        )
    })?;
    let dr2 = dir_size(&dirty_store_dir);
    let dirty = result(
        "standby (dirty ranges)",
        env!("CARGO_PKG_VERSION").into(),
        size,
        [dt1, dt2, t3],
        [dr1, dr2],
    );
    drop(dstore);
    std::fs::remove_dir_all(&dirty_store_dir)?;

    if !args.standby_only {
        // restic
        let rv = version("restic")?;
        eprintln!("{rv}: full backup, second backup, restore");
        let repo = dir.join("restic-repo");
        let restic = |a: &[&str]| {
            let mut c = Command::new("restic");
            c.env("RESTIC_PASSWORD", "bench")
                .arg("-r")
                .arg(&repo)
                .arg("--no-cache")
                .args(a);
            c
        };
        exec(&mut restic(&["init"]))?;
        reset(&pristine)?;
        let img = image.to_str().context("utf-8 path")?;
        let ((), t1) = timed(|| exec(&mut restic(&["backup", "--quiet", img])))?;
        let r1 = dir_size(&repo);
        reset(&v2)?;
        let ((), t2) = timed(|| exec(&mut restic(&["backup", "--quiet", img])))?;
        let r2 = dir_size(&repo);
        let target = dir.join("restic-restore");
        let ((), t3) = timed(|| {
            exec(&mut restic(&[
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ]))
        })?;
        let restored = target.join(image.strip_prefix("/").unwrap_or(&image));
        if !same_content(&restored, &v2)? {
            bail!("restic's restore differs from the image");
        }
        std::fs::remove_dir_all(&target)?;
        std::fs::remove_dir_all(&repo)?;
        results.push(result("restic", rv, size, [t1, t2, t3], [r1, r2]));

        // borg
        let bv = version("borg")?;
        eprintln!("{bv}: full backup, second backup, restore");
        let repo = dir.join("borg-repo");
        let borg = |a: &[&str], cwd: &Path| {
            let mut c = Command::new("borg");
            c.current_dir(cwd)
                .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
                .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
                .env("BORG_BASE_DIR", dir.join("borg-base"))
                .args(a);
            c
        };
        let repo_s = repo.to_str().unwrap().to_string();
        exec(&mut borg(&["init", "-e", "none", &repo_s], &dir))?;
        reset(&pristine)?;
        let ((), t1) = timed(|| {
            exec(&mut borg(
                &["create", &format!("{repo_s}::one"), "disk.img"],
                &dir,
            ))
        })?;
        let r1 = dir_size(&repo);
        reset(&v2)?;
        let ((), t2) = timed(|| {
            exec(&mut borg(
                &["create", &format!("{repo_s}::two"), "disk.img"],
                &dir,
            ))
        })?;
        let r2 = dir_size(&repo);
        let target = dir.join("borg-restore");
        std::fs::create_dir_all(&target)?;
        let ((), t3) = timed(|| {
            exec(&mut borg(
                &["extract", "--sparse", &format!("{repo_s}::two")],
                &target,
            ))
        })?;
        if !same_content(&target.join("disk.img"), &v2)? {
            bail!("borg's restore differs from the image");
        }
        std::fs::remove_dir_all(&target)?;
        std::fs::remove_dir_all(&repo)?;
        results.push(result("borg", bv, size, [t1, t2, t3], [r1, r2]));
    }

    let s = results[0].clone();
    let ratios = results[1..]
        .iter()
        .map(|o| {
            serde_json::json!({
                "versus": o.tool,
                "full_throughput": s.full_mb_s / o.full_mb_s,
                "second_throughput": s.second_mb_s / o.second_mb_s,
                "restore_throughput": s.restore_mb_s / o.restore_mb_s,
                "growth": s.growth as f64 / o.growth.max(1) as f64,
            })
        })
        .collect();
    Ok(BenchReport {
        image_size: size,
        changed_bytes: changed,
        changed_writes: changes.len(),
        results,
        standby_dirty_ranges: Some(dirty),
        ratios,
    })
}

pub async fn run(args: &BenchArgs, json: bool) -> Result<()> {
    let report = run_bench(args.clone()).await?;
    if json {
        output::json(&report);
        return Ok(());
    }
    println!(
        "image {} (40% zeros, 35% compressible, 25% random); second image: {} changed in {} writes of 4–64 KiB",
        output::bytes(report.image_size),
        output::bytes(report.changed_bytes),
        report.changed_writes
    );
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in report
        .results
        .iter()
        .chain(report.standby_dirty_ranges.iter())
    {
        rows.push(vec![
            r.tool.clone(),
            format!("{:.2}s  {:.0} MB/s", r.full_secs, r.full_mb_s),
            format!("{:.2}s  {:.0} MB/s", r.second_secs, r.second_mb_s),
            format!("{:.2}s  {:.0} MB/s", r.restore_secs, r.restore_mb_s),
            output::bytes(r.repo_after_full),
            output::bytes(r.growth),
            r.version.clone(),
        ]);
    }
    output::table(
        &[
            "TOOL",
            "FULL",
            "SECOND",
            "RESTORE",
            "REPO AFTER FULL",
            "GROWTH (2ND)",
            "VERSION",
        ],
        rows,
    );
    for r in &report.ratios {
        println!(
            "standby vs {}: full ×{:.2}, second ×{:.2}, restore ×{:.2}, growth ×{:.3}",
            r["versus"].as_str().unwrap_or(""),
            r["full_throughput"].as_f64().unwrap_or(0.0),
            r["second_throughput"].as_f64().unwrap_or(0.0),
            r["restore_throughput"].as_f64().unwrap_or(0.0),
            r["growth"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
