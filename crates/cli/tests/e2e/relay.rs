//! A delaying TCP relay, for WAN figures on a kernel without `netem`:
//! it listens inside a network namespace and forwards every connection
//! to an address reached from there, holding each direction's bytes for
//! `delay` (20 ms each way: a 40 ms round trip for every request and
//! answer of the copy protocol).
//!
//! Throughput is kept: each direction is a reader and a writer thread
//! with up to [`LINE`] reads (at most 64 KiB each) in the delay line
//! between them, about what a socket buffer holds on such a path. The
//! TCP handshake and acknowledgements of the two legs are not delayed
//! (each leg is local); what a long round trip costs a copy is the wait
//! for each answer, and that is delayed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Reads in flight per direction.
const LINE: usize = 64;
/// A connection idle this long is dropped (every loop ends).
const IDLE: Duration = Duration::from_secs(300);

pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Both sockets of every connection so far, for [`Relay::reset`].
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// Listen on `listen` inside network namespace `ns` (empty: this
    /// process's own) and forward to `to`, delaying each direction by
    /// `delay`.
    pub fn start(ns: &str, listen: SocketAddr, to: SocketAddr, delay: Duration) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = sync_channel(1);
        let (ns, flag) = (
            (!ns.is_empty()).then(|| format!("/run/netns/{ns}")),
            stop.clone(),
        );
        let conns = Arc::new(Mutex::new(Vec::new()));
        let open = conns.clone();
        let thread = std::thread::spawn(move || {
            // This thread, and the threads it starts, live in `ns`.
            if let Some(ns) = ns {
                let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("relay {listen}: {e}"));
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((a, _)) => {
                        a.set_nonblocking(false).unwrap();
                        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                            Ok(b) => {
                                let mut o = open.lock().unwrap();
                                o.extend([a.try_clone().unwrap(), b.try_clone().unwrap()]);
                                drop(o);
                                pump(&a, &b, delay);
                                pump(&b, &a, delay);
                            }
                            Err(e) => eprintln!("relay: {to}: {e}"),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("relay accept: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the relay listens");
        Relay {
            stop,
            thread: Some(thread),
            conns,
        }
    }

    /// Drop every connection at once, as a middlebox losing its state
    /// does: requests on the way fail and are sent again.
    pub fn reset(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Relay {
    /// Stop: refuse new connections and drop every open one, as a server
    /// that stopped does.
    pub fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.reset();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forward what `from` sends to `to`, each read held for `delay`.
fn pump(from: &TcpStream, to: &TcpStream, delay: Duration) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    from.set_read_timeout(Some(IDLE)).unwrap();
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(LINE);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
