//! `[dns]`: the DNS traffic target. A service with a `dns_name` has that
//! name pointed at its active site's backend address by RFC 2136 dynamic
//! updates, signed with TSIG, sent to the zone's primary server.
//!
//! The TSIG secret never stands in standby.toml: `secret_file` names a
//! file holding it, either the bare base64 or a BIND key file as
//! `tsig-keygen` prints it (`key "NAME" { algorithm ...; secret "...";
//! };`). [`Config::load`](crate::config::Config::load) reads it once to
//! refuse a missing or malformed file before anything runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::units::duration_str;

/// `[dns]`: where and how service names are updated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone's primary server, `IP:port` (e.g. `192.0.2.53:53`).
    pub server: String,
    /// The zone holding the service names, e.g. `svc.example.test.`.
    pub zone: String,
    /// The TSIG key's name, as the server knows it.
    pub key_name: String,
    /// The TSIG algorithm (default `hmac-sha256`).
    #[serde(default)]
    pub algorithm: TsigAlgorithm,
    /// A file holding the TSIG secret: bare base64, or a BIND key file.
    pub secret_file: PathBuf,
    /// The TTL of the records written: how long resolvers may keep the
    /// old answer after a switch (default 5s, 1s at least).
    #[serde(default = "default_ttl", with = "duration_str")]
    pub ttl: Duration,
}

/// The TSIG MACs standby signs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TsigAlgorithm {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        })
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}

