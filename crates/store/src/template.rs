//! Templates: a point kept under a name, to make new VMs from
//! (`standby template create`, `standby vm create --template`).
//!
//! `templates/<name>.json` holds a [`Template`]: its name, when it was
//! made, the point it was made from, and that point's manifest as this
//! datastore has it. It names the point's index chunks, so it shares
//! every chunk with the point: making a template copies no data.
//!
//! - gc marks from templates as from manifests (a template keeps its
//!   chunks after its point is pruned); prune reads `manifests/` only,
//!   so retention never removes a template; verify checks a template's
//!   chunks like a point's.
//! - The object is authenticated like a manifest, under its own path:
//!   sealed whole in an encrypted store (associated data: a template
//!   prefix and the path, so a manifest never opens as a template nor a
//!   template under another name), a keyed MAC in an unencrypted one.
//! - A copy to another datastore ([`Datastore::sync_template`]) copies
//!   the chunks the destination lacks, as a point's sync does, and
//!   publishes the template last.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::datastore::{Datastore, SyncStats};
use crate::manifest::{DiskEntry, Manifest, PointId, canonical_json, valid_vm_name};
use crate::packer::Packer;
use crate::progress::Progress;
use crate::restore::RestoreStats;
use crate::seal::{self, CIPHER_NAME};

pub const TEMPLATE_VERSION: u32 = 1;
const PREFIX: &str = "templates";

/// A named copy of a point's manifest (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub version: u32,
    pub name: String,
    pub created: DateTime<Utc>,
    /// The point it was made from.
    pub source: PointId,
    /// That point's manifest as this datastore holds it: the VM's
    /// configuration at the point (`config`) and its disks.
    pub point: Manifest,
}

/// Template names follow VM names: letters, digits, '_' and '-'.
pub fn valid_template_name(name: &str) -> bool {
    valid_vm_name(name)
}

/// Object path of template `name`.
pub fn template_path(name: &str) -> String {
    format!("{PREFIX}/{name}.json")
}

fn name_of_path(path: &str) -> Option<&str> {
    path.strip_prefix("templates/")?.strip_suffix(".json")
}

impl Template {
    pub fn disk(&self, name: &str) -> Option<&DiskEntry> {
        self.point.disk(name)
    }

    /// Sum of the disks' sizes.
    pub fn size(&self) -> u64 {
        self.point.disks.iter().map(|d| d.size).sum()
    }

    fn checked(self, path: &str) -> Result<Template, String> {
        if self.version != TEMPLATE_VERSION {
            return Err(format!("unsupported template version {}", self.version));
        }
        if name_of_path(path) != Some(self.name.as_str()) {
            return Err(format!("holds template {} at the wrong path", self.name));
        }
        if self.point.id != self.source {
            return Err(format!(
                "names point {} but holds the manifest of {}",
                self.source, self.point.id
            ));
        }
        let point = self.point.checked()?;
        Ok(Template { point, ..self })
    }
}

#[derive(Serialize, Deserialize)]
struct SealedTemplate {
    format: u32,
    encryption: String,
    /// Hex of nonce | ciphertext | tag.
    sealed: String,
}

const SEALED_FORMAT: u32 = 1;
/// Prefix of a template's associated data (its object path follows).
const TEMPLATE_AD: &[u8] = b"standby template v1\0";
const MAC_FIELD: &str = "mac";

fn template_ad(path: &str) -> Vec<u8> {
    let mut ad = TEMPLATE_AD.to_vec();
    ad.extend_from_slice(path.as_bytes());
    ad
}

