//! The configuration as the API shows it: secrets written inline (an
//! agent's `token`, the password in `[controller] database`) are replaced
//! by a fingerprint, so a change to one is visible in a comparison without
//! the secret leaving the controller.

use std::hash::{Hash, Hasher};

use serde_json::Value;

use super::Config;

/// Fields whose value is a secret.
const SECRETS: &[&str] = &["token"];

/// Fields whose value is a URL that may hold a password.
const URLS: &[&str] = &["database"];

/// `cfg` as JSON with every secret replaced by `redacted:FINGERPRINT`:
/// what its file declares (groups made through the API left out; see
/// `standby config export`).
pub fn redacted(cfg: &Config) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(groups) = v.get_mut("groups").and_then(Value::as_object_mut) {
        for (name, _) in cfg.managed_groups() {
            groups.remove(name);
        }
    }
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
                } else if URLS.contains(&k.as_str())
                    && let Value::String(s) = x
                {
                    *x = Value::String(url_redacted(s));
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `url` with its password (after `user:` in the authority, or a
/// `password=` query parameter) replaced by its fingerprint; the rest as
/// written.
pub fn url_redacted(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, password)) => {
                        format!("{scheme}://{user}:{}@{host}{path}", fingerprint(password))
                    }
                    None => head.to_string(),
                },
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", v)) => format!("password={}", fingerprint(v)),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
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

    #[test]
    fn a_database_password_is_replaced_by_its_fingerprint() {
        for (url, secret) in [
            (
                "postgres://standby:s3cret@db.example:5432/standby",
                "s3cret",
            ),
            ("postgresql://u:p%40ss@db/x?sslmode=require", "p%40ss"),
            ("postgres://db/x?user=u&password=hunter2", "hunter2"),
        ] {
            let shown = url_redacted(url);
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("redacted:"), "{shown}");
        }
        assert_eq!(
            url_redacted("postgres://standby@127.0.0.1:5432/standby"),
            "postgres://standby@127.0.0.1:5432/standby"
        );
        let shown = url_redacted("postgres://a:b@h/d?sslmode=require");
        assert!(
            shown.starts_with("postgres://a:redacted:") && shown.ends_with("@h/d?sslmode=require")
        );

        let text =
            "[controller]\ndatabase = \"postgres://standby:s3cret@db/standby\"\n[sites.s1]\n";
        let cfg = Config::parse(text, std::path::Path::new("/x/standby.toml")).unwrap();
        let shown = redacted(&cfg).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://standby:redacted:"), "{shown}");
    }
}