impl DnsConfig {
    /// The primary server (validated by [`Config::parse`](crate::config::Config::parse)).
    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.parse().ok()
    }

    /// The zone, absolute and lower-case (`svc.example.test.`).
    pub fn zone_fqdn(&self) -> String {
        absolute(&self.zone)
    }

    /// The TTL in seconds, as written in the records.
    pub fn ttl_secs(&self) -> u32 {
        u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX)
    }

    /// The absolute name of a service's `dns_name`: a relative name is
    /// below the zone, an absolute one (ending in '.') must be in it.
    pub fn fqdn(&self, dns_name: &str) -> Result<String, String> {
        let zone = self.zone_fqdn();
        let name = if dns_name.ends_with('.') {
            absolute(dns_name)
        } else if dns_name == "@" {
            zone.clone()
        } else {
            absolute(&format!("{dns_name}.{zone}"))
        };
        check_name(&name).map_err(|e| format!("'{dns_name}' is not a DNS name: {e}"))?;
        if name != zone && !name.ends_with(&format!(".{zone}")) {
            return Err(format!(
                "'{name}' is outside the zone '{zone}' ([dns] zone) the updates go to"
            ));
        }
        Ok(name)
    }

    /// The problem with the table's own settings, as (field, message).
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        match self.server_addr() {
            Some(a) if a.port() != 0 && !a.ip().is_unspecified() => {}
            _ => {
                return Err((
                    "server",
                    format!(
                        "'{}' is not the primary server's address like 192.0.2.53:53 (an IP address and a port)",
                        self.server
                    ),
                ));
            }
        }
        check_name(&self.zone_fqdn())
            .map_err(|e| ("zone", format!("'{}' is not a zone name: {e}", self.zone)))?;
        if self.zone_fqdn() == "." {
            return Err(("zone", "updates to the root zone are not supported".into()));
        }
        check_name(&absolute(&self.key_name)).map_err(|e| {
            (
                "key_name",
                format!("'{}' is not a TSIG key name: {e}", self.key_name),
            )
        })?;
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return Err((
                "ttl",
                format!(
                    "'{}' is not a TTL: give whole seconds, 1s at least",
                    humantime::format_duration(self.ttl)
                ),
            ));
        }
        if self.ttl > Duration::from_secs(86_400) {
            return Err((
                "ttl",
                "a TTL above one day would keep clients at the old site for a day after a switch"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The TSIG secret from `secret_file`.
    pub fn read_secret(&self) -> Result<Vec<u8>, String> {
        read_secret(&self.secret_file)
    }
}

/// `name` lower-case and ending in '.'.
fn absolute(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

/// An absolute host-like name: labels of letters, digits, '-' and '_'
/// (service labels such as `_sip._udp`), 63 bytes each, 253 in all.
fn check_name(name: &str) -> Result<(), String> {
    if name == "." {
        return Ok(());
    }
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label '{label}' is longer than 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "label '{label}' may only hold letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(())
}

/// The secret in a key file: the bare base64, or the `secret "...";` of a
/// BIND key file.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "unable to read the TSIG secret from {}: {e}",
            path.display()
        )
    })?;
    let b64 = if text.contains('{') {
        let quoted = text.find("secret").and_then(|at| {
            text[at + "secret".len()..]
                .trim_start()
                .strip_prefix('"')?
                .split_once('"')
        });
        match quoted {
            Some((s, _)) => s.to_string(),
            None => {
                return Err(format!(
                    "{}: a BIND key file needs a line like secret \"BASE64\";",
                    path.display()
                ));
            }
        }
    } else {
        text.split_whitespace().collect::<String>()
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            format!(
                "{}: the TSIG secret is not base64 (as tsig-keygen prints it): {e}",
                path.display()
            )
        })?;
    if key.len() < 16 {
        return Err(format!(
            "{}: a TSIG secret of {} bytes is too short (16 at least; tsig-keygen makes 32)",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns() -> DnsConfig {
        DnsConfig {
            server: "127.0.0.1:53".into(),
            zone: "Svc.Example.Test".into(),
            key_name: "standby".into(),
            algorithm: TsigAlgorithm::default(),
            secret_file: PathBuf::from("/nonexistent"),
            ttl: default_ttl(),
        }
    }

    #[test]
    fn names_are_made_absolute_inside_the_zone() {
        let d = dns();
        assert_eq!(d.zone_fqdn(), "svc.example.test.");
        assert_eq!(d.fqdn("sip").unwrap(), "sip.svc.example.test.");
        assert_eq!(d.fqdn("_sip._udp").unwrap(), "_sip._udp.svc.example.test.");
        assert_eq!(
            d.fqdn("pbx.SVC.example.test.").unwrap(),
            "pbx.svc.example.test."
        );
        assert_eq!(d.fqdn("@").unwrap(), "svc.example.test.");
        let e = d.fqdn("sip.example.test.").unwrap_err();
        assert!(e.contains("outside the zone 'svc.example.test.'"), "{e}");
        let e = d.fqdn("xsvc.example.test.").unwrap_err();
        assert!(e.contains("outside the zone"), "{e}");
        let e = d.fqdn("a b").unwrap_err();
        assert!(e.contains("not a DNS name"), "{e}");
        assert!(d.fqdn("a..b").is_err());
    }

    #[test]
    fn secrets_are_read_bare_or_from_a_bind_key_file() {
        let dir = std::env::temp_dir().join(format!("standby-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = "deLeVm7eMY8Q9twch/2aQHV5pACLAp0VojmTB4NkCnc=";
        let bare = dir.join("bare");
        std::fs::write(&bare, format!("{secret}\n")).unwrap();
        let keyfile = dir.join("key.conf");
        std::fs::write(
            &keyfile,
            format!("key \"standby\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n"),
        )
        .unwrap();
        let a = read_secret(&bare).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(read_secret(&keyfile).unwrap(), a);
        let bad = dir.join("bad");
        std::fs::write(&bad, "not*base64").unwrap();
        assert!(read_secret(&bad).unwrap_err().contains("not base64"));
        std::fs::write(&bad, "c2hvcnQ=").unwrap();
        assert!(read_secret(&bad).unwrap_err().contains("too short"));
        std::fs::write(&bad, "key \"x\" { algorithm hmac-sha256; };").unwrap();
        assert!(read_secret(&bad).unwrap_err().contains("secret \"BASE64\""));
        let e = read_secret(&dir.join("missing")).unwrap_err();
        assert!(e.contains("unable to read the TSIG secret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
