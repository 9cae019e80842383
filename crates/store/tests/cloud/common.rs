//! Stores on the test servers, images and helpers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Once};

use rand::{RngCore, SeedableRng};
use standby_store::{
    Consistency, Datastore, DiskWriteOptions, Manifest, ObjectBackend, ObjectService,
    ObjectStoreConfig, PointMeta, StoreOptions,
};
/// An error with all its sources.
pub use standby_types::error_chain as chain;

use standby_testkit::objects::{AZURITE_ACCOUNT, AZURITE_KEY, Kind, Server};

pub const AZURE_KEY_ENV: &str = "STANDBY_TEST_AZURE_KEY";
pub const WRONG_KEY_ENV: &str = "STANDBY_TEST_AZURE_WRONG_KEY";
/// A valid-looking key that is not Azurite's.
pub const WRONG_KEY: &str =
    "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmdrb3dyb25na2V5d3Jvbmdrb3dyb25na2V5d3Jvbmc=";
pub const S3_ID_ENV: &str = "STANDBY_TEST_S3_ID";
pub const S3_SECRET_ENV: &str = "STANDBY_TEST_S3_SECRET";
pub const S3_SECRET: &str = "s3-secret-value-never-printed";

static ENV: Once = Once::new();

/// Credentials in the environment, set once before any test reads it.
#[allow(unsafe_code)]
pub fn init() {
    ENV.call_once(|| {
        // SAFETY: every test calls this first; Once blocks the others
        // until it is done, so nothing reads the environment meanwhile.
        unsafe {
            std::env::set_var(AZURE_KEY_ENV, AZURITE_KEY);
            std::env::set_var(WRONG_KEY_ENV, WRONG_KEY);
            std::env::set_var(S3_ID_ENV, "testing");
            std::env::set_var(S3_SECRET_ENV, S3_SECRET);
        }
    });
}

/// A fresh bucket on `server` and the config of a store in it.
pub fn config(server: &Server, prefix: &str) -> ObjectStoreConfig {
    init();
    let bucket = format!("b{:016x}", rand::random::<u64>());
    server.create_bucket(&bucket);
    config_in(server, &bucket, prefix)
}

pub fn config_in(server: &Server, bucket: &str, prefix: &str) -> ObjectStoreConfig {
    let service = match server.kind {
        Kind::Azurite => ObjectService::Azure {
            account: AZURITE_ACCOUNT.into(),
            container: bucket.into(),
            endpoint: Some(server.endpoint()),
            access_key_env: AZURE_KEY_ENV.into(),
        },
        Kind::Moto => ObjectService::S3 {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: Some(server.endpoint()),
            access_key_id_env: S3_ID_ENV.into(),
            secret_access_key_env: S3_SECRET_ENV.into(),
            allow_http: true,
        },
    };
    let mut c = ObjectStoreConfig::new(service);
    c.prefix = prefix.into();
    // Fail fast in tests: a dead server is reported within seconds.
    c.max_retries = 2;
    c.retry_timeout_secs = 10;
    c.lease_secs = 6;
    // The store key stays on this host, one per store.
    let keys = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("store-keys");
    std::fs::create_dir_all(&keys).unwrap();
    c.store_key_file = Some(keys.join(format!("{bucket}-{}.store-key", prefix.replace('/', "_"))));
    c
}

pub fn open(config: &ObjectStoreConfig) -> (Datastore, Arc<ObjectBackend>) {
    let backend = Arc::new(ObjectBackend::new(config).unwrap());
    let ds = Datastore::open_or_create_on(backend.clone(), small_packs()).unwrap();
    (ds, backend)
}

/// 16 MiB packs, so small images still make several.
pub fn small_packs() -> StoreOptions {
    StoreOptions {
        pack_size: 16 << 20,
        ..StoreOptions::default()
    }
}

/// `random` of the image's 64 KiB chunks are random, the others zero or
/// compressible text (as in `standby bench`, zeros dominate).
pub fn make_image(path: &Path, size: u64, seed: u64, random: f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let cs = 64usize << 10;
    let mut buf = vec![0u8; cs];
    let mut off = 0u64;
    let mut n = 0u64;
    while off < size {
        let len = (size - off).min(cs as u64) as usize;
        let r = (rng.next_u32() as f64) / (u32::MAX as f64);
        if r < random {
            rng.fill_bytes(&mut buf);
        } else if n.is_multiple_of(7) {
            let line = format!("chunk {n} seed {seed} compressible\n");
            for (i, b) in buf.iter_mut().enumerate() {
                *b = line.as_bytes()[i % line.len()];
            }
        } else {
            buf.fill(0);
        }
        f.write_all(&buf[..len]).unwrap();
        off += len as u64;
        n += 1;
    }
    f.flush().unwrap();
}

pub fn meta(vm: &str) -> PointMeta {
    PointMeta {
        vm: vm.into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::json!({"cpus": 2}),
        labels: BTreeMap::new(),
    }
}

pub fn backup(ds: &Datastore, vm: &str, image: &Path) -> Manifest {
    let mut w = ds.begin_point(meta(vm)).unwrap();
    w.write_disk("data", image, DiskWriteOptions::default(), &())
        .unwrap();
    w.commit().unwrap()
}

pub fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(
        x.len() == y.len() && x == y,
        "{} differs from {}",
        a.display(),
        b.display()
    );
}
