//! HMAC-SHA256 signatures of webhook requests, with a timestamp and a
//! nonce so a recorded request cannot be replayed.
//!
//! # Format
//! ```text
//! X-Standby-Timestamp: 1764979200              (Unix seconds, when signed)
//! X-Standby-Nonce: 9f86d081884c7d659a2feaa0c55ad015   (16 to 64 of [A-Za-z0-9_-])
//! X-Standby-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<nonce>.<body>")>
//! ```
//! A receiver ([`ReplayGuard::check`]) refuses a timestamp more than
//! [`MAX_SKEW`] away from its clock (stale, or from the future), a wrong
//! signature, and a nonce it accepted already within that window (a
//! replay). Nonces are remembered for the window only: an older request
//! is refused by its timestamp instead.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header that carries [`sign`]'s value.
pub const SIGNATURE_HEADER: &str = "X-Standby-Signature";
/// Header that carries the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Standby-Timestamp";
/// Header that carries the request's nonce.
pub const NONCE_HEADER: &str = "X-Standby-Nonce";
/// How far a request's timestamp may be from the receiver's clock, either
/// way (seconds).
pub const MAX_SKEW: i64 = 300;

const PREFIX: &str = "sha256=";

fn mac(secret: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp}.{nonce}.").as_bytes());
    mac.update(body);
    mac
}

/// A fresh nonce: 128 random bits, hex.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The signature header value:
/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<nonce>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(mac(secret, timestamp, nonce, body).finalize().into_bytes())
    )
}

/// Whether `header` is the signature of (`timestamp`, `nonce`, `body`)
/// under `secret`; the comparison takes constant time. Says nothing of
/// freshness: see [`ReplayGuard`].
pub fn verify(secret: &[u8], timestamp: i64, nonce: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(PREFIX) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, timestamp, nonce, body)
        .verify_slice(&sig)
        .is_ok()
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("bad {TIMESTAMP_HEADER} header '{0}': Unix seconds expected")]
    BadTimestamp(String),
    #[error("bad {NONCE_HEADER} header: 16 to 64 letters, digits, '-' or '_' expected")]
    BadNonce,
    #[error(
        "stale request: {TIMESTAMP_HEADER} is {skew} s from this server's clock (at most {MAX_SKEW} s allowed)"
    )]
    Stale { skew: i64 },
    #[error("bad {SIGNATURE_HEADER} header: not the HMAC of timestamp, nonce and body")]
    BadSignature,
    #[error("replayed request: nonce {0} was accepted already")]
    Replayed(String),
}

/// The three headers of a signed request, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signed<'a> {
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
}

