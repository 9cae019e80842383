//! No replay: every state-changing call between standby's processes
//! carries the receiver's session and a counter of its sender, checked
//! without comparing wall clocks.
//!
//! The receiver (an agent for the controller's calls and peers' copies;
//! the controller for heartbeats and results) draws a random **session**
//! when it starts. A sender first asks for it (`GET /agent/v1/session`, or
//! a heartbeat that names no session) and is told the session and the
//! next counter it may use; each call then carries both
//! ([`SESSION_HEADER`], [`SEQ_HEADER`]). The receiver keeps, per sender, the
//! highest counter seen and which of the [`WINDOW`] below it were seen, so
//! calls that overtake each other in flight are taken, and every counter
//! is taken once:
//! - a replayed call names a counter already seen, or one below the
//!   window: refused;
//! - a call recorded before the receiver restarted names an old session:
//!   refused (the sender asks again, see [`Refusal::StaleSession`]);
//! - a sender that restarts asks again and is told a counter above every
//!   one it used before, so it never collides with its own old calls.
//!
//! Nothing here is a secret: what makes a call the sender's own is the
//! channel (mutual TLS, see `standby_tls`); this makes each call count
//! once on that channel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The receiver's session, on each call.
pub const SESSION_HEADER: &str = "x-standby-session";
/// The sender's counter, on each call.
pub const SEQ_HEADER: &str = "x-standby-seq";
/// How many counters below the highest are still taken if not seen (calls
/// in flight at once overtake each other by fewer).
pub const WINDOW: u64 = 128;

/// What a sender is told when it asks: the session, and the first counter
/// to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub session: String,
    pub next: u64,
}

/// Why a call is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No session or counter on a call that needs them.
    Missing,
    /// The session is not the receiver's current one (it restarted, or the
    /// call is a recording): ask again.
    StaleSession,
    /// This counter was taken already: a replay.
    Replayed(u64),
    /// Further below the highest than the window: a replay, or a call so
    /// late that it is no longer told apart from one.
    TooOld { seq: u64, highest: u64 },
}

impl Refusal {
    /// The error code on the wire: a sender asks for the session on
    /// `stale_session`.
    pub fn code(&self) -> &'static str {
        match self {
            // Ask for the session (again).
            Refusal::Missing | Refusal::StaleSession => "stale_session",
            _ => "replayed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => write!(
                f,
                "the call carries no session and counter ({SESSION_HEADER}, {SEQ_HEADER})"
            ),
            Refusal::StaleSession => write!(
                f,
                "the call names another session of the receiver (it restarted, or the call was recorded): ask for the session again"
            ),
            Refusal::Replayed(n) => write!(f, "counter {n} was used already: a replayed call"),
            Refusal::TooOld { seq, highest } => write!(
                f,
                "counter {seq} is more than {WINDOW} below the highest seen ({highest}): a replayed or stale call"
            ),
        }
    }
}

/// The counters one sender used in this session.
#[derive(Debug, Default)]
struct Window {
    /// The highest counter taken (0: none yet; counters start at 1).
    highest: u64,
    /// Bit i: counter `highest - 1 - i` was taken.
    below: u128,
}

impl Window {
    fn take(&mut self, seq: u64) -> Result<(), Refusal> {
        if seq == 0 {
            return Err(Refusal::Missing);
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.below = if shift > 128 {
                0
            } else if shift == 128 {
                1u128 << 127
            } else {
                // The old highest becomes bit shift-1.
                (self.below << shift) | (1u128 << (shift - 1))
            };
            if self.highest == 0 {
                self.below = 0;
            }
            self.highest = seq;
            return Ok(());
        }
        if seq == self.highest {
            return Err(Refusal::Replayed(seq));
        }
        let back = self.highest - seq;
        if back > WINDOW {
            return Err(Refusal::TooOld {
                seq,
                highest: self.highest,
            });
        }
        let bit = 1u128 << (back - 1);
        if self.below & bit != 0 {
            return Err(Refusal::Replayed(seq));
        }
        self.below |= bit;
        Ok(())
    }
}

/// The receiving side: this process's session and each sender's window.
pub struct Freshness {
    session: String,
    senders: Mutex<HashMap<String, Window>>,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness::new()
    }
}

