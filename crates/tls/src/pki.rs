//! standby's own certificate authority: a directory of PEM files.
//!
//! ```text
//! DIR/ca.pem              trust bundle: one CA certificate, or more during a CA rotation
//! DIR/ca.key              the current CA's key (PKCS#8, 0600)
//! DIR/ROLE-NAME.pem       a leaf certificate, then the CA certificate that issued it
//! DIR/ROLE-NAME.key       its key (PKCS#8, 0600)
//! ```
//!
//! Keys are ECDSA P-256. The CA's common name is `standby CA <id>`, `<id>`
//! the first 8 bytes (hex) of the SHA-256 of its public key: the issuer of
//! a new leaf is rebuilt from `ca.key` alone, with no X.509 parser. The
//! current CA's certificate is the one in `ca.pem` whose public key
//! verifies a signature made with `ca.key`.
//!
//! Every file is replaced atomically (see `files::write_atomic`), so a
//! process reloading its material never reads half a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SigningKey,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::der;
use crate::error::{Error, Result};
use crate::files::{self, CERT_MODE, KEY_MODE};
use crate::identity::Identity;

/// The trust bundle's file name.
pub const BUNDLE: &str = "ca.pem";
/// The current CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// Validity of a CA certificate.
pub const CA_DAYS: u32 = 3650;
/// Default validity of a leaf certificate.
pub const LEAF_DAYS: u32 = 365;

/// A leaf is valid from a little before it was made, for hosts whose
/// clocks are behind.
const BACKDATE: time::Duration = time::Duration::minutes(10);

/// The trust bundle of a PKI directory.
pub fn bundle_path(dir: &Path) -> PathBuf {
    dir.join(BUNDLE)
}

/// The certificate file of `who` in a PKI directory.
pub fn cert_path(dir: &Path, who: &Identity) -> PathBuf {
    dir.join(format!("{}.pem", who.file_stem()))
}

/// The key file of `who` in a PKI directory.
pub fn key_path(dir: &Path, who: &Identity) -> PathBuf {
    dir.join(format!("{}.key", who.file_stem()))
}

/// The SHA-256 of a DER certificate, in lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA made by [`init`] or [`init_rotate`].
#[derive(Debug, Clone)]
pub struct NewCa {
    pub bundle: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    /// CA certificates now in the bundle (2 after a rotation).
    pub trusted: usize,
}

/// Start a PKI in `dir`: a new CA, its certificate as the whole trust
/// bundle. Refuses if `dir` already has a CA key or a bundle.
pub fn init(dir: &Path) -> Result<NewCa> {
    for existing in [dir.join(CA_KEY), bundle_path(dir)] {
        if existing.exists() {
            return Err(Error::CaExists { path: existing });
        }
    }
    fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let (key, cert) = new_ca()?;
    let bundle = bundle_path(dir);
    files::write_atomic(&bundle, cert.pem().as_bytes(), CERT_MODE)?;
    let key_file = dir.join(CA_KEY);
    files::write_atomic(&key_file, key.serialize_pem().as_bytes(), KEY_MODE)?;
    tracing::info!(dir = %dir.display(), fingerprint = fingerprint(cert.der()), "new CA");
    Ok(NewCa {
        bundle,
        key: key_file,
        fingerprint: fingerprint(cert.der()),
        trusted: 1,
    })
}

/// Start a CA rotation: a new CA key replaces `ca.key` and its
/// certificate is appended to `ca.pem`. The old CAs stay trusted until
/// [`retire`]; leaves issued from now on come from the new CA.
pub fn init_rotate(dir: &Path) -> Result<NewCa> {
    let current = Ca::open(dir)?;
    let (key, cert) = new_ca()?;
    let mut text: String = current.bundle.iter().map(|c| c.pem.as_str()).collect();
    text.push_str(&cert.pem());
    let bundle = bundle_path(dir);
    // Bundle first: a crash in between leaves the old key current, and
    // the new CA merely trusted early.
    files::write_atomic(&bundle, text.as_bytes(), CERT_MODE)?;
    let key_file = dir.join(CA_KEY);
    files::write_atomic(&key_file, key.serialize_pem().as_bytes(), KEY_MODE)?;
    tracing::info!(dir = %dir.display(), fingerprint = fingerprint(cert.der()), "new CA, the old ones still trusted");
    Ok(NewCa {
        bundle,
        key: key_file,
        fingerprint: fingerprint(cert.der()),
        trusted: current.bundle.len() + 1,
    })
}

/// A leaf made by [`issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: Identity,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub not_after: SystemTime,
}