fn nonce_ok(n: &str) -> bool {
    (16..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Nonces accepted within the last [`MAX_SKEW`] seconds, per key (e.g. a
/// runbook's name), to refuse a replay.
#[derive(Default)]
pub struct ReplayGuard {
    /// (key, nonce) → the request's timestamp.
    seen: Mutex<HashMap<(String, String), i64>>,
}

impl ReplayGuard {
    pub fn new() -> ReplayGuard {
        ReplayGuard::default()
    }

    /// Accept `body` with headers `h` for `key` at `now` (Unix seconds)
    /// once: the signature must be `secret`'s, the timestamp within
    /// [`MAX_SKEW`] of `now`, and the nonce new. The signature is checked
    /// before the nonce is remembered, so only the secret's holder fills
    /// the table.
    pub fn check(
        &self,
        key: &str,
        secret: &[u8],
        h: Signed<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let sig = h
            .signature
            .ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
        let ts = h
            .timestamp
            .ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
        let nonce = h.nonce.ok_or(SignatureError::Missing(NONCE_HEADER))?;
        let ts: i64 = ts
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp(ts.chars().take(32).collect()))?;
        if !nonce_ok(nonce) {
            return Err(SignatureError::BadNonce);
        }
        let skew = now.saturating_sub(ts);
        if skew.saturating_abs() > MAX_SKEW {
            return Err(SignatureError::Stale { skew });
        }
        if !verify(secret, ts, nonce, body, sig) {
            return Err(SignatureError::BadSignature);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, t| now.saturating_sub(*t) <= MAX_SKEW);
        let k = (key.to_string(), nonce.to_string());
        if seen.contains_key(&k) {
            return Err(SignatureError::Replayed(nonce.to_string()));
        }
        seen.insert(k, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2, with the timestamp and nonce in front.
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"1.n.what do ya want for nothing?");
        let want = format!("sha256={}", hex::encode(m.finalize().into_bytes()));
        assert_eq!(sign(b"Jefe", 1, "n", b"what do ya want for nothing?"), want);
    }

    #[test]
    fn verify_accepts_own_signature_only() {
        let body = br#"{"delivery":1}"#;
        let n = new_nonce();
        let sig = sign(b"s3cret", 100, &n, body);
        assert!(verify(b"s3cret", 100, &n, body, &sig));
        assert!(!verify(b"wrong", 100, &n, body, &sig));
        assert!(!verify(b"s3cret", 101, &n, body, &sig));
        assert!(!verify(b"s3cret", 100, &new_nonce(), body, &sig));
        assert!(!verify(b"s3cret", 100, &n, br#"{"delivery":2}"#, &sig));
        assert!(!verify(
            b"s3cret",
            100,
            &n,
            body,
            sig.trim_start_matches("sha256=")
        ));
        assert!(!verify(b"s3cret", 100, &n, body, "sha256=zz"));
        assert!(!verify(b"s3cret", 100, &n, body, "sha256="));
        assert!(!verify(b"s3cret", 100, &n, body, &sig[..sig.len() - 2]));
    }

    #[test]
    fn hardening_a_replay_and_a_stale_timestamp_are_refused() {
        let g = ReplayGuard::new();
        let body = b"{}";
        let now = 1_764_979_200;
        let n = new_nonce();
        let sig = sign(b"k", now, &n, body);
        let ts = now.to_string();
        let h = Signed {
            timestamp: Some(&ts),
            nonce: Some(&n),
            signature: Some(&sig),
        };
        assert_eq!(g.check("rb", b"k", h, body, now + 10), Ok(()));
        // The same request again: a replay.
        assert_eq!(
            g.check("rb", b"k", h, body, now + 20),
            Err(SignatureError::Replayed(n.clone()))
        );
        // Too old, or from too far in the future.
        assert_eq!(
            g.check("rb", b"k", h, body, now + 301),
            Err(SignatureError::Stale { skew: 301 })
        );
        assert_eq!(
            g.check("rb", b"k", h, body, now - 301),
            Err(SignatureError::Stale { skew: -301 })
        );
        // A moved timestamp breaks the signature.
        let later = (now + 5).to_string();
        let moved = Signed {
            timestamp: Some(&later),
            ..h
        };
        assert_eq!(
            g.check("rb", b"k", moved, body, now),
            Err(SignatureError::BadSignature)
        );
        // A bad signature does not burn the nonce.
        let n2 = new_nonce();
        let bad = Signed {
            nonce: Some(&n2),
            ..h
        };
        assert_eq!(
            g.check("rb", b"k", bad, body, now),
            Err(SignatureError::BadSignature)
        );
        let sig2 = sign(b"k", now, &n2, body);
        let good = Signed {
            signature: Some(&sig2),
            ..bad
        };
        assert_eq!(g.check("rb", b"k", good, body, now), Ok(()));
        // Missing headers are named.
        assert_eq!(
            g.check("rb", b"k", Signed::default(), body, now),
            Err(SignatureError::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            g.check(
                "rb",
                b"k",
                Signed {
                    nonce: Some("short"),
                    ..h
                },
                body,
                now
            ),
            Err(SignatureError::BadNonce)
        );
    }
}
