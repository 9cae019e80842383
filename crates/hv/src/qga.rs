//! A minimal client for the QEMU guest agent (`qemu-ga`), enough for
//! fsfreeze around a recovery point.
//!
//! The agent talks over a virtio-serial port whose host end is a UNIX
//! socket QEMU listens on (`<state dir>/<vm>.qga`). Wire format: one JSON
//! object per line, `{"execute": C, "arguments": A}` → `{"return": R}` or
//! `{"error": {...}}`, no ids and no greeting. QEMU accepts the connection
//! whether or not an agent runs in the guest, so "no agent" looks like
//! silence: every exchange is bounded by a deadline, and a session first
//! syncs (`guest-sync` with a fresh id) so a stale answer left in the
//! channel by an earlier, timed-out session is never taken for ours.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Why the agent could not do what was asked; the text ends up on the
/// point's consistency label, so it says what happened in a few words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent socket {} cannot be opened: {detail}", socket.display())]
    Connect { socket: PathBuf, detail: String },
    #[error("guest agent did not answer '{command}' within {waited:.1?}")]
    Timeout { command: String, waited: Duration },
    #[error("guest agent refused '{command}': {desc}")]
    Refused { command: String, desc: String },
    #[error("guest agent channel broke during '{command}': {detail}")]
    Io { command: String, detail: String },
}

/// One session with the guest agent.
pub struct Qga {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qga {
    /// Connect and sync, all before `deadline`.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Qga, QgaError> {
        let stream = tokio::time::timeout_at(deadline, UnixStream::connect(socket))
            .await
            .map_err(|_| QgaError::Timeout {
                command: "connect".into(),
                waited: Duration::ZERO,
            })?
            .map_err(|e| QgaError::Connect {
                socket: socket.to_owned(),
                detail: e.to_string(),
            })?;
        let (read, writer) = stream.into_split();
        let mut qga = Qga {
            reader: BufReader::new(read),
            writer,
        };
        let id = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 & 0x7fff_ffff_ffff)
            .unwrap_or(1);
        // Answers to an earlier session may still be queued: skip until ours.
        qga.send("guest-sync", json!({ "id": id }), deadline)
            .await?;
        loop {
            let v = qga.receive("guest-sync", deadline).await?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(qga);
            }
        }
    }

    /// Run `command`, answer within `deadline`.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<Value, QgaError> {
        self.send(command, arguments, deadline).await?;
        let v = self.receive(command, deadline).await?;
        if let Some(err) = v.get("error") {
            return Err(QgaError::Refused {
                command: command.into(),
                desc: err["desc"].as_str().unwrap_or("unknown error").to_owned(),
            });
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    async fn send(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<(), QgaError> {
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let started = Instant::now();
        tokio::time::timeout_at(deadline, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| QgaError::Timeout {
                command: command.into(),
                waited: started.elapsed(),
            })?
            .map_err(|e| QgaError::Io {
                command: command.into(),
                detail: e.to_string(),
            })
    }

    async fn receive(&mut self, command: &str, deadline: Instant) -> Result<Value, QgaError> {
        let started = Instant::now();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut line))
                .await
                .map_err(|_| QgaError::Timeout {
                    command: command.into(),
                    waited: started.elapsed(),
                })?
                .map_err(|e| QgaError::Io {
                    command: command.into(),
                    detail: e.to_string(),
                })?;
            if n == 0 {
                return Err(QgaError::Io {
                    command: command.into(),
                    detail: "channel closed".into(),
                });
            }
            // The agent may prefix a sync answer with 0xff; skip blanks.
            let text = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{ff}');
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(v) if v.get("return").is_some() || v.get("error").is_some() => return Ok(v),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake agent: answers guest-sync after a stale line, then freeze.
    #[tokio::test]
    async fn sync_skips_stale_answers_and_freeze_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qga");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let answer = match v["execute"].as_str().unwrap() {
                    "guest-sync" => format!(
                        "{{\"return\": 3}}\n{{\"return\": {}}}\n",
                        v["arguments"]["id"]
                    ),
                    "guest-fsfreeze-freeze" => "{\"return\": 2}\n".into(),
                    _ => "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n".into(),
                };
                w.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut qga = Qga::connect(&path, deadline).await.unwrap();
        let n = qga
            .execute("guest-fsfreeze-freeze", Value::Null, deadline)
            .await
            .unwrap();
        assert_eq!(n, 2);
        let err = qga
            .execute("guest-other", Value::Null, deadline)
            .await
            .unwrap_err();
        assert!(matches!(err, QgaError::Refused { ref desc, .. } if desc == "nope"));
    }

    /// Nothing answering (QEMU's socket with no agent in the guest): the
    /// deadline holds.
    #[tokio::test]
    async fn silent_agent_times_out_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qga");
        let listener = UnixListener::bind(&path).unwrap();
        let _keep = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let t = Instant::now();
        let err = Qga::connect(&path, t + Duration::from_millis(500))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QgaError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
