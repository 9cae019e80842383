//! Fencing tokens: every command of the controller carries the leader's
//! epoch ([`EPOCH_HEADER`], and `epoch` in heartbeat answers), a number
//! that grows with each new leader. A host agent keeps the highest epoch
//! it has seen in `DATA/epoch` (written before it acts on it) and refuses
//! a command of an older one, so a deposed leader (paused, partitioned,
//! slow) can start or stop nothing, even across an agent restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::AgentError;

/// The header naming the epoch of the controller that sends a command.
pub const EPOCH_HEADER: &str = "x-standby-epoch";

/// The highest epoch this agent has seen, kept on disk.
#[derive(Debug)]
pub struct Epochs {
    path: PathBuf,
    highest: Mutex<u64>,
}

impl Epochs {
    /// The epochs of the agent whose data dir is `dir`: 0 when it never
    /// saw one; an unreadable file is an error (refusing to guess).
    pub fn open(dir: &Path) -> Result<Epochs, AgentError> {
        let path = dir.join("epoch");
        let highest = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse::<u64>().map_err(|e| {
                AgentError::Internal(format!(
                    "unreadable epoch in {}: {e}; it must hold the highest leader epoch seen",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(AgentError::Internal(format!(
                    "unable to read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Epochs {
            path,
            highest: Mutex::new(highest),
        })
    }

    /// The highest epoch seen.
    pub fn highest(&self) -> u64 {
        *self.highest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a command (or heartbeat answer) of `epoch`: a newer epoch is
    /// recorded (durably) before it is acted on; an older one is refused.
    pub fn admit(&self, epoch: u64) -> Result<(), AgentError> {
        let mut h = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        if epoch < *h {
            return Err(AgentError::Refused {
                code: "stale_epoch",
                message: format!(
                    "a command of leader epoch {epoch}, but epoch {} leads now: refused (a deposed controller)",
                    *h
                ),
            });
        }
        if epoch > *h {
            let tmp = self.path.with_extension("tmp");
            let io = |e: std::io::Error| {
                AgentError::Internal(format!(
                    "unable to record epoch {epoch} in {}: {e}",
                    self.path.display()
                ))
            };
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            std::io::Write::write_all(&mut f, epoch.to_string().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &self.path).map_err(io)?;
            *h = epoch;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_refused_and_the_highest_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epochs::open(dir.path()).unwrap();
        assert_eq!(e.highest(), 0);
        e.admit(3).unwrap();
        e.admit(3).unwrap();
        let err = e.admit(2).unwrap_err().to_string();
        assert!(err.contains("epoch 2") && err.contains("epoch 3"), "{err}");
        drop(e);
        let e = Epochs::open(dir.path()).unwrap();
        assert_eq!(e.highest(), 3);
        assert!(e.admit(1).is_err());
        e.admit(4).unwrap();
        std::fs::write(dir.path().join("epoch"), "garbage").unwrap();
        let err = Epochs::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unreadable epoch"), "{err}");
    }
}
