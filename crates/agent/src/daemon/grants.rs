//! Grants: what a peer agent may copy into, as the controller asked this
//! agent (see [`super::guard`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A grant lapses when no copy call used it for this long.
pub const GRANT_IDLE: Duration = Duration::from_secs(15 * 60);

/// A grant a peer presents: the datastore it may write to.
#[derive(Debug, Clone)]
pub struct Granted {
    pub datastore: String,
    pub from: String,
}

#[derive(Debug)]
struct Grant {
    granted: Granted,
    idle_until: Instant,
}

/// The grants in force.
#[derive(Debug, Default)]
pub struct Grants(Mutex<HashMap<String, Grant>>);

impl Grants {
    /// Let agent `from` copy into `datastore`: the grant's id (128 random
    /// bits, hex).
    pub fn issue(&self, datastore: &str, from: &str) -> String {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        g.retain(|_, v| v.idle_until > now);
        g.insert(
            id.clone(),
            Grant {
                granted: Granted {
                    datastore: datastore.to_string(),
                    from: from.to_string(),
                },
                idle_until: now + GRANT_IDLE,
            },
        );
        id
    }

    /// The grant `id`, if in force (its idle time starts again).
    pub fn check(&self, id: &str) -> Result<Granted, String> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match g.get_mut(id) {
            Some(v) if v.idle_until > now => {
                v.idle_until = now + GRANT_IDLE;
                Ok(v.granted.clone())
            }
            Some(_) => {
                g.remove(id);
                Err("the grant lapsed (unused for too long): the controller asks again".into())
            }
            None => Err(
                "no such grant at this agent (never issued here, or the agent restarted)".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_names_one_datastore_and_sender_and_unknown_ones_are_refused() {
        let g = Grants::default();
        let id = g.issue("site2", "site1-agent");
        let got = g.check(&id).unwrap();
        assert_eq!(got.datastore, "site2");
        assert_eq!(got.from, "site1-agent");
        assert!(g.check("00").unwrap_err().contains("no such grant"));
        let other = g.issue("site2", "site1-agent");
        assert_ne!(id, other);
    }
}
