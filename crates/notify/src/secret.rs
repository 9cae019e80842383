//! Reading secrets named by the configuration. The value never appears in
//! an error or a log line; only where it was looked for does.

use std::path::Path;

use crate::DeliveryError;

/// The secret from the environment variable `env` if given, else from
/// `file` (trailing newline removed); `None` when neither is configured.
/// `what` names the secret in errors, e.g. `webhook secret`.
pub(crate) fn read(
    receiver: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, DeliveryError> {
    let value = if let Some(var) = env {
        match std::env::var(var) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(DeliveryError::permanent(format!(
                    "receiver '{receiver}': {what} environment variable {var} is not set"
                )));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(DeliveryError::permanent(format!(
                    "receiver '{receiver}': {what} environment variable {var} is not valid UTF-8"
                )));
            }
        }
    } else if let Some(path) = file {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            DeliveryError::permanent(format!(
                "receiver '{receiver}': unable to read {what} file {}: {e}",
                path.display()
            ))
        })?;
        raw.trim_end_matches(['\n', '\r']).to_string()
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        let source = match (env, file) {
            (Some(var), _) => format!("environment variable {var}"),
            (None, Some(path)) => format!("file {}", path.display()),
            (None, None) => unreachable!("returned above"),
        };
        return Err(DeliveryError::permanent(format!(
            "receiver '{receiver}': {what} {source} is empty"
        )));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "abc def\r\n").unwrap();
        assert_eq!(
            read("r", "secret", None, Some(&path)).unwrap().as_deref(),
            Some("abc def")
        );
    }

    #[test]
    fn missing_sources_are_permanent_and_named() {
        let e = read(
            "r",
            "webhook secret",
            Some("STANDBY_NOTIFY_TEST_UNSET_VAR"),
            None,
        )
        .unwrap_err();
        assert!(!e.retryable);
        assert!(e.message.contains("STANDBY_NOTIFY_TEST_UNSET_VAR"), "{e}");
        let e = read(
            "r",
            "webhook secret",
            None,
            Some(Path::new("/nonexistent/standby-key")),
        )
        .unwrap_err();
        assert!(!e.retryable);
        assert!(e.message.contains("/nonexistent/standby-key"), "{e}");
        assert!(read("r", "webhook secret", None, None).unwrap().is_none());
    }

    #[test]
    fn empty_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n").unwrap();
        let e = read("r", "secret", None, Some(&path)).unwrap_err();
        assert!(e.message.contains("is empty"), "{e}");
    }
}
