//! Datastores on object storage: Azure Blob, S3, or local files, through
//! the `object_store` crate.
//!
//! [`ObjectBackend`] implements the blocking [`Backend`] trait over
//! `object_store`'s async API on a small tokio runtime it owns, so it can be
//! called from any thread (rayon workers, `spawn_blocking`, plain threads;
//! from inside an async task it hops to a scoped thread rather than block
//! the executor). Every object is written whole with one atomic put, so a
//! pack, an index or a manifest is visible only once complete; nothing goes
//! through `tmp/`.
//!
//! Transient failures (connection refused or reset, timeouts, 5xx, 429) are
//! retried by `object_store` with exponential backoff, a bounded number of
//! times; what still fails surfaces as [`StoreError::Remote`] with
//! `temporary` set, so callers know retrying later can help. Credentials
//! come only from the environment and are never logged or put in errors.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};

use crate::StoreError;
pub use crate::backend::ObjectStats;
use crate::backend::{Backend, ObjectMeta};

/// Where an object datastore lives and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStoreConfig {
    #[serde(flatten)]
    pub service: ObjectService,
    /// Path inside the container or bucket under which the datastore lives
    /// ("" for its root).
    #[serde(default)]
    pub prefix: String,
    /// Upload bandwidth limit in bytes per second (all puts of the
    /// backend share it); none when unset.
    #[serde(default)]
    pub upload_limit: Option<u64>,
    /// Retries of a request failing transiently, with exponential backoff.
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout_secs: u64,
    /// Lifetime of a lease (see `lock`); holders renew at a third of it.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// The store key of an unencrypted datastore here (`auth.rs`): a key
    /// file on this host, never in the bucket.
    #[serde(default)]
    pub store_key_file: Option<PathBuf>,
}

fn default_retries() -> usize {
    8
}
fn default_retry_timeout() -> u64 {
    120
}
fn default_lease() -> u64 {
    60
}

/// The object service and its credentials. Secrets are named by the
/// environment variables holding them, never written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "service", rename_all = "lowercase")]
pub enum ObjectService {
    Azure {
        account: String,
        container: String,
        /// Blob endpoint, e.g. Azurite's `http://127.0.0.1:PORT/devstoreaccount1`;
        /// `https://<account>.blob.core.windows.net` when unset.
        #[serde(default)]
        endpoint: Option<String>,
        /// The environment variable holding the account key.
        access_key_env: String,
    },
    S3 {
        bucket: String,
        region: String,
        #[serde(default)]
        endpoint: Option<String>,
        access_key_id_env: String,
        secret_access_key_env: String,
        #[serde(default)]
        allow_http: bool,
    },
    /// A directory through `object_store`'s local filesystem store: the
    /// object code path without a server.
    Local { path: PathBuf },
}

impl ObjectStoreConfig {
    pub fn new(service: ObjectService) -> ObjectStoreConfig {
        ObjectStoreConfig {
            service,
            prefix: String::new(),
            upload_limit: None,
            max_retries: default_retries(),
            retry_timeout_secs: default_retry_timeout(),
            lease_secs: default_lease(),
            store_key_file: None,
        }
    }

