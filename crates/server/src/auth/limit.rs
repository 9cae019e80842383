//! Login throttling: failed password logins per account and per source
//! address, and how much Argon2 work runs at once.
//!
//! # Failures
//! Each account name (known or not) and each source address (an IPv6
//! address by its /64, which one host usually holds whole) has a failure
//! count. The first [`Policy::account_free`] / [`Policy::address_free`]
//! failures cost nothing; each further one makes the next attempt wait
//! `base · 2^(n - free)`, at most [`Policy::account_max`] /
//! [`Policy::address_max`]. An attempt inside the wait is answered 429
//! with `Retry-After`, before any password work, and does not count (the
//! wait never grows while the attacker only knocks). A success clears
//! both counts; a count is forgotten after [`Policy::forget_after`]
//! without a failure.
//!
//! # Account lockout
//! A per-account limit lets an attacker who knows a user's name delay the
//! user. So: the account's wait is short at most ([`Policy::account_max`],
//! never a lock until an admin acts), and an address from which the
//! account logged in successfully in the last [`Policy::trust_for`] is
//! exempt from the account's limit (not from its own address limit): the
//! user at their usual place logs in while someone elsewhere guesses.
//! The price: an attacker at such an address (the same NAT) is limited by
//! address only.
//!
//! # Memory
//! Every table is an LRU of at most [`Policy::entries`] entries, so a
//! flood of names or addresses cannot grow it; an evicted count starts
//! again from zero (an attacker would need that many other names or
//! addresses, each paying the address limit, to reset one).
//!
//! # Argon2
//! A verification takes tens of milliseconds and 19 MiB. At most as many
//! run at once as the machine has cores ([`Argon2Gate`]); a login that
//! cannot start one within [`Policy::argon2_wait`] is answered 503 with
//! `Retry-After: 1`, so a flood of logins queues briefly and then sheds,
//! and never holds more than that memory.

use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LruCache;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The limits; [`Policy::default`] is what the controller uses.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures of one account name (from any address) before waits start.
    pub account_free: u32,
    /// The longest wait an account's failures impose.
    pub account_max: Duration,
    /// Failures from one address (any account) before waits start.
    pub address_free: u32,
    /// The longest wait an address's failures impose.
    pub address_max: Duration,
    /// The first wait; each further failure doubles it.
    pub base: Duration,
    /// A count without a failure for this long is forgotten.
    pub forget_after: Duration,
    /// An address the account logged in from is exempt from the account's
    /// limit for this long.
    pub trust_for: Duration,
    /// Entries per table.
    pub entries: usize,
    /// Argon2 verifications at once (0: one per core).
    pub argon2_at_once: usize,
    /// How long a login waits for an Argon2 slot before a 503.
    pub argon2_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            account_free: 5,
            account_max: Duration::from_secs(60),
            address_free: 10,
            address_max: Duration::from_secs(15 * 60),
            base: Duration::from_secs(1),
            forget_after: Duration::from_secs(15 * 60),
            trust_for: Duration::from_secs(30 * 24 * 3600),
            entries: 65_536,
            argon2_at_once: 0,
            argon2_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is answered before this.
    until: Instant,
}

type Table<K> = Mutex<LruCache<K, Failures, RandomState>>;

fn table<K: std::hash::Hash + Eq>(n: usize) -> Table<K> {
    Mutex::new(LruCache::with_hasher(n.max(1), RandomState::new()))
}

/// Why a login is not tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures of this account: wait.
    Account(Duration),
    /// Too many failures from this address: wait.
    Address(Duration),
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Account(d) | Refusal::Address(d) => *d,
        }
    }
}

/// The failure counts of logins and the Argon2 gate.
pub struct LoginGuard {
    policy: Policy,
    accounts: Table<String>,
    addresses: Table<IpAddr>,
    /// (account, address) of successful logins, and when.
    trusted: Mutex<LruCache<(String, IpAddr), Instant, RandomState>>,
    pub argon2: Argon2Gate,
}

