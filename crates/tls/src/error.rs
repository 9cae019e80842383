//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong, and on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid name '{name}': {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("unable to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{} already exists: the directory has a CA", path.display())]
    CaExists { path: PathBuf },
    #[error("no CA key at {}", path.display())]
    NoCa { path: PathBuf },
    #[error("{} holds no certificate of the CA key in {}", bundle.display(), key.display())]
    CurrentCaMissing { bundle: PathBuf, key: PathBuf },
    #[error("unable to generate {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("not retiring: {} not issued by the current CA (reissue first)", files.join(", "))]
    NotReissued { files: Vec<String> },
    #[error("a client needs at least one expected server identity")]
    NoExpectedIdentity,
    #[error("certificate and key {} and {} do not go together", cert.display(), key.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("unable to build a verifier of the trust bundle {}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("unable to configure TLS")]
    Tls(#[source] rustls::Error),
    #[error("unable to build the HTTP client")]
    Client(#[source] reqwest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
