//! HMAC-SHA256 signatures of webhook bodies.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header that carries [`sign`]'s value.
pub const SIGNATURE_HEADER: &str = "X-Standby-Signature";

const PREFIX: &str = "sha256=";

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac
}

/// The signature header value: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(mac(secret, body).finalize().into_bytes())
    )
}

/// Whether `header` is the signature of `body` under `secret`; the
/// comparison takes constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(PREFIX) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, body).verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_own_signature_only() {
        let body = br#"{"delivery":1}"#;
        let sig = sign(b"s3cret", body);
        assert!(verify(b"s3cret", body, &sig));
        assert!(!verify(b"wrong", body, &sig));
        assert!(!verify(b"s3cret", br#"{"delivery":2}"#, &sig));
        assert!(!verify(b"s3cret", body, sig.trim_start_matches("sha256=")));
        assert!(!verify(b"s3cret", body, "sha256=zz"));
        assert!(!verify(b"s3cret", body, "sha256="));
        assert!(!verify(b"s3cret", body, &sig[..sig.len() - 2]));
    }
}
