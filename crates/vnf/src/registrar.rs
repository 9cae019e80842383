//! Registrar state: the bindings rebuilt from the journal, and the handling
//! of one SIP request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, Record};
use crate::sip::{self, Message};
use crate::{Binding, VnfError, VnfState};

/// Expiry used when a REGISTER carries neither `Expires` nor `;expires=`.
pub const DEFAULT_EXPIRES: u32 = 3600;
const ALLOW: &str = "REGISTER, OPTIONS";

/// Journal payload: one binding change. `expires == 0` removes the binding
/// (`contact == "*"` removes every binding of the AOR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub aor: String,
    pub contact: String,
    pub expires: u32,
    pub registered_at: u64,
}

/// The journal plus the state it encodes. One writer at a time (callers
/// hold it behind a mutex), so sequence numbers are assigned in order.
#[derive(Debug)]
pub struct Registrar {
    name: String,
    journal: Journal,
    bindings: BTreeMap<(String, String), Binding>,
    writes: u64,
    records: u64,
}

impl Registrar {
    pub fn open(name: &str, disk: &Path, create_size: u64) -> Result<Self, VnfError> {
        let (journal, records) = Journal::open(disk, create_size)?;
        let mut r = Registrar {
            name: name.to_owned(),
            journal,
            bindings: BTreeMap::new(),
            writes: 0,
            records: 0,
        };
        for rec in &records {
            r.replay(rec)?;
        }
        tracing::info!(
            disk = %disk.display(),
            records = r.records,
            bindings = r.bindings.len(),
            tail = r.journal.tail(),
            "journal replayed"
        );
        Ok(r)
    }

    fn replay(&mut self, rec: &Record) -> Result<(), VnfError> {
        let b: BindingRecord =
            serde_json::from_slice(&rec.payload).map_err(|source| VnfError::BadRecord {
                seq: rec.seq,
                source,
            })?;
        self.apply(b, rec.seq);
        self.records += 1;
        Ok(())
    }

    fn apply(&mut self, b: BindingRecord, seq: u64) {
        if b.expires == 0 {
            if b.contact == "*" {
                self.bindings.retain(|(aor, _), _| aor != &b.aor);
            } else {
                self.bindings.remove(&(b.aor, b.contact));
            }
        } else {
            self.bindings.insert(
                (b.aor.clone(), b.contact.clone()),
                Binding {
                    aor: b.aor,
                    contact: b.contact,
                    expires: b.expires,
                    registered_at: b.registered_at,
                    seq,
                },
            );
        }
    }

    /// Persist `changes` durably, then apply them.
    pub fn commit(&mut self, changes: Vec<BindingRecord>) -> Result<(), VnfError> {
        if changes.is_empty() {
            return Ok(());
        }
        let payloads = changes
            .iter()
            .map(|c| serde_json::to_vec(c).unwrap_or_default())
            .collect::<Vec<_>>();
        let first = self.journal.append(&payloads)?;
        for (i, c) in changes.into_iter().enumerate() {
            self.apply(c, first + i as u64);
        }
        self.writes += payloads.len() as u64;
        self.records += payloads.len() as u64;
        Ok(())
    }

    pub fn bindings_of(&self, aor: &str) -> Vec<&Binding> {
        self.bindings.values().filter(|b| b.aor == aor).collect()
    }

