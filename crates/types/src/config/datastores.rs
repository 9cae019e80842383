//! `[datastores.NAME]`: where protection points are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, duration_str};

impl DatastoreConfig {
    /// The slices of a verify cycle (at least 1), and the one due at
    /// `unix_secs`: slice `(unix_secs / verify_every) % slices`, so
    /// consecutive runs check consecutive slices and every chunk is read
    /// within `verify_cycle`. None: no scheduled verify.
    pub fn verify_slice(&self, unix_secs: u64) -> Option<(u32, u32)> {
        let every = self.verify_every.as_secs();
        if every == 0 {
            return None;
        }
        let slices = (self.verify_cycle.as_secs() / every).clamp(1, 10_000) as u32;
        Some((((unix_secs / every) % slices as u64) as u32, slices))
    }
}

/// Where a datastore keeps its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    /// A directory (`path`).
    #[default]
    Local,
    /// Azure Blob Storage: `account`, `container`, `access_key_env`.
    Azure,
    /// S3 or a compatible store: `bucket`, `region`, key variables.
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreConfig {
    pub site: String,
    /// The agent that serves this datastore (`[agents.NAME]` with a
    /// `url`, at the same site): only it opens the store, which the
    /// controller then never reads or writes itself. Points are written,
    /// copied, pruned and verified by that agent. Without it, the
    /// controller opens the store (the embedded default, object stores).
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub kind: DatastoreKind,
    /// Directory of a local datastore.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Azure: the storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Azure: the container.
    #[serde(default)]
    pub container: Option<String>,
    /// S3: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// S3: the region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Service endpoint, for Azurite, MinIO, moto or a private cloud.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where in the container or bucket the datastore lives.
    #[serde(default)]
    pub prefix: String,
    /// Azure: environment variable holding the account key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// S3: environment variables holding the key id and secret.
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// S3: allow plain HTTP to the endpoint (test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// Upload bandwidth limit per second, e.g. `"50MiB"`.
    #[serde(default)]
    pub upload_limit: Option<ByteSize>,
    /// Encrypt the datastore (set when it is created; needed to open it).
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// The store key of an unencrypted datastore: a key file (like
    /// `standby store keygen` writes) whose MACs authenticate its points,
    /// kept on the host that opens the store and never in it. Made when
    /// the store is created or upgraded, never again after; keep a copy.
    /// Default: `<path>.store-key` beside a local store,
    /// `<data_dir>/store-keys/<name>.store-key` for an object store.
    /// (Not serialized when unset, so a datastore without it reaches an
    /// agent exactly as before.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key_file: Option<PathBuf>,
    /// How often the controller verifies a slice of the datastore's chunks
    /// (default `1d`; `0s`: never by schedule).
    #[serde(default = "default_verify_every", with = "duration_str")]
    pub verify_every: Duration,
    /// Every chunk is re-read within this (default `30d`): each scheduled
    /// verify checks `verify_every / verify_cycle` of them, a different
    /// slice each time.
    #[serde(default = "default_verify_cycle", with = "duration_str")]
    pub verify_cycle: Duration,
}

fn default_verify_every() -> Duration {
    Duration::from_secs(86_400)
}

fn default_verify_cycle() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// `[datastores.NAME.encryption]`: where the key comes from. The key
/// itself is never written to the datastore in the clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A key file (32 random bytes, hex): `standby store keygen FILE`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding a passphrase (Argon2id).
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

impl DatastoreConfig {
    /// Where it lives, for people: a path or `azure://account/container/prefix`.
    pub fn location(&self) -> String {
        let with_prefix = |base: String| {
            if self.prefix.is_empty() {
                base
            } else {
                format!("{base}/{}", self.prefix.trim_matches('/'))
            }
        };
        match self.kind {
            DatastoreKind::Local => self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            DatastoreKind::Azure => with_prefix(format!(
                "azure://{}/{}",
                self.account.as_deref().unwrap_or(""),
                self.container.as_deref().unwrap_or("")
            )),
            DatastoreKind::S3 => {
                with_prefix(format!("s3://{}", self.bucket.as_deref().unwrap_or("")))
            }
        }
    }

    /// The problem with this datastore's settings, as (field, message).
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let need = |v: bool, f: &'static str| {
            if v {
                Ok(())
            } else {
                Err((f, format!("a {} datastore needs '{f}'", self.kind_name())))
            }
        };
        let refuse = |v: bool, f: &'static str| {
            if v {
                Err((
                    f,
                    format!("'{f}' does not apply to a {} datastore", self.kind_name()),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            DatastoreKind::Local => {
                need(self.path.is_some(), "path")?;
                refuse(self.account.is_some(), "account")?;
                refuse(self.container.is_some(), "container")?;
                refuse(self.bucket.is_some(), "bucket")?;
                refuse(self.endpoint.is_some(), "endpoint")?;
            }
            DatastoreKind::Azure => {
                refuse(self.path.is_some(), "path")?;
                refuse(self.bucket.is_some(), "bucket")?;
                need(self.account.is_some(), "account")?;
                need(self.container.is_some(), "container")?;
                need(self.access_key_env.is_some(), "access_key_env")?;
            }
            DatastoreKind::S3 => {
                refuse(self.path.is_some(), "path")?;
                refuse(self.container.is_some(), "container")?;
                need(self.bucket.is_some(), "bucket")?;
                need(self.access_key_id_env.is_some(), "access_key_id_env")?;
                need(
                    self.secret_access_key_env.is_some(),
                    "secret_access_key_env",
                )?;
            }
        }
        if let Some(e) = &self.encryption
            && e.key_file.is_some() == e.passphrase_env.is_some()
        {
            return Err((
                "encryption",
                "give exactly one of 'key_file' and 'passphrase_env'".into(),
            ));
        }
        Ok(())
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            DatastoreKind::Local => "local",
            DatastoreKind::Azure => "azure",
            DatastoreKind::S3 => "s3",
        }
    }
}
