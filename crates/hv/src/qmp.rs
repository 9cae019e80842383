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
//! and later calls fail with [`HvError::QmpClosed`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, watch};

use crate::HvError;

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

type Answer = Result<Value, (String, String)>;
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
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| HvError::QmpTimeout {
                socket: socket.to_owned(),
                command: "greeting".into(),
                waited: timeout,
            })?
            .map_err(io("read the greeting from"))?
            .ok_or_else(|| HvError::QmpClosed {
                socket: socket.to_owned(),
            })?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| HvError::QmpProtocol {
                socket: socket.to_owned(),
                detail: format!("bad greeting: {e}"),
            })?;
        let version = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .cloned()
            .ok_or_else(|| HvError::QmpProtocol {
                socket: socket.to_owned(),
                detail: format!("not a QMP greeting: {greeting}"),
            })?;

        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_loop(
            socket.to_owned(),
            lines,
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
                Ok(Ok(v)) => Ok(v),
                Ok(Err((class, desc))) => Err(HvError::QmpCommand {
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
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(socket = %socket.display(), error = %e, "qmp read failed");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "ignoring a bad qmp message");
                continue;
            }
        };
        if let Some(event) = msg.get("event").and_then(Value::as_str) {
            let ts = msg.get("timestamp");
            let field = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_i64);
            let _ = events.send(QmpEvent {
                event: event.to_owned(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp: (
                    field("seconds").unwrap_or(0),
                    field("microseconds").unwrap_or(0),
                ),
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::debug!(socket = %socket.display(), %msg, "qmp answer without id");
            continue;
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
        if let Some(tx) = lock(&pending).remove(&id) {
            let _ = tx.send(answer);
        }
    }
    // Mark closed first, then fail every waiting caller now rather than at
    // its timeout: a call registered after the clear sees the flag.
    let _ = closed.send(true);
    lock(&pending).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
