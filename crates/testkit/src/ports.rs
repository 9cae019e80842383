//! Free ports for tests, picked outside the kernel's ephemeral range.
//!
//! A port the kernel handed out with `bind(…:0)` comes from the ephemeral
//! range, and so can be handed out again, to an outgoing connection of
//! any process, before the test binds it for real: QEMU then fails with
//! "Could not set up host forwarding rule". Ports below that range are
//! never given out implicitly, so only another explicit bind can take
//! one; a counter per process (started at an offset from the pid) keeps
//! two tests of one binary from choosing the same one.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The ports this module chooses from: below the ephemeral range when
/// there is room there, else above it.
fn span() -> (u32, u32) {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if low > 12_000 {
        (10_000, low)
    } else {
        (high.max(1024) + 1, 65_536)
    }
}

/// A port that nothing holds for TCP or UDP on any address at the time
/// of the call, outside the ephemeral range (see the module comment).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (from, to) = span();
    let width = to - from;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % width,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..width.min(5000) {
        let port = (from + NEXT.fetch_add(1, Ordering::SeqCst) % width) as u16;
        let any = Ipv4Addr::UNSPECIFIED;
        if TcpListener::bind((any, port)).is_ok() && UdpSocket::bind((any, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for TCP and UDP in {from}..{to}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (from, to) = span();
        let a: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), a.len(), "a port was chosen twice: {a:?}");
        for p in a {
            assert!(
                (from..to).contains(&u32::from(p)),
                "{p} outside {from}..{to}"
            );
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
