//! Probes run from inside a network namespace see that namespace only.
//! Needs root and iproute2 (CI runs as root).

use std::process::Command;
use std::time::Duration;

use standby_monitor::probe::{run, run_in_netns};
use standby_types::watch::{ProbeCheck, ProbeSpec};

fn tcp(target: String) -> ProbeSpec {
    ProbeSpec {
        name: "t".into(),
        check: ProbeCheck::Tcp { target },
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        attempts: 1,
        labels: Default::default(),
    }
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("sbprobe{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("iproute2");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A listener made inside the namespace (on a thread that joined it).
fn listen_in(ns: &str) -> std::net::TcpListener {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_probe_in_a_namespace_sees_only_that_namespace() {
    let ns = Netns::new();
    // A service in the root namespace is invisible from inside.
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out_addr = outside.local_addr().unwrap().to_string();
    assert!(run(&tcp(out_addr.clone())).await.ok);
    let o = run_in_netns(&ns.0, &tcp(out_addr)).await.unwrap();
    assert!(
        !o.ok,
        "the root namespace's listener must not be reachable: {o:?}"
    );
    // One inside is reachable from inside only.
    let inside = listen_in(&ns.0);
    let in_addr = inside.local_addr().unwrap().to_string();
    let o = run_in_netns(&ns.0, &tcp(in_addr.clone())).await.unwrap();
    assert!(o.ok, "{o:?}");
    if inside.local_addr().unwrap().port() != outside.local_addr().unwrap().port() {
        assert!(!run(&tcp(in_addr)).await.ok, "reachable from outside");
    }
}

#[tokio::test]
async fn a_missing_namespace_is_a_clear_error() {
    let e = run_in_netns("sb-no-such-ns", &tcp("127.0.0.1:1".into()))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("network namespace sb-no-such-ns"),
        "{e}"
    );
}