/// An IPv6 address stands for its /64; IPv4 for itself.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl LoginGuard {
    pub fn new(policy: Policy) -> LoginGuard {
        LoginGuard {
            policy,
            accounts: table(policy.entries),
            addresses: table(policy.entries),
            trusted: Mutex::new(LruCache::with_hasher(
                policy.entries.max(1),
                RandomState::new(),
            )),
            argon2: Argon2Gate::new(policy.argon2_at_once, policy.argon2_wait),
        }
    }

    fn wait<K: std::hash::Hash + Eq>(&self, t: &Table<K>, k: &K, now: Instant) -> Option<Duration> {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let f = t.peek(k)?;
        if now.duration_since(f.last) >= self.policy.forget_after {
            t.remove(k);
            return None;
        }
        (f.until > now).then(|| f.until - now)
    }

    fn trusted(&self, account: &str, ip: IpAddr, now: Instant) -> bool {
        let t = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        t.peek(&(account.to_string(), ip))
            .is_some_and(|at| now.duration_since(*at) < self.policy.trust_for)
    }

    /// Whether a login of `account` from `ip` may be tried at `now`.
    pub fn check(&self, account: &str, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let ip = source(ip);
        if let Some(d) = self.wait(&self.addresses, &ip, now) {
            return Err(Refusal::Address(d));
        }
        if !self.trusted(account, ip, now)
            && let Some(d) = self.wait(&self.accounts, &account.to_string(), now)
        {
            return Err(Refusal::Account(d));
        }
        Ok(())
    }

    fn count<K: std::hash::Hash + Eq>(
        &self,
        t: &Table<K>,
        k: K,
        free: u32,
        max: Duration,
        now: Instant,
    ) {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = match t.get(&k) {
            Some(f) if now.duration_since(f.last) < self.policy.forget_after => *f,
            _ => Failures {
                count: 0,
                last: now,
                until: now,
            },
        };
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= free {
            let doublings = (f.count - free).min(30);
            let d = self.policy.base.saturating_mul(1 << doublings).min(max);
            f.until = now + d;
        }
        t.insert(k, f);
    }

    /// A wrong password (or an unknown name) for `account` from `ip`.
    pub fn failed(&self, account: &str, ip: IpAddr, now: Instant) {
        let ip = source(ip);
        let p = self.policy;
        self.count(&self.addresses, ip, p.address_free, p.address_max, now);
        if !self.trusted(account, ip, now) {
            self.count(
                &self.accounts,
                account.to_string(),
                p.account_free,
                p.account_max,
                now,
            );
        }
    }

    /// A successful login: both counts cleared, the address trusted for
    /// the account.
    pub fn succeeded(&self, account: &str, ip: IpAddr, now: Instant) {
        let ip = source(ip);
        let lock = |t: &Table<String>| {
            t.lock().unwrap_or_else(|e| e.into_inner()).remove(account);
        };
        lock(&self.accounts);
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
        self.trusted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((account.to_string(), ip), now);
    }
}

/// At most N Argon2 computations at once (N: the cores, or the policy's).
pub struct Argon2Gate {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Argon2Gate {
    pub fn new(at_once: usize, wait: Duration) -> Argon2Gate {
        let n = if at_once > 0 {
            at_once
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        Argon2Gate {
            slots: Arc::new(Semaphore::new(n)),
            wait,
        }
    }

    /// A slot, or None when none came free within the wait.
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        tokio::time::timeout(self.wait, self.slots.acquire())
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hardening_failures_back_off_per_account_and_per_address() {
        let g = LoginGuard::new(Policy::default());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Five free failures of ann, then a wait of 1 s, doubling.
        for _ in 0..4 {
            assert_eq!(g.check("ann", a, t0), Ok(()));
            g.failed("ann", a, t0);
        }
        g.failed("ann", a, t0);
        assert_eq!(
            g.check("ann", ip("198.51.100.7"), t0),
            Err(Refusal::Account(Duration::from_secs(1)))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(g.check("ann", a, t1), Ok(()));
        g.failed("ann", a, t1);
        assert_eq!(
            g.check("ann", a, t1),
            Err(Refusal::Account(Duration::from_secs(2)))
        );
        // The account's wait is bounded.
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_secs(61);
            g.failed("ann", a, t);
        }
        assert!(
            g.check("ann", ip("198.51.100.9"), t)
                .unwrap_err()
                .retry_after()
                <= Duration::from_secs(60)
        );
        // Ten failures from one address on different names: the address waits.
        let b = ip("2001:db8:1:2::5");
        for i in 0..10 {
            assert_eq!(g.check(&format!("u{i}"), b, t0), Ok(()));
            g.failed(&format!("u{i}"), b, t0);
        }
        // Another address of the same /64 is the same source.
        assert_eq!(
            g.check("bob", ip("2001:db8:1:2::99"), t0),
            Err(Refusal::Address(Duration::from_secs(1)))
        );
        assert_eq!(g.check("bob", ip("2001:db8:1:3::99"), t0), Ok(()));
        // Forgotten after a quiet while.
        let later = t0 + Duration::from_secs(16 * 60);
        assert_eq!(g.check("bob", b, later), Ok(()));
    }

    #[test]
    fn hardening_an_attacker_does_not_lock_the_user_out_of_a_known_address() {
        let g = LoginGuard::new(Policy::default());
        let t0 = Instant::now();
        let home = ip("192.0.2.10");
        g.succeeded("ann", home, t0);
        // Someone guesses ann's password from many addresses.
        for i in 0..200u32 {
            let evil = IpAddr::from([203, 0, (i / 250) as u8, (i % 250) as u8]);
            g.failed("ann", evil, t0);
        }
        assert!(matches!(
            g.check("ann", ip("198.51.100.1"), t0),
            Err(Refusal::Account(_))
        ));
        // Ann at home is not held back; a success clears the account's count.
        assert_eq!(g.check("ann", home, t0), Ok(()));
        g.succeeded("ann", home, t0);
        assert_eq!(g.check("ann", ip("198.51.100.1"), t0), Ok(()));
    }

    #[tokio::test]
    async fn hardening_argon2_runs_at_most_n_at_once() {
        let gate = Argon2Gate::new(2, Duration::from_millis(50));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        assert!(gate.enter().await.is_none(), "a third slot");
        drop(a);
        assert!(gate.enter().await.is_some());
    }
}