/// Issue (or reissue: the files are replaced atomically) the certificate
/// of `who`, valid for `days`, from the current CA of `dir`.
pub fn issue(dir: &Path, who: &Identity, days: u32) -> Result<Issued> {
    crate::identity::validate_name(&who.name)?;
    let ca = Ca::open(dir)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("a key"))?;
    let dns = who.dns_name();
    let mut params = CertificateParams::default();
    let san = dns.clone().try_into().map_err(gen_err(&dns))?;
    params.subject_alt_names = vec![SanType::DnsName(san)];
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, dns.clone());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(i64::from(days));
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(gen_err(&format!("the certificate of {dns}")))?;
    let (cert_file, key_file) = (cert_path(dir, who), key_path(dir, who));
    // Both written and synced before either is renamed: a process
    // reloading between the two renames (microseconds) sees a pair that
    // does not match, keeps its previous one and takes the new pair at
    // its next check.
    let chain = format!("{}{}", cert.pem(), ca.current().pem);
    let key_staged = files::stage(&key_file, key.serialize_pem().as_bytes(), KEY_MODE)?;
    let cert_staged = files::stage(&cert_file, chain.as_bytes(), CERT_MODE)?;
    key_staged.commit()?;
    cert_staged.commit()?;
    files::sync_dir(&cert_file)?;
    let fp = fingerprint(cert.der());
    tracing::info!(identity = %who, fingerprint = fp, "issued");
    Ok(Issued {
        identity: who.clone(),
        cert: cert_file,
        key: key_file,
        fingerprint: fp,
        not_after: params.not_after.into(),
    })
}

/// What [`retire`] did to the bundle.
#[derive(Debug, Clone)]
pub struct Retired {
    /// The current CA, now the only one trusted.
    pub kept: String,
    /// The CAs no longer trusted.
    pub removed: Vec<String>,
}

/// End a CA rotation: `ca.pem` keeps only the current CA. Run it once
/// every leaf, here and on every host, has been reissued: a leaf of a
/// retired CA is refused. Refuses while a leaf in `dir` is not issued by
/// the current CA, unless `force`.
pub fn retire(dir: &Path, force: bool) -> Result<Retired> {
    let ca = Ca::open(dir)?;
    if !force {
        let anchors = anchor(&ca.current().der, &bundle_path(dir))?;
        let stale: Vec<String> = leaf_files(dir)?
            .into_iter()
            .filter(|p| !files::read_certs(p).is_ok_and(|c| verify_leaf(&c[0], &anchors).is_ok()))
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        if !stale.is_empty() {
            return Err(Error::NotReissued { files: stale });
        }
    }
    let current = ca.current();
    files::write_atomic(&bundle_path(dir), current.pem.as_bytes(), CERT_MODE)?;
    let removed: Vec<String> = ca
        .bundle
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ca.current)
        .map(|(_, c)| fingerprint(&c.der))
        .collect();
    let kept = fingerprint(&current.der);
    tracing::info!(dir = %dir.display(), kept, removed = removed.len(), "retired old CAs");
    Ok(Retired { kept, removed })
}

/// A CA certificate of the bundle, as [`status`] shows it.
#[derive(Debug, Clone)]
pub struct CaStatus {
    pub fingerprint: String,
    pub not_after: Option<SystemTime>,
    /// Its key is `ca.key`: new leaves come from it.
    pub current: bool,
}

/// A certificate file of the directory, as [`status`] shows it.
#[derive(Debug, Clone)]
pub struct LeafStatus {
    pub file: PathBuf,
    /// From the file name, if it is `ROLE-NAME.pem`.
    pub identity: Option<Identity>,
    pub fingerprint: String,
    pub not_after: Option<SystemTime>,
    /// The fingerprint of the CA of the bundle it chains to, or why it
    /// chains to none (expired, unknown issuer, unreadable…).
    pub issuer: Result<String, String>,
}

/// The bundle and the leaves of a PKI directory.
#[derive(Debug, Clone)]
pub struct Status {
    pub cas: Vec<CaStatus>,
    pub leaves: Vec<LeafStatus>,
}

/// What is in `dir`: needs `ca.pem`; `ca.key` only to mark the current CA
/// (a host that was given the bundle but not the CA key has none).
pub fn status(dir: &Path) -> Result<Status> {
    let bundle = read_bundle(&bundle_path(dir))?;
    let current = match read_ca_key(dir) {
        Ok(key) => bundle.iter().position(|c| is_cert_of(&c.der, &key)),
        Err(_) => None,
    };
    let cas = bundle
        .iter()
        .enumerate()
        .map(|(i, c)| CaStatus {
            fingerprint: fingerprint(&c.der),
            not_after: der::not_after(&c.der),
            current: Some(i) == current,
        })
        .collect();
    let per_ca: Vec<_> = bundle
        .iter()
        .map(|c| anchor(&c.der, &bundle_path(dir)))
        .collect::<Result<_>>()?;
    let mut leaves = Vec::new();
    for file in leaf_files(dir)? {
        let identity = file
            .file_stem()
            .and_then(|s| Identity::from_file_stem(&s.to_string_lossy()));
        let certs = match files::read_certs(&file) {
            Ok(c) => c,
            Err(e) => {
                leaves.push(LeafStatus {
                    file,
                    identity,
                    fingerprint: String::new(),
                    not_after: None,
                    issuer: Err(e.to_string()),
                });
                continue;
            }
        };
        let leaf = &certs[0];
        let mut issuer = Err("no CA in the bundle".to_string());
        for (ca, anchors) in bundle.iter().zip(&per_ca) {
            match verify_leaf(leaf, anchors) {
                Ok(()) => {
                    issuer = Ok(fingerprint(&ca.der));
                    break;
                }
                Err(e) => issuer = Err(describe(&e)),
            }
        }
        leaves.push(LeafStatus {
            fingerprint: fingerprint(leaf),
            not_after: der::not_after(leaf),
            file,
            identity,
            issuer,
        });
    }
    Ok(Status { cas, leaves })
}

fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "expired".into(),
        webpki::Error::CertNotValidYet { .. } => "not valid yet".into(),
        webpki::Error::UnknownIssuer => "issued by no CA of the bundle".into(),
        e => format!("{e:?}"),
    }
}

/// A CA certificate of a bundle, with its PEM text as found.
struct CaCert {
    pem: String,
    der: CertificateDer<'static>,
}

/// The current CA of a directory: its key and the bundle it is in.
struct Ca {
    bundle: Vec<CaCert>,
    current: usize,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn open(dir: &Path) -> Result<Ca> {
        let key = read_ca_key(dir)?;
        let bundle_file = bundle_path(dir);
        let bundle = read_bundle(&bundle_file)?;
        let current = bundle.iter().position(|c| is_cert_of(&c.der, &key)).ok_or(
            Error::CurrentCaMissing {
                bundle: bundle_file,
                key: dir.join(CA_KEY),
            },
        )?;
        Ok(Ca {
            bundle,
            current,
            issuer: Issuer::new(ca_params(&key), key),
        })
    }

    fn current(&self) -> &CaCert {
        &self.bundle[self.current]
    }
}

fn read_ca_key(dir: &Path) -> Result<KeyPair> {
    let path = dir.join(CA_KEY);
    let pem = match fs::read_to_string(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoCa { path });
        }
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    KeyPair::from_pem(&pem).map_err(|e| Error::Parse {
        path,
        reason: e.to_string(),
    })
}

/// The CA certificates of a bundle, each with its own PEM block (kept as
/// written when the bundle is rewritten).
fn read_bundle(path: &Path) -> Result<Vec<CaCert>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = fs::read_to_string(path).map_err(Error::io("read", path))?;
    let bad = |reason: String| Error::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end = block
            .find(END)
            .ok_or_else(|| bad("a certificate has no END line".into()))?
            + END.len();
        let pem = format!("{}\n", &block[..end]);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        out.push(CaCert { pem, der });
        rest = &block[end..];
    }
    if out.is_empty() {
        return Err(bad("no CERTIFICATE in it".into()));
    }
    Ok(out)
}

fn new_ca() -> Result<(KeyPair, rcgen::Certificate)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("a CA key"))?;
    let mut params = ca_params(&key);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(i64::from(CA_DAYS));
    let cert = params
        .self_signed(&key)
        .map_err(gen_err("a CA certificate"))?;
    Ok((key, cert))
}

/// What a CA's certificate and its issuer have in common (name, key
/// identifier, usages), all derived from its key.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let id = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("standby CA {}", hex(&id.as_ref()[..8])),
    );
    // Leaves only: no intermediate CA below.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Whether `cert` carries the public key of `key`: it verifies a
/// signature made with the key.
fn is_cert_of(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    const PROBE: &[u8] = b"standby: the certificate of ca.key";
    let Ok(signature) = key.sign(PROBE) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| {
        c.verify_signature(webpki::ring::ECDSA_P256_SHA256, PROBE, &signature)
            .is_ok()
    })
}

/// A CA certificate of the bundle at `path` as a trust anchor.
fn anchor(ca: &CertificateDer<'_>, path: &Path) -> Result<Vec<TrustAnchor<'static>>> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: format!("not a CA certificate: {e:?}"),
    })?;
    Ok(vec![anchor.to_owned()])
}

/// Whether `leaf` chains to one of `anchors`, now, as a TLS client (our
/// leaves are good for both ends).
fn verify_leaf(
    leaf: &CertificateDer<'_>,
    anchors: &[TrustAnchor<'_>],
) -> Result<(), webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    cert.verify_for_usage(
        algs,
        anchors,
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

/// The leaf certificate files of a directory (`*.pem` but the bundle),
/// sorted.
fn leaf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(Error::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "pem")
                && p.file_name().is_some_and(|n| n != BUNDLE)
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Generate { what, source }
}
