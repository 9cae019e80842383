//! Opening the configured datastores: a directory, or a container/bucket
//! on Azure Blob or S3 through the object backend, encrypted or not.
//! Secrets (account keys, passphrases) come from the environment or key
//! files named in `standby.toml` and never appear in errors or logs.

use std::sync::Arc;

use standby_store::backend::{Backend, LocalBackend};
use standby_store::object::{ObjectBackend, ObjectService, ObjectStoreConfig};
use standby_store::{Datastore, KeySource, StoreError, StoreOptions};
use standby_types::config::{DatastoreConfig, DatastoreKind};

use crate::error::AgentError;

fn key_source(name: &str, cfg: &DatastoreConfig) -> Result<Option<KeySource>, AgentError> {
    let Some(enc) = &cfg.encryption else {
        return Ok(None);
    };
    if let Some(f) = &enc.key_file {
        return Ok(Some(KeySource::File(f.clone())));
    }
    let var = enc.passphrase_env.as_deref().unwrap_or_default();
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Some(KeySource::Passphrase(p))),
        _ => Err(AgentError::BadRequest(format!(
            "datastore {name} is encrypted with a passphrase, but the environment variable {var} is not set"
        ))),
    }
}

fn object_config(cfg: &DatastoreConfig) -> Option<ObjectStoreConfig> {
    let service = match cfg.kind {
        DatastoreKind::Local => return None,
        DatastoreKind::Azure => ObjectService::Azure {
            account: cfg.account.clone().unwrap_or_default(),
            container: cfg.container.clone().unwrap_or_default(),
            endpoint: cfg.endpoint.clone(),
            access_key_env: cfg.access_key_env.clone().unwrap_or_default(),
        },
        DatastoreKind::S3 => ObjectService::S3 {
            bucket: cfg.bucket.clone().unwrap_or_default(),
            region: cfg.region.clone().unwrap_or_else(|| "us-east-1".into()),
            endpoint: cfg.endpoint.clone(),
            access_key_id_env: cfg.access_key_id_env.clone().unwrap_or_default(),
            secret_access_key_env: cfg.secret_access_key_env.clone().unwrap_or_default(),
            allow_http: cfg.allow_http,
        },
    };
    let mut oc = ObjectStoreConfig::new(service);
    oc.prefix = cfg.prefix.clone();
    oc.upload_limit = cfg.upload_limit.map(|b| b.0);
    oc.store_key_file = cfg.store_key_file.clone();
    Some(oc)
}

/// The backend of the datastore, with where its store key is kept.
pub fn backend(cfg: &DatastoreConfig) -> Result<Arc<dyn Backend>, StoreError> {
    match object_config(cfg) {
        Some(oc) => Ok(Arc::new(ObjectBackend::new(&oc)?)),
        None => Ok(Arc::new(
            LocalBackend::new(cfg.path.as_deref().unwrap_or(std::path::Path::new(".")))
                .with_store_key_file(cfg.store_key_file.clone()),
        )),
    }
}

/// Open an existing datastore.
pub fn open(name: &str, cfg: &DatastoreConfig) -> Result<Datastore, AgentError> {
    let key = key_source(name, cfg)?;
    let opts = StoreOptions::default();
    let ds = match (cfg.kind, &cfg.path, &key) {
        (DatastoreKind::Local, Some(path), Some(k)) => Datastore::open_with_key(path, k, opts)?,
        (DatastoreKind::Local, Some(path), None) => {
            Datastore::open_local(path, backend(cfg)?.store_key_file(), opts)?
        }
        (_, _, None) => Datastore::open_on(backend(cfg)?, opts)?,
        (_, _, Some(k)) => Datastore::open_on_with_key(backend(cfg)?, k, opts)?,
    };
    Ok(ds)
}

/// Upgrade the datastore to the current format in place (`standby store
/// upgrade`): see `standby_store::Datastore::upgrade_on`.
pub fn upgrade(
    name: &str,
    cfg: &DatastoreConfig,
) -> Result<standby_store::UpgradeReport, AgentError> {
    let key = key_source(name, cfg)?;
    let backend = backend(cfg)?;
    if cfg.kind == DatastoreKind::Local
        && let Some(path) = &cfg.path
        && !path.join(standby_store::MARKER_FILE).exists()
    {
        return Err(StoreError::NotADatastore { path: path.clone() }.into());
    }
    Ok(Datastore::upgrade_on(backend, key.as_ref())?)
}

/// Create the datastore when it does not exist yet: a missing directory,
/// or an empty container prefix. An existing datastore is left alone, and
/// something else at the place is an error. Returns whether it created.
pub fn create_if_absent(name: &str, cfg: &DatastoreConfig) -> Result<bool, AgentError> {
    let key = key_source(name, cfg)?;
    let opts = StoreOptions::default();
    if cfg.kind == DatastoreKind::Local {
        let path = cfg.path.as_deref().unwrap_or(std::path::Path::new("."));
        if path.exists() {
            return Ok(false);
        }
        match &key {
            None => {
                Datastore::create_on(backend(cfg)?, opts)?;
            }
            Some(k) => {
                Datastore::create_encrypted(path, k, opts)?;
            }
        }
        return Ok(true);
    }
    let backend = backend(cfg)?;
    if backend.exists(standby_store::MARKER_FILE)? {
        return Ok(false);
    }
    match &key {
        None => {
            Datastore::create_on(backend, opts)?;
        }
        Some(k) => {
            Datastore::create_encrypted_on(backend, k, opts)?;
        }
    }
    Ok(true)
}
