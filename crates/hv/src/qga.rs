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
//! A reply line is read up to [`MAX_REPLY_LINE`] bytes: the guest writes
//! it, and a longer one is refused ([`QgaError::TooLong`]), never buffered.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

pub use crate::line::MAX_REPLY_LINE;
use crate::line::{self, LineError};

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
    #[error("guest agent reply to '{command}' on {} is longer than {limit} bytes", socket.display())]
    TooLong {
        socket: PathBuf,
        command: String,
        limit: usize,
    },
}

/// A reply line of the agent: the object when it is an answer (`return`
/// or `error`), `None` for anything else (blank, noise, not JSON). The
/// 0xff that precedes the answer to `guest-sync-delimited` is skipped.
pub fn parse_reply(line: &[u8]) -> Option<Value> {
    let text = line.trim_ascii();
    let text = &text[text.iter().take_while(|&&b| b == 0xff).count()..];
    match serde_json::from_slice::<Value>(text.trim_ascii()) {
        Ok(v) if v.get("return").is_some() || v.get("error").is_some() => Some(v),
        _ => None,
    }
}

/// One session with the guest agent.
pub struct Qga {
    socket: PathBuf,
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
            socket: socket.to_owned(),
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
                desc: err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned(),
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
        let mut buf = Vec::new();
        loop {
            let got = tokio::time::timeout_at(
                deadline,
                line::read_line(&mut self.reader, &mut buf, MAX_REPLY_LINE),
            )
            .await
            .map_err(|_| QgaError::Timeout {
                command: command.into(),
                waited: started.elapsed(),
            })?;
            match got {
                Ok(true) => {}
                Ok(false) => {
                    return Err(QgaError::Io {
                        command: command.into(),
                        detail: "channel closed".into(),
                    });
                }
                Err(LineError::TooLong { limit }) => {
                    return Err(QgaError::TooLong {
                        socket: self.socket.clone(),
                        command: command.into(),
                        limit,
                    });
                }
                Err(LineError::Io(e)) => {
                    return Err(QgaError::Io {
                        command: command.into(),
                        detail: e.to_string(),
                    });
                }
            }
            if let Some(v) = parse_reply(&buf) {
                return Ok(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
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

    /// A guest that sends a reply line without end: refused at the limit
    /// with an error naming the socket and the limit (the line was read
    /// whole, without a bound, before).
    #[tokio::test]
    async fn hardening_guest_agent_reply_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qga");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            let sync = format!("{{\"return\": {}}}\n", v["arguments"]["id"]);
            w.write_all(sync.as_bytes()).await.unwrap();
            lines.next_line().await.unwrap().unwrap();
            // 2 MiB of one JSON string, no newline; the client may hang
            // up before it is all sent.
            let _ = w.write_all(b"{\"return\": \"").await;
            let _ = w.write_all(&vec![b'a'; 2 << 20]).await;
            // Hold the connection: the client must not wait for a newline.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut qga = Qga::connect(&path, deadline).await.unwrap();
        let err = qga
            .execute("guest-fsfreeze-freeze", Value::Null, deadline)
            .await
            .unwrap_err();
        assert!(
            matches!(err, QgaError::TooLong { limit, .. } if limit == MAX_REPLY_LINE),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("1048576 bytes"), "{text}");
        server.abort();
    }

    #[test]
    fn replies_are_answers_only() {
        assert_eq!(
            parse_reply(b"\xff{\"return\": 7}\r"),
            Some(json!({"return": 7}))
        );
        assert_eq!(parse_reply(b"{\"error\": {}}"), Some(json!({"error": {}})));
        assert_eq!(parse_reply(b"{\"event\": 1}"), None);
        assert_eq!(parse_reply(b"\xff\xfe"), None);
        assert_eq!(parse_reply(b""), None);
    }
}
