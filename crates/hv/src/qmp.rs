//! A thin async client for the QEMU Machine Protocol over a UNIX socket.
//!
//! Wire format: one JSON object per line. The server opens with a greeting
//! (`{"QMP": {"version": …, "capabilities": […]}}`), the client leaves
//! capabilities-negotiation mode with `qmp_capabilities`, then sends
//! `{"execute": C, "arguments": A, "id": N}` and gets `{"return": R, "id": N}`
//! or `{"error": {"class": …, "desc": …}, "id": N}`. Events
//! (`{"event": E, "data": D, "timestamp": …}`) arrive at any time.
//!
//! One reader task owns the read half: answers go to the caller waiting on
//! their id (so concurrent callers are fine), events to a broadcast channel.
//! Every call has a timeout; when the socket closes (QEMU exited), pending
//! and later calls fail with [`HvError::QmpClosed`]. A line is read up to
//! [`MAX_REPLY_LINE`] bytes: a longer one ends the connection, pending
//! calls failing with [`HvError::QmpTooLong`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot, watch};

use crate::HvError;
pub use crate::line::MAX_REPLY_LINE;
use crate::line::{self, LineError};

/// Default timeout of a QMP call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// `SHUTDOWN`, `STOP`, `RESUME`, `BLOCK_JOB_COMPLETED`, …
    pub event: String,
    pub data: Value,
    /// Seconds and microseconds since the epoch, as QEMU sent them.
    pub timestamp: (i64, i64),
}

/// Answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QmpStatus {
    pub running: bool,
    /// `running`, `paused`, `shutdown`, `guest-panicked`, …
    pub status: String,
}

/// One message from the server, as [`parse_message`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(QmpEvent),
    /// The answer to call `id`: its `return` value, or the error's class
    /// and description.
    Answer {
        id: u64,
        answer: Result<Value, (String, String)>,
    },
    /// Not JSON, or neither an event nor an answer with an id.
    Ignored,
}

/// Read one line from the server (no newline).
pub fn parse_message(line: &[u8]) -> Message {
    let Ok(msg) = serde_json::from_slice::<Value>(line) else {
        return Message::Ignored;
    };
    if let Some(event) = msg.get("event").and_then(Value::as_str) {
        let ts = msg.get("timestamp");
        let field = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_i64);
        return Message::Event(QmpEvent {
            event: event.to_owned(),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            timestamp: (
                field("seconds").unwrap_or(0),
                field("microseconds").unwrap_or(0),
            ),
        });
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        return Message::Ignored;
    };
    let answer = if let Some(r) = msg.get("return") {
        Ok(r.clone())
    } else {
        let err = msg.get("error");
        let s = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        Err((s("class"), s("desc")))
    };
    Message::Answer { id, answer }
}

/// The `version` of a greeting line.
pub fn parse_greeting(line: &[u8]) -> Result<Value, String> {
    let greeting: Value = serde_json::from_slice(line).map_err(|e| format!("bad greeting: {e}"))?;
    greeting
        .get("QMP")
        .and_then(|q| q.get("version"))
        .cloned()
        .ok_or_else(|| format!("not a QMP greeting: {greeting:.200}"))
}

/// What a waiting caller gets: the answer, or the reply line that ended
/// the connection was too long.
type Answer = Result<Result<Value, (String, String)>, TooLong>;
struct TooLong;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

struct Inner {
    socket: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    reader: tokio::task::AbortHandle,
    version: Value,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader holds the read half; the socket closes only once it ends.
        self.reader.abort();
    }
}

