//! A process's own TLS material (trust bundle, certificate chain, key),
//! reloaded when its files change.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use standby_types::error_chain;

use crate::error::{Error, Result};
use crate::files;
use crate::identity::Identity;
use crate::pki;

/// The files are looked at no more often than this.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The trust bundle, own certificate chain and key of a process, from
/// three files. Every handshake asks for the current material; at most
/// once per [`CHECK_INTERVAL`] that looks at the files' metadata and, if
/// one changed, reads all three again. Material that fails to load (a file
/// unreadable, a certificate and key that do not match) is refused with a
/// warning and the previous material stays in use: a bad file never
/// leaves a process without TLS.
pub struct Material {
    bundle: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    checked: Instant,
    stamps: Stamps,
    current: Arc<Loaded>,
}

/// What tells a file changed: a reissue renames a new file (inode) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

type Stamps = [Option<Stamp>; 3];

/// One consistent load of the material, with the verifiers of its bundle.
pub(crate) struct Loaded {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) fingerprint: String,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
}

impl Material {
    /// Load the material; unlike a reload, a failure here is an error.
    pub fn load(
        bundle: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Arc<Material>> {
        let (bundle, cert, key) = (bundle.into(), cert.into(), key.into());
        let provider = Arc::new(provider());
        let stamps = stamps(&[&bundle, &cert, &key]);
        let current = Arc::new(read(&bundle, &cert, &key, &provider)?);
        tracing::info!(
            cert = %cert.display(),
            fingerprint = current.fingerprint,
            "TLS material loaded"
        );
        Ok(Arc::new(Material {
            bundle,
            cert,
            key,
            provider,
            state: Mutex::new(State {
                checked: Instant::now(),
                stamps,
                current,
            }),
        }))
    }

    /// The files it is read from: the CA bundle, the certificate (with
    /// its chain) and the key (for a program that reads them itself, as
    /// QEMU's TLS does).
    pub fn paths(&self) -> (&Path, &Path, &Path) {
        (&self.bundle, &self.cert, &self.key)
    }

    /// The material of `who` in a PKI directory (see [`crate::pki`]).
    pub fn from_dir(dir: &Path, who: &Identity) -> Result<Arc<Material>> {
        Material::load(
            pki::bundle_path(dir),
            pki::cert_path(dir, who),
            pki::key_path(dir, who),
        )
    }

    /// The fingerprint of the certificate presented now.
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    /// Look at the files now, whenever they were last looked at.
    pub fn refresh(&self) {
        self.check(true);
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// The material to use now (the files looked at if it is time).
    pub(crate) fn current(&self) -> Arc<Loaded> {
        self.check(false)
    }

    fn check(&self, now: bool) -> Arc<Loaded> {
        // A panic elsewhere while holding the lock leaves a state that is
        // still whole: keep using it.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !now && state.checked.elapsed() < CHECK_INTERVAL {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamps = stamps(&[&self.bundle, &self.cert, &self.key]);
        if stamps == state.stamps {
            return state.current.clone();
        }
        // Recorded even when loading fails: one warning per change, and
        // the next change (the fixed file) is tried again.
        state.stamps = stamps;
        match read(&self.bundle, &self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %self.cert.display(),
                    fingerprint = loaded.fingerprint,
                    previous = state.current.fingerprint,
                    "TLS material reloaded"
                );
                state.current = Arc::new(loaded);
            }
            Err(e) => tracing::warn!(
                fingerprint = state.current.fingerprint,
                "TLS material not reloaded, the previous stays in use: {}",
                error_chain(&e)
            ),
        }
        state.current.clone()
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("bundle", &self.bundle)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn stamps(paths: &[&PathBuf; 3]) -> Stamps {
    paths.map(|p| {
        std::fs::metadata(p).ok().map(|m| Stamp {
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    })
}

fn read(bundle: &Path, cert: &Path, key: &Path, provider: &Arc<CryptoProvider>) -> Result<Loaded> {
    let cas = files::read_certs(bundle)?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| Error::Parse {
            path: bundle.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let verifier_err = |source| Error::Verifier {
        path: bundle.to_path_buf(),
        source,
    };
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(verifier_err)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(verifier_err)?;
    let chain = files::read_certs(cert)?;
    let fingerprint = pki::fingerprint(&chain[0]);
    let certified =
        CertifiedKey::from_der(chain, files::read_key(key)?, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source: e,
            },
            e => Error::Parse {
                path: key.to_path_buf(),
                reason: e.to_string(),
            },
        })?;
    Ok(Loaded {
        certified: Arc::new(certified),
        fingerprint,
        client_verifier,
        server_verifier,
    })
}

/// ring, with AES-128-GCM first: as safe for these links, and cheaper per
/// byte of a copy between agents than the default AES-256-GCM.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}
