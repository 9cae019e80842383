//! Cross-reference checks of the probes, receivers, routes and agents.

use std::time::Duration;

use super::root::Config;
use crate::watch::{CONTROLLER_VANTAGE, ReceiverConfig};

impl Config {
    pub(super) fn validate_watch(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (name, a) in &self.agents {
            if a.token.is_some() && a.token_file.is_some() {
                return Err((
                    p(&["agents", name, "token"]),
                    "set token or token_file, not both".into(),
                ));
            }
            if a.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
                return Err((
                    p(&["agents", name, "token"]),
                    "an agent token needs at least 16 characters".into(),
                ));
            }
            if !self.sites.contains_key(&a.site) {
                return Err((
                    p(&["agents", name, "site"]),
                    format!("unknown site '{}'", a.site),
                ));
            }
            if let Some(h) = &a.host {
                match self.hosts.get(h) {
                    None => {
                        return Err((p(&["agents", name, "host"]), format!("unknown host '{h}'")));
                    }
                    Some(host) if host.site != a.site => {
                        return Err((
                            p(&["agents", name, "host"]),
                            format!("host '{h}' is at site '{}', not '{}'", host.site, a.site),
                        ));
                    }
                    Some(_) => {}
                }
            }
            // With [pki] agents speak mutual TLS only; without it, plain
            // HTTP (a lab), so an https:// URL would have no certificate.
            for (field, url) in [("url", &a.url), ("peer_url", &a.peer_url)] {
                let Some(url) = url else { continue };
                match (&self.pki, url.starts_with("https://")) {
                    (Some(_), false) => {
                        return Err((
                            p(&["agents", name, field]),
                            format!(
                                "with [pki] agents are reached over mutual TLS: use https://, not '{url}'"
                            ),
                        ));
                    }
                    (None, true) => {
                        return Err((
                            p(&["agents", name, field]),
                            format!("'{url}' needs the certificates of [pki] (see docs/pki.md)"),
                        ));
                    }
                    _ => {}
                }
            }
            if self.pki.is_some() && (a.token.is_some() || a.token_file.is_some()) {
                return Err((
                    p(&["agents", name, "token"]),
                    "with [pki] agents authenticate by certificate: remove the token".into(),
                ));
            }
            if let Some(url) = &a.url {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .unwrap_or_default();
                if rest.trim_end_matches('/').is_empty() {
                    return Err((
                        p(&["agents", name, "url"]),
                        format!("'{url}' is not an http:// URL like http://198.18.0.2:7781"),
                    ));
                }
                let in_quorum = self
                    .ha
                    .as_ref()
                    .is_some_and(|ha| ha.quorum.iter().any(|m| m == name));
                match &a.host {
                    None if in_quorum => {} // a witness: the other members ping it
                    None => {
                        return Err((
                            p(&["agents", name, "url"]),
                            "an agent with a url runs a host's VMs (set 'host' too) or votes in [ha] quorum"
                                .into(),
                        ));
                    }
                    Some(h) => {
                        if let Some((other, _)) = self.agents.iter().find(|(o, oa)| {
                            *o != name && oa.url.is_some() && oa.host.as_ref() == Some(h)
                        }) {
                            return Err((
                                p(&["agents", name, "host"]),
                                format!("host '{h}' is already run by agent '{other}'"),
                            ));
                        }
                        if self.hosts.get(h).is_some_and(|host| host.netns.is_some()) {
                            return Err((
                                p(&["hosts", h, "netns"]),
                                format!(
                                    "host '{h}' is run by agent '{name}'; 'netns' applies to in-process hosts only"
                                ),
                            ));
                        }
                    }
                }
            }
            if a.heartbeat < Duration::from_millis(100) {
                return Err((
                    p(&["agents", name, "heartbeat"]),
                    "a heartbeat interval below 100ms would flood the controller".into(),
                ));
            }
        }
        // Names that cannot be in a certificate are refused where the
        // certificate is loaded (standby_tls::validate_name).
        if self.pki.is_some() {
            if !self.agents.is_empty() && self.controller.agent_listen.is_none() {
                return Err((
                    p(&["controller", "agent_listen"]),
                    "with [pki] agents report to the controller's mutual-TLS listener: set agent_listen (e.g. \"0.0.0.0:7443\")".into(),
                ));
            }
        } else if self.controller.agent_listen.is_some() {
            return Err((
                p(&["controller", "agent_listen"]),
                "agent_listen is mutual TLS and needs [pki]".into(),
            ));
        }
        for (name, pr) in &self.probes {
            if let Err((field, msg)) = pr.check() {
                return Err((p(&["probes", name, field]), msg));
            }
            if pr.interval < Duration::from_millis(100) {
                return Err((
                    p(&["probes", name, "interval"]),
                    "a probe interval must be at least 100ms".into(),
                ));
            }
            if pr.timeout.is_zero() || pr.timeout > pr.interval.max(Duration::from_secs(1)) * 10 {
                return Err((
                    p(&["probes", name, "timeout"]),
                    "a probe timeout must be above zero and at most ten intervals".into(),
                ));
            }
            if pr.attempts == 0 || pr.attempts > 10 {
                return Err((
                    p(&["probes", name, "attempts"]),
                    "attempts must be from 1 to 10".into(),
                ));
            }
            if pr.from.is_empty() {
                return Err((
                    p(&["probes", name, "from"]),
                    "a probe needs at least one vantage point".into(),
                ));
            }
            for (i, v) in pr.from.iter().enumerate() {
                let known = v == CONTROLLER_VANTAGE
                    || v.strip_prefix("agent:")
                        .is_some_and(|a| self.agents.contains_key(a));
                if !known {
                    return Err((
                        p(&["probes", name, "from", &i.to_string()]),
                        format!(
                            "unknown vantage point '{v}' (expected 'controller' or 'agent:NAME' of a declared agent)"
                        ),
                    ));
                }
            }
            for (key, table) in [
                ("site", self.sites.keys().collect::<Vec<_>>()),
                ("host", self.hosts.keys().collect()),
                ("vm", self.vms.keys().collect()),
            ] {
                if let Some(v) = pr.labels.get(key)
                    && !table.contains(&v)
                {
                    return Err((
                        p(&["probes", name, "labels", key]),
                        format!("unknown {key} '{v}'"),
                    ));
                }
            }
            for reserved in ["probe", "kind", "vantage"] {
                if pr.labels.contains_key(reserved) {
                    return Err((
                        p(&["probes", name, "labels", reserved]),
                        format!("label '{reserved}' is set by standby"),
                    ));
                }
            }
        }
        for (name, r) in &self.receivers {
            if let ReceiverConfig::Webhook { url, .. } = r
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err((
                    p(&["receivers", name, "url"]),
                    format!("'{url}' is not an http:// or https:// URL"),
                ));
            }
            if let ReceiverConfig::Smtp { to, .. } = r
                && to.is_empty()
            {
                return Err((
                    p(&["receivers", name, "to"]),
                    "a mail receiver needs at least one address".into(),
                ));
            }
            if r.max_attempts() == 0 {
                return Err((
                    p(&["receivers", name, "max_attempts"]),
                    "max_attempts must be at least 1".into(),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let idx = i.to_string();
            if r.receivers.is_empty() {
                return Err((
                    p(&["routes", &idx, "receivers"]),
                    "a route needs at least one receiver".into(),
                ));
            }
            for (j, rc) in r.receivers.iter().enumerate() {
                if !self.receivers.contains_key(rc) {
                    return Err((
                        p(&["routes", &idx, "receivers", &j.to_string()]),
                        format!("unknown receiver '{rc}'"),
                    ));
                }
            }
        }
        Ok(())
    }
}