/// A connected QMP client. Clones share the connection.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("socket", &self.inner.socket)
            .finish()
    }
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities, all within
    /// `timeout`, which also becomes the timeout of every later call.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, HvError> {
        let io = |action: &'static str| {
            let socket = socket.to_owned();
            move |source| HvError::QmpIo {
                socket,
                action,
                source,
            }
        };
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| HvError::QmpTimeout {
                socket: socket.to_owned(),
                command: "connect".into(),
                waited: timeout,
            })?
            .map_err(io("connect to"))?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        let got = tokio::time::timeout(
            timeout,
            line::read_line(&mut reader, &mut buf, MAX_REPLY_LINE),
        )
        .await
        .map_err(|_| HvError::QmpTimeout {
            socket: socket.to_owned(),
            command: "greeting".into(),
            waited: timeout,
        })?;
        match got {
            Ok(true) => {}
            Ok(false) => {
                return Err(HvError::QmpClosed {
                    socket: socket.to_owned(),
                });
            }
            Err(LineError::TooLong { limit }) => {
                return Err(HvError::QmpTooLong {
                    socket: socket.to_owned(),
                    limit,
                });
            }
            Err(LineError::Io(e)) => return Err(io("read the greeting from")(e)),
        }
        let version = parse_greeting(&buf).map_err(|detail| HvError::QmpProtocol {
            socket: socket.to_owned(),
            detail,
        })?;

        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_loop(
            socket.to_owned(),
            reader,
            pending.clone(),
            events.clone(),
            closed_tx,
        ))
        .abort_handle();
        let qmp = Qmp {
            inner: Arc::new(Inner {
                socket: socket.to_owned(),
                writer: tokio::sync::Mutex::new(write),
                pending,
                next_id: AtomicU64::new(1),
                events,
                closed,
                reader,
                version,
            }),
            timeout,
        };
        qmp.execute_raw("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// The same connection with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// `{"qemu": {"major": 7, …}, "package": …}` from the greeting.
    pub fn version(&self) -> &Value {
        &self.inner.version
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// Events from now on. A lagging receiver loses the oldest events.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// True once the server closed the connection.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Resolves when the server closes the connection.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Resolves when the server closes the connection, without keeping
    /// the connection open meanwhile (unlike holding a clone).
    pub fn on_close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closed.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Run any command; `arguments` may be `Null` for none. The `return`
    /// value on success.
    pub async fn execute_raw(&self, command: &str, arguments: Value) -> Result<Value, HvError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let (tx, rx) = oneshot::channel();
        lock(&inner.pending).insert(id, tx);
        if self.is_closed() {
            lock(&inner.pending).remove(&id);
            return Err(HvError::QmpClosed {
                socket: inner.socket.clone(),
            });
        }
        let timeout = self.timeout;
        let call = async {
            {
                let mut w = inner.writer.lock().await;
                w.write_all(line.as_bytes())
                    .await
                    .map_err(|source| HvError::QmpIo {
                        socket: inner.socket.clone(),
                        action: "write to",
                        source,
                    })?;
            }
            match rx.await {
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Err(TooLong)) => Err(HvError::QmpTooLong {
                    socket: inner.socket.clone(),
                    limit: MAX_REPLY_LINE,
                }),
                Ok(Ok(Err((class, desc)))) => Err(HvError::QmpCommand {
                    socket: inner.socket.clone(),
                    command: command.to_owned(),
                    class,
                    desc,
                }),
                // The reader dropped the sender: connection closed.
                Err(_) => Err(HvError::QmpClosed {
                    socket: inner.socket.clone(),
                }),
            }
        };
        let res = tokio::time::timeout(timeout, call).await;
        lock(&inner.pending).remove(&id);
        res.unwrap_or_else(|_| {
            Err(HvError::QmpTimeout {
                socket: inner.socket.clone(),
                command: command.to_owned(),
                waited: timeout,
            })
        })
    }

    pub async fn query_status(&self) -> Result<QmpStatus, HvError> {
        let v = self.execute_raw("query-status", Value::Null).await?;
        serde_json::from_value(v).map_err(|e| HvError::QmpProtocol {
            socket: self.inner.socket.clone(),
            detail: format!("bad query-status answer: {e}"),
        })
    }

    /// Press the ACPI power button; the guest decides what to do.
    pub async fn system_powerdown(&self) -> Result<(), HvError> {
        self.execute_raw("system_powerdown", Value::Null)
            .await
            .map(drop)
    }

    /// Make QEMU exit. A connection closed before the answer counts as done.
    pub async fn quit(&self) -> Result<(), HvError> {
        match self.execute_raw("quit", Value::Null).await {
            Ok(_) | Err(HvError::QmpClosed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pause the vCPUs (QEMU also drains and flushes the block layer).
    pub async fn stop(&self) -> Result<(), HvError> {
        self.execute_raw("stop", Value::Null).await.map(drop)
    }

    /// Resume the vCPUs.
    pub async fn cont(&self) -> Result<(), HvError> {
        self.execute_raw("cont", Value::Null).await.map(drop)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_loop(
    socket: PathBuf,
    mut reader: BufReader<OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        match line::read_line(&mut reader, &mut buf, MAX_REPLY_LINE).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(LineError::TooLong { limit }) => {
                tracing::warn!(socket = %socket.display(), limit, "qmp reply line too long, closing");
                too_long = true;
                break;
            }
            Err(LineError::Io(e)) => {
                tracing::debug!(socket = %socket.display(), error = %e, "qmp read failed");
                break;
            }
        }
        if buf.trim_ascii().is_empty() {
            continue;
        }
        match parse_message(&buf) {
            Message::Event(event) => {
                let _ = events.send(event);
            }
            Message::Answer { id, answer } => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(Ok(answer));
                }
            }
            Message::Ignored => {
                tracing::debug!(socket = %socket.display(), line = %String::from_utf8_lossy(&buf[..buf.len().min(200)]), "ignoring a qmp message");
            }
        }
    }
    // Mark closed first, then fail every waiting caller now rather than at
    // its timeout: a call registered after the clear sees the flag.
    let _ = closed.send(true);
    let waiting: Vec<_> = lock(&pending).drain().collect();
    if too_long {
        for (_, tx) in waiting {
            let _ = tx.send(Err(TooLong));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake QMP server: greeting, then answers by script. `stop` answers
    /// late and out of order, `bad` fails, `bye` closes the connection.
    async fn fake_server(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}, \"package\": \"\"}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        while let Ok(Some(line)) = lines.next_line().await {
            let msg: Value = serde_json::from_str(&line).unwrap();
            let id = msg["id"].clone();
            let cmd = msg["execute"].as_str().unwrap().to_owned();
            let write = write.clone();
            let reply = match cmd.as_str() {
                "qmp_capabilities" | "cont" => json!({"return": {}, "id": id}),
                "query-status" => {
                    json!({"return": {"running": true, "singlestep": false, "status": "running"}, "id": id})
                }
                "stop" => {
                    // Answer after later commands, with an event first.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut w = write.lock().await;
                        w.write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n").await.unwrap();
                        let r = json!({"return": {}, "id": id}).to_string() + "\r\n";
                        w.write_all(r.as_bytes()).await.unwrap();
                    });
                    continue;
                }
                "echo" => json!({"return": msg["arguments"].clone(), "id": id}),
                "silent" => continue,
                "bye" => return,
                _ => {
                    json!({"error": {"class": "CommandNotFound", "desc": format!("The command {cmd} has not been found")}, "id": id})
                }
            };
            let mut w = write.lock().await;
            w.write_all((reply.to_string() + "\r\n").as_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn framing_ids_events_errors_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.qmp");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_server(listener));
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.version()["qemu"]["major"], 7);
        let mut events = qmp.events();

        // `stop` is answered after `query-status`: ids route the answers.
        let (stopped, status) = tokio::join!(qmp.stop(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            qmp.query_status().await
        });
        stopped.unwrap();
        assert_eq!(status.unwrap().status, "running");
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.event, "STOP");
        assert_eq!(ev.timestamp, (1, 2));

        let echoed = qmp
            .execute_raw("echo", json!({"device": "vda"}))
            .await
            .unwrap();
        assert_eq!(echoed, json!({"device": "vda"}));

        match qmp.execute_raw("nope", Value::Null).await {
            Err(HvError::QmpCommand { class, desc, .. }) => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("expected a command error, got {other:?}"),
        }

        let short = qmp.with_timeout(Duration::from_millis(100));
        assert!(matches!(
            short.execute_raw("silent", Value::Null).await,
            Err(HvError::QmpTimeout { .. })
        ));

        // The server hangs up: the pending call fails at once, later ones too.
        let res = qmp.execute_raw("bye", Value::Null).await;
        assert!(matches!(res, Err(HvError::QmpClosed { .. })), "{res:?}");
        server.await.unwrap();
        assert!(qmp.is_closed());
        assert!(matches!(qmp.cont().await, Err(HvError::QmpClosed { .. })));
    }

    /// QEMU (or a guest feeding it) sends an answer line without end: the
    /// waiting call fails at the limit with an error naming the socket and
    /// the limit, and the connection is closed (it waited for a newline
    /// without a bound before, buffering all of it).
    #[tokio::test]
    async fn hardening_qmp_reply_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.qmp");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write
                .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(read).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            let id = serde_json::from_str::<Value>(&line).unwrap()["id"].clone();
            let ok = json!({"return": {}, "id": id}).to_string() + "\r\n";
            write.write_all(ok.as_bytes()).await.unwrap();
            lines.next_line().await.unwrap().unwrap();
            let _ = write.write_all(b"{\"return\": \"").await;
            let _ = write.write_all(&vec![b'a'; 2 << 20]).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let qmp = Qmp::connect(&path, Duration::from_secs(4)).await.unwrap();
        let err = qmp.query_status().await.unwrap_err();
        assert!(
            matches!(err, HvError::QmpTooLong { limit, .. } if limit == MAX_REPLY_LINE),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("1048576 bytes"), "{text}");
        assert!(qmp.is_closed());
        server.abort();
    }

    #[test]
    fn messages_parse_or_are_ignored() {
        assert_eq!(
            parse_message(br#"{"return": {"a": 1}, "id": 4}"#),
            Message::Answer {
                id: 4,
                answer: Ok(json!({"a": 1}))
            }
        );
        assert!(matches!(
            parse_message(br#"{"event": "STOP", "timestamp": {"seconds": 1}}"#),
            Message::Event(QmpEvent { ref event, timestamp: (1, 0), .. }) if event == "STOP"
        ));
        assert_eq!(parse_message(br#"{"return": 1}"#), Message::Ignored);
        assert_eq!(parse_message(b"\xff"), Message::Ignored);
        assert!(parse_greeting(br#"{"QMP": {"version": {}}}"#).is_ok());
        assert!(parse_greeting(b"[]").is_err());
    }
}