    /// A URL-like name for messages: `azure://account/container/prefix`.
    pub fn location(&self) -> String {
        let (scheme, base) = match &self.service {
            ObjectService::Azure {
                account, container, ..
            } => ("azure", format!("{account}/{container}")),
            ObjectService::S3 { bucket, .. } => ("s3", bucket.clone()),
            ObjectService::Local { path } => ("file", path.display().to_string()),
        };
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{scheme}://{base}")
        } else {
            format!("{scheme}://{base}/{prefix}")
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// Objects in a container, a bucket or a directory, under a prefix.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjPath>,
    location: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    counters: Counters,
    limiter: Option<TokenBucket>,
    lease: Duration,
    key_file: Option<PathBuf>,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Ranges closer than this are fetched in one request: neighbouring
/// chunks of a restore batch are, the chunks a sampled verify picks mostly
/// are not.
const COALESCE: u64 = 128 << 10;

fn secret(var: &str, location: &str) -> Result<String, StoreError> {
    std::env::var(var).map_err(|_| StoreError::Config {
        location: location.to_string(),
        reason: format!("environment variable {var} holding the credential is not set"),
    })
}

impl ObjectBackend {
    /// Connect to the store `config` names. Nothing is requested yet:
    /// wrong credentials show at the first call.
    pub fn new(config: &ObjectStoreConfig) -> Result<ObjectBackend, StoreError> {
        // object_store's reqwest client: TLS through ring, as every client.
        standby_http::install_tls_provider();
        let location = config.location();
        let bad = |e: object_store::Error| StoreError::Config {
            location: location.clone(),
            reason: e.to_string(),
        };
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: Duration::from_secs(config.retry_timeout_secs),
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let store: Arc<dyn ObjectStore> = match &config.service {
            ObjectService::Azure {
                account,
                container,
                endpoint,
                access_key_env,
            } => {
                let key = secret(access_key_env, &location)?;
                let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                    .with_account(account)
                    .with_container_name(container)
                    .with_access_key(key)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = endpoint {
                    b = b
                        .with_endpoint(endpoint.clone())
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                Arc::new(b.build().map_err(bad)?)
            }
            ObjectService::S3 {
                bucket,
                region,
                endpoint,
                access_key_id_env,
                secret_access_key_env,
                allow_http,
            } => {
                let id = secret(access_key_id_env, &location)?;
                let key = secret(secret_access_key_env, &location)?;
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(id)
                    .with_secret_access_key(key)
                    .with_retry(retry)
                    .with_client_options(client)
                    .with_allow_http(*allow_http);
                if let Some(endpoint) = endpoint {
                    b = b.with_endpoint(endpoint);
                }
                Arc::new(b.build().map_err(bad)?)
            }
            ObjectService::Local { path } => {
                std::fs::create_dir_all(path)
                    .map_err(|e| StoreError::io("create directory", path, e))?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path).map_err(bad)?)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("standby-object-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start the I/O runtime for", &location, e))?;
        let prefix = config.prefix.trim_matches('/');
        Ok(ObjectBackend {
            store,
            prefix: (!prefix.is_empty()).then(|| ObjPath::from(prefix)),
            location: PathBuf::from(location),
            runtime: Some(runtime),
            counters: Counters::default(),
            limiter: config.upload_limit.filter(|&r| r > 0).map(TokenBucket::new),
            lease: Duration::from_secs(config.lease_secs.max(3)),
            key_file: config.store_key_file.clone(),
        })
    }

    /// Requests and bytes so far.
    pub fn stats(&self) -> ObjectStats {
        ObjectStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            bytes_up: self.counters.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.counters.bytes_down.load(Ordering::Relaxed),
        }
    }

    fn path(&self, path: &str) -> ObjPath {
        match &self.prefix {
            Some(p) => ObjPath::from(format!("{p}/{path}")),
            None => ObjPath::from(path),
        }
    }

    /// The path relative to the prefix of an object listed.
    fn relative(&self, path: &ObjPath) -> String {
        let s = path.as_ref();
        match &self.prefix {
            Some(p) => s
                .strip_prefix(p.as_ref())
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(s)
                .to_string(),
            None => s.to_string(),
        }
    }

    /// Run a future to completion from blocking code.
    fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        let rt = self
            .runtime
            .as_ref()
            .expect("runtime lives as long as the backend");
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside an async context block_on would panic: hop threads.
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(fut)
        }
    }

    fn count(&self, requests: u64) {
        self.counters
            .requests
            .fetch_add(requests, Ordering::Relaxed);
    }

    fn error(&self, action: &'static str, path: &str, e: object_store::Error) -> StoreError {
        let full = self.location.join(path);
        let kind = match &e {
            object_store::Error::NotFound { .. } => Some(std::io::ErrorKind::NotFound),
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Some(std::io::ErrorKind::AlreadyExists),
            _ => None,
        };
        if let Some(kind) = kind {
            return StoreError::io(action, full, std::io::Error::new(kind, e));
        }
        let temporary = is_transient(&e);
        StoreError::Remote {
            action,
            path: full,
            temporary,
            source: Box::new(e),
        }
    }

    fn put_with(&self, path: &str, data: &[u8], mode: PutMode) -> Result<(), StoreError> {
        if let Some(limiter) = &self.limiter {
            limiter.take(data.len() as u64);
        }
        let payload = PutPayload::from(data.to_vec());
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.count(1);
        let location = self.path(path);
        self.block_on(self.store.put_opts(&location, payload, opts))
            .map_err(|e| self.error("upload", path, e))?;
        self.counters
            .bytes_up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for ObjectBackend {
    fn drop(&mut self) {
        // Dropping a runtime may block, which panics in an async context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// True when the failure may pass by itself: the server unreachable or
/// overloaded, or the connection lost, after object_store's retries.
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        // The retry error type is private: its message names the status.
        let text = err.to_string();
        if let Some(at) = text.find("status code: ") {
            let code = &text[at + 13..];
            return code.starts_with('5') || code.starts_with("429") || code.starts_with("408");
        }
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            return matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | TimedOut
                    | Interrupted
                    | UnexpectedEof
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

impl Backend for ObjectBackend {
    fn location(&self) -> &Path {
        &self.location
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_with(path, data, PutMode::Overwrite)
    }

    fn put_new(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_with(path, data, PutMode::Create)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        self.count(1);
        let location = self.path(path);
        let bytes = self
            .block_on(async {
                let r = self.store.get(&location).await?;
                r.bytes().await
            })
            .map_err(|e| self.error("download", path, e))?;
        self.counters
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes.to_vec())
    }

    fn get_range(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let range = offset..offset + len as u64;
        let mut v = self.get_ranges(path, std::slice::from_ref(&range))?;
        Ok(v.pop().unwrap_or_default())
    }

    fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, StoreError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let location = self.path(path);
        let parts = self
            .block_on(object_store::coalesce_ranges(
                ranges,
                |r| {
                    self.count(1);
                    let location = &location;
                    async move {
                        let len = r.end - r.start;
                        let b = self.store.get_range(location, r).await?;
                        self.counters
                            .bytes_down
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        if (b.len() as u64) < len {
                            return Err(object_store::Error::Generic {
                                store: "standby",
                                source: format!("{len} bytes requested, {} returned", b.len())
                                    .into(),
                            });
                        }
                        Ok(b)
                    }
                },
                COALESCE,
            ))
            .map_err(|e| self.error("download", path, e))?;
        let out: Vec<Vec<u8>> = parts.into_iter().map(|b| b.to_vec()).collect();
        for (r, b) in ranges.iter().zip(&out) {
            if b.len() as u64 != r.end - r.start {
                return Err(StoreError::io(
                    "read",
                    self.location.join(path),
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} bytes at offset {} are past the end of the object",
                            r.end - r.start,
                            r.start
                        ),
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.count(1);
        let prefix_path = {
            let p = prefix.trim_matches('/');
            match (&self.prefix, p.is_empty()) {
                (None, true) => None,
                _ => Some(self.path(p)),
            }
        };
        let list = self
            .block_on(
                self.store
                    .list(prefix_path.as_ref())
                    .try_collect::<Vec<_>>(),
            )
            .map_err(|e| self.error("list", prefix, e))?;
        let mut out: Vec<ObjectMeta> = list
            .into_iter()
            .map(|m| ObjectMeta {
                path: self.relative(&m.location),
                size: m.size,
                modified: SystemTime::from(m.last_modified),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.count(1);
        let location = self.path(path);
        match self.block_on(self.store.delete(&location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    fn exists(&self, path: &str) -> Result<bool, StoreError> {
        self.count(1);
        let location = self.path(path);
        match self.block_on(self.store.head(&location)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("look up", path, e)),
        }
    }

    fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn store_key_file(&self) -> Option<PathBuf> {
        self.key_file.clone()
    }

    fn object_stats(&self) -> Option<ObjectStats> {
        Some(self.stats())
    }
}

/// A token bucket: `rate` bytes per second, bursts of up to a second.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            rate,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Wait until `n` bytes may go.
    fn take(&self, n: u64) {
        let mut left = n;
        while left > 0 {
            let want = left.min(self.rate) as f64;
            loop {
                let wait = {
                    let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    let refill = now.duration_since(s.1).as_secs_f64() * self.rate as f64;
                    s.0 = (s.0 + refill).min(self.rate as f64);
                    s.1 = now;
                    if s.0 >= want {
                        s.0 -= want;
                        break;
                    }
                    (want - s.0) / self.rate as f64
                };
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            left -= want as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_roundtrip_and_location() {
        let text = r#"{"service":"azure","account":"a","container":"c","access_key_env":"K","prefix":"site2/"}"#;
        let c: ObjectStoreConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.location(), "azure://a/c/site2");
        assert_eq!(c.max_retries, default_retries());
        let back: ObjectStoreConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn missing_credential_names_the_variable() {
        let c = ObjectStoreConfig::new(ObjectService::S3 {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id_env: "STANDBY_TEST_NO_SUCH_VAR".into(),
            secret_access_key_env: "STANDBY_TEST_NO_SUCH_VAR2".into(),
            allow_http: false,
        });
        let e = ObjectBackend::new(&c).unwrap_err();
        assert!(e.to_string().contains("s3://b"), "{e}");
        assert!(
            format!("{e:?}").contains("STANDBY_TEST_NO_SUCH_VAR"),
            "{e:?}"
        );
    }

    #[test]
    fn local_objects_roundtrip_with_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ObjectStoreConfig::new(ObjectService::Local {
            path: dir.path().to_path_buf(),
        });
        c.prefix = "p/q".into();
        let b = ObjectBackend::new(&c).unwrap();
        b.put("packs/ab/x.pack", b"hello world").unwrap();
        assert_eq!(b.get("packs/ab/x.pack").unwrap(), b"hello world");
        assert_eq!(
            b.get_ranges("packs/ab/x.pack", &[0..5, 6..11]).unwrap(),
            vec![b"hello".to_vec(), b"world".to_vec()]
        );
        assert!(b.get_range("packs/ab/x.pack", 6, 50).is_err());
        let e = b.put_new("packs/ab/x.pack", b"other").unwrap_err();
        assert!(
            matches!(&e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e:?}"
        );
        let list = b.list("packs").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].path, "packs/ab/x.pack");
        assert!(dir.path().join("p/q/packs/ab/x.pack").exists());
        assert!(b.list("pack").unwrap().is_empty());
        b.delete("packs/ab/x.pack").unwrap();
        b.delete("packs/ab/x.pack").unwrap();
        assert!(!b.exists("packs/ab/x.pack").unwrap());
        assert!(b.get("packs/ab/x.pack").unwrap_err().is_not_found());
        let s = b.stats();
        assert!(s.requests >= 8 && s.bytes_up == 11, "{s:?}");
    }

    #[test]
    fn token_bucket_limits_rate() {
        let t = TokenBucket::new(1_000_000);
        let start = Instant::now();
        t.take(1_000_000); // the initial burst
        t.take(500_000);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
    }
}