impl Datastore {
    /// The bytes of template `t`'s object in this datastore's scheme.
    fn encode_template(&self, t: &Template) -> Result<Vec<u8>, StoreError> {
        let path = template_path(&t.name);
        let json_error = |source| StoreError::Json {
            what: format!("template {}", t.name),
            source,
        };
        let mut value = serde_json::to_value(t).map_err(json_error)?;
        if let Some(crypto) = self.crypto() {
            let json = serde_json::to_vec(&value).map_err(json_error)?;
            value = serde_json::to_value(SealedTemplate {
                format: SEALED_FORMAT,
                encryption: CIPHER_NAME.into(),
                sealed: hex::encode(seal::seal_with(
                    crypto.data_cipher(),
                    &template_ad(&path),
                    &json,
                )),
            })
            .map_err(json_error)?;
        } else if let Some(auth) = self.auth() {
            // Under the template's own path: a manifest's MAC never
            // checks here.
            let mac = auth.manifest_mac(&path, canonical_json(&value).as_bytes());
            if let Some(map) = value.as_object_mut() {
                map.insert(MAC_FIELD.into(), mac.to_hex().to_string().into());
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&value).map_err(json_error)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse and check the template object at `path`.
    fn decode_template(&self, path: &str, bytes: &[u8]) -> Result<Template, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
        let sealed = value.get("sealed").is_some();
        if let Some(crypto) = self.crypto() {
            let envelope: SealedTemplate = serde_json::from_value(value)
                .map_err(|_| "not a sealed template: unencrypted or damaged".to_string())?;
            if envelope.format != SEALED_FORMAT || envelope.encryption != CIPHER_NAME {
                return Err(format!(
                    "unsupported sealed template format {} ({})",
                    envelope.format, envelope.encryption
                ));
            }
            let sealed = hex::decode(&envelope.sealed).map_err(|_| "sealed part is not hex")?;
            let json = seal::open_with(crypto.data_cipher(), &template_ad(path), &sealed)
                .map_err(|_| {
                    "authentication failed: altered, moved from another name or sealed with another key"
                        .to_string()
                })?;
            value = serde_json::from_slice(&json).map_err(|e| format!("invalid json: {e}"))?;
        } else if sealed {
            return Err("template is encrypted, the datastore is not".into());
        } else if let Some(auth) = self.auth() {
            let mac = value.as_object_mut().and_then(|m| m.remove(MAC_FIELD));
            let Some(serde_json::Value::String(mac)) = mac else {
                return Err("no MAC: planted, or written by another standby".into());
            };
            let mut given = [0u8; 32];
            hex::decode_to_slice(&mac, &mut given).map_err(|_| "MAC is not 64 hex digits")?;
            if auth.manifest_mac(path, canonical_json(&value).as_bytes())
                != blake3::Hash::from(given)
            {
                return Err(
                    "MAC mismatch: planted, altered, moved from another name or written with another store key"
                        .into(),
                );
            }
        }
        serde_json::from_value::<Template>(value)
            .map_err(|e| format!("invalid json: {e}"))?
            .checked(path)
    }

    fn read_template_at(&self, path: &str) -> Result<Template, StoreError> {
        let bytes = self.backend().get(path)?;
        self.decode_template(path, &bytes)
            .map_err(|reason| StoreError::BadTemplate {
                path: self.root().join(path),
                reason,
            })
    }

    fn check_template_name(name: &str) -> Result<(), StoreError> {
        if valid_template_name(name) {
            Ok(())
        } else {
            Err(StoreError::InvalidTemplateName(name.to_string()))
        }
    }

    /// Write `t` create-only; true when a template of that name is
    /// there already (nothing written).
    fn publish_template(&self, t: &Template) -> Result<bool, StoreError> {
        match self
            .backend()
            .put_new(&template_path(&t.name), &self.encode_template(t)?)
        {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        }
    }

    /// Make template `name` from point `source` of this datastore: one
    /// small object naming the point's chunks, none copied.
    pub fn create_template(&self, name: &str, source: &PointId) -> Result<Template, StoreError> {
        Self::check_template_name(name)?;
        // Held like a writer from reading the point to publishing: gc
        // cannot run between, so the chunks the template names stay.
        let lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let epoch = self.catalog().epoch();
        if self.has_template(name)? {
            return Err(StoreError::TemplateExists(
                name.to_string(),
                self.root().to_path_buf(),
            ));
        }
        let point = self.load_manifest(source)?;
        let t = Template {
            version: TEMPLATE_VERSION,
            name: name.to_string(),
            created: Utc::now().trunc_subsecs(3),
            source: source.clone(),
            point,
        };
        self.check_not_robbed(&lock, &epoch, source)?;
        if self.publish_template(&t)? {
            return Err(StoreError::TemplateExists(
                name.to_string(),
                self.root().to_path_buf(),
            ));
        }
        tracing::info!(template = name, point = %source, store = %self.root().display(), "template created");
        Ok(t)
    }

    pub fn has_template(&self, name: &str) -> Result<bool, StoreError> {
        Self::check_template_name(name)?;
        self.backend().exists(&template_path(name))
    }

    pub fn load_template(&self, name: &str) -> Result<Template, StoreError> {
        Self::check_template_name(name)?;
        match self.read_template_at(&template_path(name)) {
            Err(e) if e.is_not_found() => Err(StoreError::TemplateNotFound(
                name.to_string(),
                self.root().to_path_buf(),
            )),
            other => other,
        }
    }

    /// Every template, by name. An unreadable one is an error naming it
    /// ([`Datastore::scan_templates`] lists the rest instead).
    pub fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        let (found, mut bad) = self.scan_templates()?;
        match bad.is_empty() {
            true => Ok(found),
            false => Err(bad.swap_remove(0)),
        }
    }

