//! Test hosts in network namespaces: site 1 (the VNF and its host's
//! agent) and site 2 (an agent as a second vantage point), each linked to
//! the controller in the root namespace and to each other by veth pairs.
//! Addresses come from 198.18.0.0/15, one /24 per lab:
//!
//! ```text
//! controller 198.18.N.1 ── 198.18.N.2  site1
//! controller 198.18.N.5 ── 198.18.N.6  site2
//!      site2 198.18.N.9 ── 198.18.N.10 site1
//! controller 198.18.N.13 ─ 198.18.N.14 client
//! ```
//! The client namespace stands for the customers: it reaches the
//! controller (and so the front door) only.
//! Needs root and iproute2 (CI runs as root); everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetLab {
    pub n: u32,
    pub s1: String,
    pub s2: String,
    /// The customers' namespace.
    pub client: String,
    /// Root side of the controller–site1 link.
    ctl_s1: String,
    /// Site 2 side of the site2–site1 link.
    s2_s1: String,
    /// nftables loss applied in site 1.
    lossy: bool,
    /// `route_all` was asked for (and is redone on heal).
    routed: std::sync::atomic::AtomicBool,
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (network tests need iproute2 and root)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {} (network tests need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    pub fn new() -> NetLab {
        let pid = std::process::id();
        let n = (pid % 25) * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10 + 1;
        let tag = format!("{}{}", pid % 100_000, n);
        let lab = NetLab {
            n,
            s1: format!("sb{tag}s1"),
            s2: format!("sb{tag}s2"),
            client: format!("sb{tag}cl"),
            ctl_s1: format!("v{tag}c1"),
            s2_s1: format!("v{tag}21"),
            lossy: false,
            routed: std::sync::atomic::AtomicBool::new(false),
        };
        for ns in [&lab.s1, &lab.s2, &lab.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let a = |host: u32| format!("198.18.{n}.{host}/30");
        // controller – site1
        lab.veth(
            &lab.ctl_s1,
            None,
            &a(1),
            &format!("v{tag}s1"),
            Some(&lab.s1),
            &a(2),
        );
        // controller – site2
        lab.veth(
            &format!("v{tag}c2"),
            None,
            &a(5),
            &format!("v{tag}s2"),
            Some(&lab.s2),
            &a(6),
        );
        // site2 – site1
        lab.veth(
            &lab.s2_s1,
            Some(&lab.s2),
            &a(9),
            &format!("v{tag}12"),
            Some(&lab.s1),
            &a(10),
        );
        // controller – client
        lab.veth(
            &format!("v{tag}cc"),
            None,
            &a(13),
            &format!("v{tag}cl"),
            Some(&lab.client),
            &a(14),
        );
        // A cut link takes its /30 route with it: without this, the root
        // namespace would then send what was meant for that site to its
        // default route (off the machine, where a gateway may even answer)
        // instead of failing at once as a lost site does.
        sh(&["ip", "route", "replace", "unreachable", &lab.lab_net()]);
        lab
    }

    /// The lab's /24 (see the module's comment).
    fn lab_net(&self) -> String {
        format!("198.18.{}.0/24", self.n)
    }

    fn veth(
        &self,
        a: &str,
        ans: Option<&str>,
        aaddr: &str,
        b: &str,
        bns: Option<&str>,
        baddr: &str,
    ) {
        sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        for (dev, ns, addr) in [(a, ans, aaddr), (b, bns, baddr)] {
            if let Some(ns) = ns {
                sh(&["ip", "link", "set", dev, "netns", ns]);
                sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
                sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            } else {
                sh(&["ip", "addr", "add", addr, "dev", dev]);
                sh(&["ip", "link", "set", dev, "up"]);
            }
        }
    }

    /// Routes so that every namespace reaches every other one's main
    /// address (site 1 at .2, site 2 at .6, the root namespace at .1)
    /// over the direct links only: site 2 reaches .1 over its controller
    /// link and .2 over the site link; site 1 reaches .6 over the site
    /// link. Cutting a link cuts exactly what crosses it.
    pub fn route_all(&self) {
        let (n1, n2, n5, n6, n9, n10) = (
            self.addr(1),
            self.addr(2),
            self.addr(5),
            self.addr(6),
            self.addr(9),
            self.addr(10),
        );
        sh(&["ip", "-n", &self.s2, "route", "replace", &n1, "via", &n5]);
        sh(&["ip", "-n", &self.s2, "route", "replace", &n2, "via", &n10]);
        sh(&["ip", "-n", &self.s1, "route", "replace", &n6, "via", &n9]);
        self.routed.store(true, Ordering::Relaxed);
    }

    pub fn addr(&self, host: u32) -> String {
        format!("198.18.{}.{host}", self.n)
    }

    /// `ip netns exec NS` + the command, as arguments for a VM or a process.
    pub fn in_ns(&self, ns: &str) -> Vec<String> {
        vec!["netns".into(), "exec".into(), ns.to_string()]
    }

    /// Site 1 loses both its links.
    pub fn cut_site1(&self) {
        sh(&["ip", "link", "set", &self.ctl_s1, "down"]);
        sh(&["ip", "-n", &self.s2, "link", "set", &self.s2_s1, "down"]);
    }

    /// Only the controller's link to site 1 is cut.
    pub fn cut_controller_site1(&self) {
        sh(&["ip", "link", "set", &self.ctl_s1, "down"]);
    }

    /// Only the link between the sites is cut.
    pub fn cut_between_sites(&self) {
        sh(&["ip", "-n", &self.s2, "link", "set", &self.s2_s1, "down"]);
    }

    /// Limit what site 1 sends to site 2 to `rate` (e.g. `40mbit`), with
    /// `tc tbf` on site 1's end of their link.
    pub fn shape_site1_to_site2(&self, rate: &str) {
        let dev = self.site1_to_site2();
        sh(&[
            "ip", "netns", "exec", &self.s1, "tc", "qdisc", "replace", "dev", &dev, "root", "tbf",
            "rate", rate, "burst", "64kb", "latency", "200ms",
        ]);
    }

    /// Site 1's end of its link to site 2 (in namespace `s1`).
    pub fn site1_to_site2(&self) -> String {
        format!("v{}12", &self.s2_s1[1..self.s2_s1.len() - 2])
    }

    /// Bytes site 1 has sent on its link to site 2 (Ethernet headers
    /// included, as `tc tbf` counts them).
    pub fn site1_to_site2_tx_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.s1, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/tx_bytes",
                self.site1_to_site2()
            ))
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    pub fn heal(&self) {
        sh(&["ip", "link", "set", &self.ctl_s1, "up"]);
        sh(&["ip", "-n", &self.s2, "link", "set", &self.s2_s1, "up"]);
        // A link taken down took its routes with it.
        if self.routed.load(Ordering::Relaxed) {
            self.route_all();
        }
    }

    /// Drop `percent` % of the packets entering and leaving site 1 (all
    /// its links), with nftables (this kernel has no netem).
    pub fn loss_site1(&mut self, percent: u32) {
        let rules = format!(
            "table inet standby_loss {{
  chain input {{ type filter hook input priority 0; iifname != \"lo\" numgen random mod 100 < {percent} drop; }}
  chain output {{ type filter hook output priority 0; oifname != \"lo\" numgen random mod 100 < {percent} drop; }}
}}
"
        );
        let path = std::env::temp_dir().join(format!("standby-loss-{}.nft", self.n));
        std::fs::write(&path, rules).unwrap();
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.s1,
            "nft",
            "-f",
            path.to_str().unwrap(),
        ]);
        self.lossy = true;
    }

    pub fn no_loss_site1(&mut self) {
        if self.lossy {
            sh(&[
                "ip",
                "netns",
                "exec",
                &self.s1,
                "nft",
                "delete",
                "table",
                "inet",
                "standby_loss",
            ]);
            self.lossy = false;
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it and their peers.
        for ns in [&self.s1, &self.s2, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.ctl_s1])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &self.lab_net()])
            .output();
    }
}
