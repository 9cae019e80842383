//! Who a certificate says its holder is: a [`Role`] and a config name,
//! carried as one DNS subjectAltName `<name>.<role>.standby`.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

use crate::der;
use crate::error::{Error, Result};

/// The suffix of every identity's DNS name.
pub const DOMAIN: &str = "standby";

/// The longest name (one DNS label).
pub const MAX_NAME: usize = 63;

/// What a certificate may be used as. Each role has its own certificate,
/// so a credential taken from one place is refused in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The controller: the client of its calls to agents, the server of
    /// its agent-facing listener.
    Controller,
    /// An agent: the server of its API, the client of its heartbeats.
    Agent,
    /// An agent copying data into another agent's datastore (client only).
    Peer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Controller, Role::Agent, Role::Peer];

    /// The role's label in DNS names and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Peer => "peer",
        }
    }

    /// "a controller certificate", "an agent certificate", …
    pub(crate) fn a_certificate(self) -> &'static str {
        match self {
            Role::Controller => "a controller certificate",
            Role::Agent => "an agent certificate",
            Role::Peer => "a peer certificate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::BadName {
                name: s.to_string(),
                reason: "not a role (controller, agent or peer)",
            })
    }
}

/// A role and a config name (`[agents.NAME]`, the controller's name).
///
/// In the certificate the name is part of a DNS name, and DNS names compare
/// case-insensitively: `Site1` and `site1` are the same identity.
/// [`Identity::dns_name`] is always lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    /// An identity whose name is valid (see [`validate_name`]).
    pub fn new(role: Role, name: impl Into<String>) -> Result<Identity> {
        let name = name.into();
        validate_name(&name)?;
        Ok(Identity { role, name })
    }

    pub fn controller(name: impl Into<String>) -> Result<Identity> {
        Identity::new(Role::Controller, name)
    }

    pub fn agent(name: impl Into<String>) -> Result<Identity> {
        Identity::new(Role::Agent, name)
    }

    pub fn peer(name: impl Into<String>) -> Result<Identity> {
        Identity::new(Role::Peer, name)
    }

    /// The certificate's only subjectAltName: `<name>.<role>.standby`, in
    /// lower case.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.{DOMAIN}",
            self.name.to_ascii_lowercase(),
            self.role.as_str()
        )
    }

    /// The identity of a DNS name made by [`Identity::dns_name`].
    pub fn from_dns_name(dns: &str) -> Option<Identity> {
        let rest = dns.strip_suffix(DOMAIN)?.strip_suffix('.')?;
        let (name, role) = rest.rsplit_once('.')?;
        Identity::new(role.parse().ok()?, name).ok()
    }

    /// The stem of its files in a PKI directory: `<role>-<name>`.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.name)
    }

    /// The identity of a file stem made by [`Identity::file_stem`].
    pub fn from_file_stem(stem: &str) -> Option<Identity> {
        let (role, name) = stem.split_once('-')?;
        Identity::new(role.parse().ok()?, name).ok()
    }

    /// "the peer certificate of agent 'x'", for messages.
    pub fn describe(&self) -> String {
        match self.role {
            Role::Peer => format!("a peer certificate of agent '{}'", self.name),
            r => format!("{} of '{}'", r.a_certificate(), self.name),
        }
    }

    fn server_name(&self) -> Option<ServerName<'static>> {
        DnsName::try_from(self.dns_name())
            .ok()
            .map(ServerName::DnsName)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

/// A config name usable in an identity: letters, digits, '-' and '_', at
/// most 63 characters, not starting or ending with '-'.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only letters, digits, '-' and '_' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("starts or ends with '-'");
    }
    Ok(())
}

/// Whether the leaf (`certs[0]`) is valid for `who` and for nothing else.
///
/// Names only: that the chain leads to a trusted CA is checked by the
/// handshake (see `server_config` and `client_config`).
pub fn presents(certs: &[CertificateDer<'_>], who: &Identity) -> bool {
    let (Some(leaf), Some(name)) = (certs.first(), who.server_name()) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    // Our CA issues one name per certificate; one carrying several would
    // be good for several roles, which is what the roles are there to stop.
    cert.verify_is_valid_for_subject_name(&name).is_ok() && der::dns_names(leaf).len() == 1
}

/// The role `name` has in the leaf, if any: to tell "a peer certificate
/// where a controller one is needed" from a stranger.
pub fn role_of(certs: &[CertificateDer<'_>], name: &str) -> Option<Role> {
    Role::ALL.into_iter().find(|&role| {
        presents(
            certs,
            &Identity {
                role,
                name: name.to_string(),
            },
        )
    })
}

/// The identity the leaf claims, for messages (read from its
/// subjectAltName; use [`presents`] to decide anything).
pub fn identity_of(certs: &[CertificateDer<'_>]) -> Option<Identity> {
    let names = der::dns_names(certs.first()?);
    let [name] = names.as_slice() else {
        return None;
    };
    Identity::from_dns_name(name).filter(|who| presents(certs, who))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["site1-agent", "a", "A_b-9", &"x".repeat(63)] {
            Identity::agent(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("-a", "starts or ends"),
            ("a-", "starts or ends"),
            ("a.b", "only letters"),
            ("é", "only letters"),
            (&"x".repeat(64), "longer than 63"),
        ] {
            let e = Identity::controller(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.starts_with(&format!("invalid name '{bad}'")), "{e}");
        }
    }

    #[test]
    fn dns_names_and_file_stems_round_trip() {
        let who = Identity::agent("Site1-agent").unwrap();
        assert_eq!(who.dns_name(), "site1-agent.agent.standby");
        assert_eq!(who.file_stem(), "agent-Site1-agent");
        assert_eq!(Identity::from_file_stem("agent-Site1-agent"), Some(who));
        assert_eq!(
            Identity::from_dns_name("c_1.controller.standby"),
            Some(Identity::controller("c_1").unwrap())
        );
        assert_eq!(Identity::from_dns_name("c.admin.standby"), None);
        assert_eq!(Identity::from_dns_name("c.agent.example"), None);
        assert_eq!(Identity::from_file_stem("ca"), None);
        assert_eq!(
            Identity::peer("x").unwrap().describe(),
            "a peer certificate of agent 'x'"
        );
        assert_eq!(
            Identity::agent("x").unwrap().describe(),
            "an agent certificate of 'x'"
        );
    }

    fn leaf(sans: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(sans).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn presents_one_identity_case_insensitively() {
        let certs = [leaf(&["site1.peer.standby"])];
        assert!(presents(&certs, &Identity::peer("site1").unwrap()));
        assert!(presents(&certs, &Identity::peer("SITE1").unwrap()));
        assert!(!presents(&certs, &Identity::agent("site1").unwrap()));
        assert!(!presents(&certs, &Identity::peer("site2").unwrap()));
        assert!(!presents(&[], &Identity::peer("site1").unwrap()));
        assert_eq!(role_of(&certs, "site1"), Some(Role::Peer));
        assert_eq!(role_of(&certs, "site2"), None);
        assert_eq!(identity_of(&certs), Some(Identity::peer("site1").unwrap()));
        // Two names: good for neither.
        let two = [leaf(&["a.agent.standby", "a.controller.standby"])];
        assert!(!presents(&two, &Identity::agent("a").unwrap()));
        assert_eq!(identity_of(&two), None);
    }
}
