//! The configuration as the API shows it: secrets written inline (an
//! agent's `token`) are replaced by a fingerprint, so a change to one is
//! visible in a comparison without the secret leaving the controller.

use std::hash::{Hash, Hasher};

use serde_json::Value;

use super::Config;

/// Fields whose value is a secret.
const SECRETS: &[&str] = &["token"];

/// `cfg` as JSON with every secret replaced by `redacted:FINGERPRINT`.
pub fn redacted(cfg: &Config) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    redact(&mut v);
    v
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if SECRETS.contains(&k.as_str())
                    && let Value::String(s) = x
                {
                    *x = Value::String(fingerprint(s));
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Not a hash to rely on against an attacker (the secret is random and
/// long): enough to tell two values apart in a comparison.
fn fingerprint(secret: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    secret.hash(&mut h);
    format!("redacted:{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_token_is_replaced_by_its_fingerprint() {
        let text = "[controller]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[sites.s1]\n[agents.a1]\nsite = \"s1\"\ntoken = \"very-secret-0123456789\"\n";
        let cfg = Config::parse(text, std::path::Path::new("/x/standby.toml")).unwrap();
        let v = redacted(&cfg);
        let shown = v.to_string();
        assert!(!shown.contains("very-secret"), "{shown}");
        let t = v["agents"]["a1"]["token"].as_str().unwrap();
        assert!(t.starts_with("redacted:"), "{t}");
        let other = Config::parse(
            &text.replace("very-secret", "another-one"),
            std::path::Path::new("/x/standby.toml"),
        )
        .unwrap();
        assert_ne!(redacted(&other)["agents"]["a1"]["token"], t);
    }
}