impl Freshness {
    /// A new session (128 random bits).
    pub fn new() -> Freshness {
        Freshness {
            session: hex::encode(rand::random::<[u8; 16]>()),
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// What `sender` is told when it asks: the session and a counter
    /// above every one it used in it.
    pub fn hello(&self, sender: &str) -> Session {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        Session {
            session: self.session.clone(),
            next: senders.get(sender).map_or(1, |w| w.highest + 1),
        }
    }

    /// Take a call of `sender` naming `session` and counter `seq`, once.
    pub fn check(&self, sender: &str, session: &str, seq: u64) -> Result<(), Refusal> {
        use subtle::ConstantTimeEq;
        if !bool::from(session.as_bytes().ct_eq(self.session.as_bytes())) {
            return Err(Refusal::StaleSession);
        }
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.entry(sender.to_string()).or_default().take(seq)
    }

    /// [`Freshness::check`] of a call's headers.
    pub fn check_headers(
        &self,
        sender: &str,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), Refusal> {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        let (Some(session), Some(seq)) = (get(SESSION_HEADER), get(SEQ_HEADER)) else {
            return Err(Refusal::Missing);
        };
        let seq = seq.parse::<u64>().map_err(|_| Refusal::Missing)?;
        self.check(sender, session, seq)
    }
}

/// The sending side, for one receiver: the session it was told and the
/// next counter. Shared by every task that calls that receiver.
#[derive(Default)]
pub struct Sequencer {
    state: Mutex<Option<(String, std::sync::Arc<AtomicU64>)>>,
}

impl Sequencer {
    /// The session and counter for the next call, if a session is known.
    pub fn next(&self) -> Option<(String, u64)> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.as_ref()
            .map(|(id, n)| (id.clone(), n.fetch_add(1, Ordering::Relaxed)))
    }

    /// Adopt what the receiver told (after asking, or a `stale_session`).
    pub fn adopt(&self, s: Session) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            // Another task adopted this session already: keep its counter.
            Some((id, _)) if *id == s.session => {}
            _ => *state = Some((s.session, std::sync::Arc::new(AtomicU64::new(s.next)))),
        }
    }

    /// Forget the session (the receiver said it is stale).
    pub fn forget(&self, stale: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.as_ref().is_some_and(|(id, _)| id == stale) {
            *state = None;
        }
    }

    /// The headers of the next call, if a session is known.
    pub fn headers(&self) -> Option<(String, [(&'static str, String); 2])> {
        self.next().map(|(session, seq)| {
            (
                session.clone(),
                [(SESSION_HEADER, session), (SEQ_HEADER, seq.to_string())],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_taken_once_and_overtaking_calls_are_taken() {
        let f = Freshness::new();
        let s = f.hello("ctl").session;
        assert_eq!(f.check("ctl", &s, 1), Ok(()));
        assert_eq!(f.check("ctl", &s, 1), Err(Refusal::Replayed(1)));
        // 3 overtakes 2; both are taken once.
        assert_eq!(f.check("ctl", &s, 3), Ok(()));
        assert_eq!(f.check("ctl", &s, 2), Ok(()));
        assert_eq!(f.check("ctl", &s, 2), Err(Refusal::Replayed(2)));
        assert_eq!(f.check("ctl", &s, 3), Err(Refusal::Replayed(3)));
        // Each sender has its own counters.
        assert_eq!(f.check("other", &s, 1), Ok(()));
        // Far behind: refused even if never seen.
        assert_eq!(f.check("ctl", &s, 1000), Ok(()));
        assert!(matches!(
            f.check("ctl", &s, 1000 - WINDOW - 1),
            Err(Refusal::TooOld { .. })
        ));
        assert_eq!(f.check("ctl", &s, 1000 - WINDOW), Ok(()));
        assert_eq!(
            f.check("ctl", &s, 1000 - WINDOW),
            Err(Refusal::Replayed(1000 - WINDOW))
        );
        // A jump of exactly the window keeps the old highest.
        assert_eq!(f.check("ctl", &s, 1000 + WINDOW), Ok(()));
        assert_eq!(f.check("ctl", &s, 1000), Err(Refusal::Replayed(1000)));
        // A jump of more than the window forgets what is below.
        assert_eq!(f.check("ctl", &s, 5000), Ok(()));
        assert_eq!(f.check("ctl", &s, 4999), Ok(()));
        assert_eq!(f.check("ctl", &s, 0), Err(Refusal::Missing));
    }

    #[test]
    fn another_session_is_refused_and_a_restarted_sender_starts_above_its_old_calls() {
        let f = Freshness::new();
        let old = Freshness::new().hello("ctl").session;
        assert_eq!(f.check("ctl", &old, 1), Err(Refusal::StaleSession));
        let s = f.hello("ctl");
        assert_eq!(s.next, 1);
        for n in 1..=10 {
            f.check("ctl", &s.session, n).unwrap();
        }
        // The sender restarted: it asks, and never reuses 1..=10.
        let again = f.hello("ctl");
        assert_eq!(again.session, s.session);
        assert_eq!(again.next, 11);
        let seq = Sequencer::default();
        assert_eq!(seq.next(), None);
        seq.adopt(again);
        let (sess, n) = seq.next().unwrap();
        assert_eq!(f.check("ctl", &sess, n), Ok(()));
        // A second adopt of the same session keeps the counter.
        seq.adopt(f.hello("ctl"));
        let (_, m) = seq.next().unwrap();
        assert_eq!(m, n + 1);
        seq.forget(&sess);
        assert_eq!(seq.next(), None);
    }

    #[test]
    fn a_random_order_within_the_window_takes_each_counter_once() {
        let f = Freshness::new();
        let s = f.hello("a").session;
        // 1..=200 in a shuffled order whose displacement stays < WINDOW.
        let mut order: Vec<u64> = (1..=200).collect();
        for c in order.chunks_mut(50) {
            c.reverse();
        }
        for n in &order {
            assert_eq!(f.check("a", &s, *n), Ok(()), "first {n}");
        }
        for n in &order {
            assert!(f.check("a", &s, *n).is_err(), "second {n}");
        }
    }
}