    pub fn state(&self) -> VnfState {
        let mut bindings: Vec<Binding> = self.bindings.values().cloned().collect();
        bindings.sort_by_key(|b| b.seq);
        VnfState {
            name: self.name.clone(),
            bindings,
            writes: self.writes,
            records: self.records,
            last_seq: self.journal.last_seq(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A To tag that is stable for one Call-ID, so retransmissions match.
fn to_tag(req: &Message) -> String {
    format!(
        "{:08x}",
        crc32fast::hash(req.header("Call-ID").unwrap_or_default().as_bytes())
    )
}

/// What to do with a datagram, decided without touching the disk.
pub enum Action {
    /// Not SIP, an ACK, or a response: say nothing.
    Ignore,
    /// Send this response now.
    Reply(String),
    /// Persist these changes, then answer with [`register_reply`].
    Register {
        req: Message,
        aor: String,
        changes: Vec<BindingRecord>,
    },
}

/// Classify one datagram.
pub fn plan(datagram: &[u8], from: SocketAddr) -> Action {
    let req = match sip::parse(datagram) {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::debug!(%from, len = datagram.len(), "ignoring non-SIP datagram");
            return Action::Ignore;
        }
        Err(sip::Malformed(why)) => {
            tracing::debug!(%from, why, "malformed SIP request");
            return match sip::parse_request_line_only(datagram) {
                Some(m) => Action::Reply(sip::response(&m, 400, "Bad Request", "0", &[])),
                None => Action::Ignore,
            };
        }
    };
    let Some(method) = req.method().map(str::to_owned) else {
        return Action::Ignore; // a response: we never sent a request
    };
    let tag = to_tag(&req);
    match method.as_str() {
        "ACK" => Action::Ignore,
        "OPTIONS" => Action::Reply(sip::response(
            &req,
            200,
            "OK",
            &tag,
            &[
                ("Allow", ALLOW.to_owned()),
                ("Accept", "application/sdp".to_owned()),
            ],
        )),
        "REGISTER" => plan_register(req, &tag),
        _ => Action::Reply(sip::response(
            &req,
            405,
            "Method Not Allowed",
            &tag,
            &[("Allow", ALLOW.to_owned())],
        )),
    }
}

fn plan_register(req: Message, tag: &str) -> Action {
    let bad = |req: &Message, why: &str| {
        tracing::debug!(why, "bad REGISTER");
        Action::Reply(sip::response(
            req,
            400,
            "Bad Request",
            tag,
            &[("Warning", format!("399 standby-vnf \"{why}\""))],
        ))
    };
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if req.header(h).is_none_or(str::is_empty) {
            return bad(&req, &format!("missing {h}"));
        }
    }
    let (aor, _) = sip::uri_and_params(req.header("To").unwrap_or_default());
    if aor.is_empty() {
        return bad(&req, "empty To URI");
    }
    let aor = aor.to_owned();
    let default_expires = match req.header("Expires") {
        Some(v) => match v.trim().parse::<u32>() {
            Ok(e) => e,
            Err(_) => return bad(&req, "bad Expires"),
        },
        None => DEFAULT_EXPIRES,
    };
    let registered_at = now_ms();
    let mut changes = Vec::new();
    for c in req.header_values("Contact") {
        if c == "*" {
            if default_expires != 0 {
                return bad(&req, "Contact * needs Expires: 0");
            }
            changes.push(BindingRecord {
                aor: aor.clone(),
                contact: "*".into(),
                expires: 0,
                registered_at,
            });
            continue;
        }
        let (uri, params) = sip::uri_and_params(c);
        if uri.is_empty() || uri == "*" {
            return bad(&req, "bad Contact");
        }
        let expires = match sip::param(params, "expires") {
            Some(v) => match v.parse::<u32>() {
                Ok(e) => e,
                Err(_) => return bad(&req, "bad Contact expires"),
            },
            None => default_expires,
        };
        changes.push(BindingRecord {
            aor: aor.clone(),
            contact: uri.to_owned(),
            expires,
            registered_at,
        });
    }
    Action::Register { req, aor, changes }
}

/// The 200 OK for a committed REGISTER, listing the AOR's bindings.
pub fn register_reply(reg: &Registrar, req: &Message, aor: &str) -> String {
    let contacts: Vec<(&str, String)> = reg
        .bindings_of(aor)
        .into_iter()
        .map(|b| ("Contact", format!("<{}>;expires={}", b.contact, b.expires)))
        .chain(std::iter::once((
            "Server",
            format!("standby-vnf/{}", reg.name),
        )))
        .collect();
    sip::response(req, 200, "OK", &to_tag(req), &contacts)
}

/// The answer when the change could not be made durable.
pub fn failure_reply(req: &Message, err: &VnfError) -> String {
    let reason = match err {
        VnfError::DiskFull { .. } => "Disk Full",
        _ => "Server Internal Error",
    };
    sip::response(
        req,
        500,
        reason,
        &to_tag(req),
        &[(
            "Warning",
            format!("399 standby-vnf \"{}\"", err.to_string().replace('"', "'")),
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddr {
        "127.0.0.1:5070".parse().unwrap()
    }

    fn register(contact: &str, expires: Option<&str>) -> Vec<u8> {
        let mut m = String::from(
            "REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c1\r\nCSeq: 7 REGISTER\r\n",
        );
        if !contact.is_empty() {
            m.push_str(&format!("Contact: {contact}\r\n"));
        }
        if let Some(e) = expires {
            m.push_str(&format!("Expires: {e}\r\n"));
        }
        m.push_str("\r\n");
        m.into_bytes()
    }

    fn changes(datagram: &[u8]) -> Vec<BindingRecord> {
        match plan(datagram, from()) {
            Action::Register { changes, aor, .. } => {
                assert_eq!(aor, "sip:a@x");
                changes
            }
            Action::Reply(r) => panic!("unexpected reply {r}"),
            Action::Ignore => panic!("ignored"),
        }
    }

    fn reply_code(datagram: &[u8]) -> String {
        match plan(datagram, from()) {
            Action::Reply(r) => r.lines().next().unwrap_or_default().to_owned(),
            _ => panic!("expected a reply"),
        }
    }

    #[test]
    fn expires_comes_from_contact_then_header_then_default() {
        let c = changes(&register("<sip:a@h1>;expires=5, <sip:a@h2>", Some("60")));
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].contact.as_str(), c[0].expires), ("sip:a@h1", 5));
        assert_eq!((c[1].contact.as_str(), c[1].expires), ("sip:a@h2", 60));
        let c = changes(&register("sip:a@h3", None));
        assert_eq!(c[0].expires, DEFAULT_EXPIRES);
        // No Contact: a query, nothing to write.
        assert!(changes(&register("", None)).is_empty());
        // Wildcard.
        let c = changes(&register("*", Some("0")));
        assert_eq!((c[0].contact.as_str(), c[0].expires), ("*", 0));
    }

    #[test]
    fn bad_registers_get_400() {
        assert!(reply_code(&register("*", Some("60"))).starts_with("SIP/2.0 400"));
        assert!(reply_code(&register("<sip:a@h>", Some("soon"))).starts_with("SIP/2.0 400"));
        assert!(reply_code(&register("<sip:a@h>;expires=x", None)).starts_with("SIP/2.0 400"));
        let no_callid = String::from_utf8(register("<sip:a@h>", None))
            .unwrap()
            .replace("Call-ID: c1\r\n", "");
        assert!(reply_code(no_callid.as_bytes()).starts_with("SIP/2.0 400"));
    }

    #[test]
    fn replay_rebuilds_bindings_and_unregister_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let rec = |contact: &str, expires| BindingRecord {
            aor: "sip:a@x".into(),
            contact: contact.into(),
            expires,
            registered_at: 1,
        };
        {
            let mut r = Registrar::open("t", &img, 1 << 20).unwrap();
            r.commit(vec![rec("sip:1", 60), rec("sip:2", 60)]).unwrap();
            r.commit(vec![rec("sip:1", 0)]).unwrap();
            r.commit(vec![rec("sip:3", 60)]).unwrap();
            let st = r.state();
            assert_eq!((st.writes, st.records, st.last_seq), (4, 4, 4));
        }
        let mut r = Registrar::open("t", &img, 0).unwrap();
        let st = r.state();
        assert_eq!((st.writes, st.records, st.last_seq), (0, 4, 4));
        let contacts: Vec<_> = st.bindings.iter().map(|b| b.contact.as_str()).collect();
        assert_eq!(contacts, ["sip:2", "sip:3"]);
        assert_eq!(st.bindings[1].seq, 4);
        r.commit(vec![rec("*", 0)]).unwrap();
        assert!(r.state().bindings.is_empty());
    }
}
