//! Recovery point manifests and their ids.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StoreError;
use crate::auth::StoreAuth;
use crate::chunk::ChunkId;
use crate::crypto::Crypto;
use crate::seal::{self, CIPHER_NAME};

pub const MANIFEST_VERSION: u32 = 1;
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `<vm>@<YYYYMMDDTHHMMSS.mmmZ>`, e.g. `pbx1@20261126T101500.123Z`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId(String);

pub fn valid_vm_name(vm: &str) -> bool {
    !vm.is_empty()
        && vm.len() <= 128
        && vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn valid_disk_name(disk: &str) -> bool {
    !disk.is_empty()
        && disk.len() <= 128
        && !disk.starts_with('.')
        && disk
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl PointId {
    pub fn new(vm: &str, time: DateTime<Utc>) -> Result<PointId, StoreError> {
        if !valid_vm_name(vm) {
            return Err(StoreError::InvalidVmName(vm.to_string()));
        }
        Ok(PointId(format!("{vm}@{}", time.format(TIME_FORMAT))))
    }

    pub fn vm(&self) -> &str {
        self.0.split_once('@').map_or("", |(vm, _)| vm)
    }

    /// The time part, as written in the id and in the manifest file name.
    pub fn time_str(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, t)| t)
    }

    pub fn time(&self) -> DateTime<Utc> {
        parse_time(self.time_str()).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Object path of the manifest.
    pub fn manifest_path(&self) -> String {
        format!("manifests/{}/{}.json", self.vm(), self.time_str())
    }

    /// The point whose manifest is at `path`, if the path is well formed.
    pub fn from_manifest_path(path: &str) -> Option<PointId> {
        let rest = path.strip_prefix("manifests/")?;
        let (vm, file) = rest.split_once('/')?;
        let time = file.strip_suffix(".json")?;
        format!("{vm}@{time}").parse().ok()
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PointId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::InvalidPointId(s.to_string());
        let (vm, time) = s.split_once('@').ok_or_else(bad)?;
        if !valid_vm_name(vm) || time.len() != 20 {
            return Err(bad());
        }
        let parsed = parse_time(time).ok_or_else(bad)?;
        // Only the canonical spelling, so ids compare as strings.
        if parsed.format(TIME_FORMAT).to_string() != time {
            return Err(bad());
        }
        Ok(PointId(s.to_string()))
    }
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How consistent the disks of a point are with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// As if the VM lost power.
    Crash,
    /// The guest flushed its applications first.
    Application,
}

/// What the caller says about a new point.
#[derive(Debug, Clone)]
pub struct PointMeta {
    pub vm: String,
    pub site: String,
    pub consistency: Consistency,
    pub config: serde_json::Value,
    pub labels: BTreeMap<String, String>,
}

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskEntry {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Chunk ids per index chunk (the last one may hold fewer).
    pub ids_per_index_chunk: u32,
    /// Index chunks, in disk order; the zero id stands for a run of
    /// all-zero chunks and is not stored.
    pub index: Vec<ChunkId>,
    /// Chunks of the disk, `ceil(size / chunk_size)`.
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Data chunks this point added to the store.
    pub new_chunks: u64,
    /// Stored (compressed) bytes this point added for this disk.
    pub new_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PointId>,
}

impl DiskEntry {
    /// Number of chunk ids the `i`th index chunk holds.
    pub fn ids_in_index_chunk(&self, i: usize) -> usize {
        let per = u64::from(self.ids_per_index_chunk);
        let start = i as u64 * per;
        self.chunks.saturating_sub(start).min(per) as usize
    }

    /// Plaintext length of chunk `i`.
    pub fn chunk_len(&self, i: u64) -> usize {
        let cs = u64::from(self.chunk_size);
        (self.size - i * cs).min(cs) as usize
    }
}

/// A recovery point: written last, it makes the point visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: PointId,
    pub vm: String,
    pub site: String,
    pub time: DateTime<Utc>,
    pub consistency: Consistency,
    pub config: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    pub disks: Vec<DiskEntry>,
    /// BLAKE3 (hex) of the canonical JSON of the manifest without this field.
    #[serde(default)]
    pub checksum: String,
}

