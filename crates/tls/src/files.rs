//! Reading PEM files, and writing files so that a reader never sees half
//! of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Mode of private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates and the trust bundle.
pub(crate) const CERT_MODE: u32 = 0o644;

/// Replace `path` with `contents`: [`stage`], [`Staged::commit`], then
/// sync the directory so the rename lasts.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    stage(path, contents, mode)?.commit()?;
    sync_dir(path)
}

/// A file written next to its destination, not yet in place. Dropped
/// uncommitted, it is removed.
pub(crate) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

/// Write `contents` to a temporary file beside `path`, created with `mode`
/// before anything is written to it, and synced.
pub(crate) fn stage(path: &Path, contents: &[u8], mode: u32) -> Result<Staged> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir_of(path).join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        done: false,
    };
    let write = |tmp: &Path| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    // On error, dropping `staged` removes what was written.
    write(&staged.tmp).map_err(Error::io("write", &staged.tmp))?;
    Ok(staged)
}

impl Staged {
    /// Rename the temporary file over the destination.
    pub(crate) fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).map_err(Error::io("replace", &self.path))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Sync the directory of `path` (after renames into it).
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = dir_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync", dir))
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Every CERTIFICATE of a PEM file, in order; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).map_err(Error::io("read", path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE in it".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).map_err(Error::io("read", path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_write_replaces_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.key");
        write_atomic(&p, b"one", KEY_MODE).unwrap();
        write_atomic(&p, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unreadable_pem_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pem");
        fs::write(&p, "garbage").unwrap();
        let e = read_certs(&p).unwrap_err().to_string();
        assert!(e.contains("a.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = read_key(&p).unwrap_err().to_string();
        assert!(
            e.starts_with("unable to parse") && e.contains("a.pem"),
            "{e}"
        );
    }
}