    /// Every template that reads, by name, and the error of each that
    /// does not.
    pub fn scan_templates(&self) -> Result<(Vec<Template>, Vec<StoreError>), StoreError> {
        let (mut found, mut bad) = (Vec::new(), Vec::new());
        for o in self.backend().list(PREFIX)? {
            if name_of_path(&o.path).is_none() {
                continue;
            }
            match self.read_template_at(&o.path) {
                Ok(t) => found.push(t),
                // Deleted since the listing.
                Err(e) if e.is_not_found() => {}
                Err(e) => bad.push(e),
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((found, bad))
    }

    /// Forget template `name`; its chunks go at the next gc unless a
    /// point or another template names them. False when there was none.
    pub fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        Self::check_template_name(name)?;
        // Deletes are idempotent on some backends: asked first.
        if !self.has_template(name)? {
            return Ok(false);
        }
        match self.backend().delete(&template_path(name)) {
            Ok(()) => {
                tracing::info!(template = name, store = %self.root().display(), "template deleted");
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copy template `name` to `dst`: the chunks `dst` lacks, as a
    /// point's sync copies them, then the template. Between stores of
    /// different schemes the source point is synced (re-encoded) and the
    /// template made from its copy there; that needs the point here.
    pub fn sync_template(
        &self,
        name: &str,
        dst: &Datastore,
        progress: &dyn Progress,
    ) -> Result<SyncStats, StoreError> {
        let t = self.load_template(name)?;
        if dst.has_template(name)? {
            return Ok(SyncStats {
                already_present: true,
                ..SyncStats::default()
            });
        }
        if !self.same_scheme(dst) {
            if !self.has_point(&t.source)? {
                return Err(StoreError::TemplateCopy {
                    name: name.to_string(),
                    reason: format!(
                        "the destination {} is encrypted differently, so the chunks must be re-encoded through the point, and point {} is gone from {}",
                        dst.root().display(),
                        t.source,
                        self.root().display()
                    ),
                });
            }
            let stats = self.sync_point(&t.source, dst, progress)?;
            let _lock = dst.lock_shared()?;
            let point = dst.load_manifest(&t.source)?;
            dst.publish_template(&Template { point, ..t })?;
            return Ok(stats);
        }
        let mut stats = SyncStats::default();
        let _src_lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let dst_lock = dst.lock_shared()?;
        dst.refresh_after_gc()?;
        dst.rescan(false)?;
        let epoch = dst.catalog().epoch();
        progress.set_total(t.size());
        let mut packer = Packer::new(dst.clone());
        self.walk_stored(&t.point, crate::sync::SYNC_BATCH, progress, |ids, kind| {
            crate::sync::copy_batch(self, &mut packer, ids, kind, &mut stats)
        })?;
        let written = packer.finish()?;
        stats.chunks_verified = dst.check_written(&written)?;
        dst.check_not_robbed(&dst_lock, &epoch, &t.source)?;
        stats.already_present = dst.publish_template(&t)?;
        tracing::info!(template = name, dst = %dst.root().display(), ?stats, "template copied");
        Ok(stats)
    }

    /// Write disk `disk` of template `name` to `dest` (sparse: zero
    /// chunks are holes), as [`Datastore::restore_disk`] writes a point's.
    pub fn restore_template_disk(
        &self,
        name: &str,
        disk: &str,
        dest: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<RestoreStats, StoreError> {
        let _lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let t = self.load_template(name)?;
        let entry = t
            .disk(disk)
            .cloned()
            .ok_or_else(|| StoreError::DiskNotFound {
                point: format!("template {name}"),
                disk: disk.to_string(),
            })?;
        self.restore_entry(&entry, dest, progress)
            .map_err(|e| StoreError::Restore {
                point: format!("template {name}"),
                disk: disk.to_string(),
                source: Box::new(e),
            })
    }
}