impl Manifest {
    pub(crate) fn new(
        id: PointId,
        meta: PointMeta,
        time: DateTime<Utc>,
        disks: Vec<DiskEntry>,
    ) -> Manifest {
        let mut m = Manifest {
            version: MANIFEST_VERSION,
            id,
            vm: meta.vm,
            site: meta.site,
            time: time.trunc_subsecs(3),
            consistency: meta.consistency,
            config: meta.config,
            labels: meta.labels,
            disks,
            checksum: String::new(),
        };
        m.checksum = m.compute_checksum();
        m
    }

    /// The same point with other disks: re-encoded for another datastore.
    pub(crate) fn with_disks(&self, disks: Vec<DiskEntry>) -> Manifest {
        let mut m = Manifest {
            disks,
            checksum: String::new(),
            ..self.clone()
        };
        m.checksum = m.compute_checksum();
        m
    }

    pub fn disk(&self, name: &str) -> Option<&DiskEntry> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// Canonical bytes: the JSON value with sorted keys and no checksum.
    pub fn compute_checksum(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("checksum");
        }
        let canonical = canonical_json(&value);
        blake3::hash(canonical.as_bytes()).to_hex().to_string()
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| StoreError::Json {
            what: format!("manifest of point {}", self.id),
            source,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse and check a manifest; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
        m.checked()
    }

    /// The checks of [`Manifest::from_bytes`] on a parsed manifest.
    pub(crate) fn checked(self) -> Result<Manifest, String> {
        let m = self;
        if m.version != MANIFEST_VERSION {
            return Err(format!("unsupported manifest version {}", m.version));
        }
        if m.checksum != m.compute_checksum() {
            return Err("checksum mismatch".into());
        }
        if m.id.vm() != m.vm || m.id.time() != m.time {
            return Err(format!("id {} does not match vm and time", m.id));
        }
        check_limits(&m)?;
        for d in &m.disks {
            let cs = u64::from(d.chunk_size);
            if !crate::limits::valid_chunk_size(d.chunk_size)
                || d.ids_per_index_chunk == 0
                || d.chunks != d.size.div_ceil(cs)
                || d.index.len() as u64 != d.chunks.div_ceil(u64::from(d.ids_per_index_chunk))
            {
                return Err(format!("disk '{}' has inconsistent sizes", d.name));
            }
        }
        Ok(m)
    }
}

/// Refuse a manifest whose stated sizes are past the limits of
/// `limits.rs`, before anything is allocated from them.
fn check_limits(m: &Manifest) -> Result<(), String> {
    use crate::limits::{MAX_DISK_CHUNKS, MAX_DISK_SIZE, MAX_DISKS};
    if m.disks.len() > MAX_DISKS {
        return Err(format!(
            "{} disks: more than the limit of {MAX_DISKS}",
            m.disks.len()
        ));
    }
    for d in &m.disks {
        if d.size > MAX_DISK_SIZE {
            return Err(format!(
                "disk '{}' claims {} bytes: more than the limit of {MAX_DISK_SIZE}",
                d.name, d.size
            ));
        }
        if d.chunks > MAX_DISK_CHUNKS {
            return Err(format!(
                "disk '{}' claims {} chunks: more than the limit of {MAX_DISK_CHUNKS}",
                d.name, d.chunks
            ));
        }
        if d.ids_per_index_chunk as usize != crate::index::IDS_PER_INDEX_CHUNK {
            return Err(format!(
                "disk '{}' has {} ids per index chunk: every index chunk holds {}",
                d.name,
                d.ids_per_index_chunk,
                crate::index::IDS_PER_INDEX_CHUNK
            ));
        }
    }
    Ok(())
}

/// A manifest in an encrypted datastore: its JSON (as in an unencrypted
/// one) sealed with the data key, the object path as associated data.
#[derive(Serialize, Deserialize)]
struct SealedManifest {
    format: u32,
    encryption: String,
    /// Hex of nonce | ciphertext | tag.
    sealed: String,
}

const SEALED_MANIFEST_FORMAT: u32 = 1;
/// Prefix of a manifest's associated data (its object path follows).
const MANIFEST_AD: &[u8] = b"standby manifest v1\0";

/// Associated data of the manifest at object path `path`.
fn manifest_ad(path: &str) -> Vec<u8> {
    let mut ad = MANIFEST_AD.to_vec();
    ad.extend_from_slice(path.as_bytes());
    ad
}

impl Manifest {
    /// The bytes of the manifest object: its JSON, sealed when `crypto`
    /// is given (an encrypted store).
    pub(crate) fn to_object(
        &self,
        crypto: Option<&Crypto>,
        auth: Option<&StoreAuth>,
    ) -> Result<Vec<u8>, StoreError> {
        let Some(crypto) = crypto else {
            return match auth {
                Some(auth) => self.to_authenticated(auth),
                None => self.to_bytes(),
            };
        };
        let json = self.to_bytes()?;
        let path = self.id.manifest_path();
        let envelope = SealedManifest {
            format: SEALED_MANIFEST_FORMAT,
            encryption: CIPHER_NAME.into(),
            sealed: hex::encode(seal::seal_with(
                crypto.data_cipher(),
                &manifest_ad(&path),
                &json,
            )),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&envelope).map_err(|source| StoreError::Json {
                what: format!("manifest of point {}", self.id),
                source,
            })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse and check the manifest object at `path`, opening its seal
    /// when `crypto` is given; a sealed manifest without it (or a plain
    /// one with it) is an error.
    pub(crate) fn from_object(
        path: &str,
        bytes: &[u8],
        crypto: Option<&Crypto>,
        auth: Option<&StoreAuth>,
    ) -> Result<Manifest, String> {
        let envelope = || serde_json::from_slice::<SealedManifest>(bytes).ok();
        let Some(crypto) = crypto else {
            let parsed = match auth {
                Some(auth) => Manifest::from_authenticated(path, bytes, auth),
                None => Manifest::from_bytes(bytes),
            };
            return parsed.map_err(|e| match envelope() {
                Some(_) => "manifest is encrypted, the datastore is not".into(),
                None => e,
            });
        };
        let Some(envelope) = envelope() else {
            return Err("not a sealed manifest: unencrypted or damaged".into());
        };
        if envelope.format != SEALED_MANIFEST_FORMAT || envelope.encryption != CIPHER_NAME {
            return Err(format!(
                "unsupported sealed manifest format {} ({})",
                envelope.format, envelope.encryption
            ));
        }
        let sealed = hex::decode(&envelope.sealed).map_err(|_| "sealed part is not hex")?;
        let json = seal::open_with(crypto.data_cipher(), &manifest_ad(path), &sealed).map_err(
            |_| {
                "authentication failed: altered, moved from another point or sealed with another key"
                    .to_string()
            },
        )?;
        Manifest::from_bytes(&json)
    }
}

/// Manifests of an unencrypted, authenticated store: the JSON with a
/// `"mac"` field (see `auth.rs`).
impl Manifest {
    fn to_authenticated(&self, auth: &StoreAuth) -> Result<Vec<u8>, StoreError> {
        let json_error = |source| StoreError::Json {
            what: format!("manifest of point {}", self.id),
            source,
        };
        let mut value = serde_json::to_value(self).map_err(json_error)?;
        let mac = auth.manifest_mac(&self.id.manifest_path(), canonical_json(&value).as_bytes());
        if let Some(map) = value.as_object_mut() {
            map.insert(MAC_FIELD.into(), mac.to_hex().to_string().into());
        }
        let mut bytes = serde_json::to_vec_pretty(&value).map_err(json_error)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parse the manifest at object `path`; its MAC must check under
    /// `auth` before anything else in it is believed.
    fn from_authenticated(path: &str, bytes: &[u8], auth: &StoreAuth) -> Result<Manifest, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
        let mac = value.as_object_mut().and_then(|m| m.remove(MAC_FIELD));
        let Some(serde_json::Value::String(mac)) = mac else {
            return Err("no MAC: planted, or written before the datastore was upgraded".into());
        };
        let mut given = [0u8; 32];
        hex::decode_to_slice(&mac, &mut given).map_err(|_| "MAC is not 64 hex digits")?;
        // blake3::Hash compares in constant time.
        if auth.manifest_mac(path, canonical_json(&value).as_bytes()) != blake3::Hash::from(given) {
            return Err(
                "MAC mismatch: planted, altered, moved from another point or written with another store key"
                    .into(),
            );
        }
        serde_json::from_value::<Manifest>(value)
            .map_err(|e| format!("invalid json: {e}"))?
            .checked()
    }
}

/// The field of a manifest's MAC in an authenticated unencrypted store.
const MAC_FIELD: &str = "mac";

/// JSON with object keys sorted, whatever map type serde_json was built with.
pub(crate) fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let time = DateTime::parse_from_rfc3339("2026-11-26T10:15:00.123Z")
            .unwrap()
            .to_utc();
        let id = PointId::new("pbx1", time).unwrap();
        let meta = PointMeta {
            vm: "pbx1".into(),
            site: "site1".into(),
            consistency: Consistency::Application,
            config: serde_json::json!({"memory_mb": 2048, "b": [1, {"z": 1, "a": 2}]}),
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
        };
        let disk = DiskEntry {
            name: "data".into(),
            size: 3 * 65536 + 1,
            chunk_size: 65536,
            ids_per_index_chunk: 2048,
            index: vec![ChunkId::hash(b"x")],
            chunks: 4,
            zero_chunks: 1,
            new_chunks: 3,
            new_bytes: 100,
            base: None,
        };
        Manifest::new(id, meta, time, vec![disk])
    }

    #[test]
    fn point_id_format() {
        let id: PointId = "pbx1@20261126T101500.123Z".parse().unwrap();
        assert_eq!(id.vm(), "pbx1");
        assert_eq!(id.to_string(), "pbx1@20261126T101500.123Z");
        assert_eq!(
            id.manifest_path(),
            "manifests/pbx1/20261126T101500.123Z.json"
        );
        assert_eq!(
            PointId::from_manifest_path(&id.manifest_path()),
            Some(id.clone())
        );
        assert_eq!(id.time().timestamp_subsec_millis(), 123);
        for bad in [
            "pbx1",
            "pb x@20261126T101500.123Z",
            "a/b@20261126T101500.123Z",
            "x@20261126T101500Z",
            "x@20261326T101500.123Z",
            "@20261126T101500.123Z",
        ] {
            assert!(bad.parse::<PointId>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"pbx1@20261126T101500.123Z\""
        );
    }

    #[test]
    fn manifest_round_trip_and_checksum() {
        let m = sample();
        let bytes = m.to_bytes().unwrap();
        let back = Manifest::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"consistency\": \"application\""));
        // Any changed value is detected.
        let tampered = text.replace("\"gold\"", "\"gild\"");
        assert_eq!(
            Manifest::from_bytes(tampered.as_bytes()).unwrap_err(),
            "checksum mismatch"
        );
        let tampered = text.replace("2048,", "2049,");
        assert!(Manifest::from_bytes(tampered.as_bytes()).is_err());
        // Flipping any single byte never passes.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if b[i].is_ascii_whitespace() && bytes[i].is_ascii_whitespace() {
                continue;
            }
            assert!(
                Manifest::from_bytes(&b).is_err(),
                "flip at {i}: {}",
                String::from_utf8_lossy(&b)
            );
        }
    }
}
