//! The DNS traffic target against a real BIND9 (`named`, started by
//! `standby_testkit::bind`): a switch moves the service's name to the
//! active site's address with the configured TTL, in one signed update the
//! server accepts; a wrong key is refused with an error that says so and
//! leaves the record alone; a restarted front door repairs the record.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hickory_net::proto::op::{DnsRequestOptions, Query};
use hickory_net::proto::rr::{Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, FirstAnswer};
use standby_db::{Repo, ServiceRepo, SqlRepo};
use standby_frontdoor::{DnsTarget, FrontDoor, TrafficTarget};
use standby_testkit::bind::Bind;
use standby_types::config::Config;
use standby_types::error_chain;

const SITE1: &str = "198.18.0.2";
const SITE2: &str = "198.18.0.6";
const SITE3: &str = "2001:db8::6";
const TTL: u32 = 7;

/// A secret of the right form that the server does not know.
const WRONG_SECRET: &str = "c3RhbmRieS13cm9uZy1zZWNyZXQtMDEyMzQ1Njc4OQ==";

fn config(dir: &Path, server: SocketAddr, zone: &str, key: &str, secret_file: &Path) -> Config {
    let d = dir.display();
    let src = format!(
        r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "{d}/data"
builtin_rules = false

[sites.site1]
[sites.site2]
[sites.site3]

[hosts.h1]
site = "site1"
driver = "process"
disk_dir = "{d}/h1"

[hosts.h2]
site = "site2"
driver = "process"
disk_dir = "{d}/h2"

[vms.pbx1]
host = "h1"
dr_site = "site2"
command = "true"

[services.sip]
vm = "pbx1"
listen = "127.0.0.1:15060"
backends = {{ site1 = "{SITE1}:5060", site2 = "{SITE2}:5060", site3 = "[{SITE3}]:5060" }}
dns_name = "sip"

[services.web]
vm = "pbx1"
listen = "127.0.0.1:15080"
protocols = ["tcp"]
backends = {{ site1 = "{SITE1}:80", site2 = "{SITE2}:80" }}

[dns]
server = "{server}"
zone = "{zone}"
key_name = "{key}"
secret_file = "{secret}"
ttl = "{TTL}s"
"#,
        secret = secret_file.display(),
    );
    Config::parse(&src, Path::new("standby.toml")).expect("test config is valid")
}

async fn repo(dir: &Path, cfg: &Config) -> Arc<SqlRepo> {
    let repo = SqlRepo::open(&dir.join("state.db")).await.unwrap();
    repo.apply_config(cfg).await.unwrap();
    Arc::new(repo)
}

/// The A and AAAA records of `name` the server answers, with their TTLs.
async fn lookup(server: SocketAddr, name: &str) -> Vec<(IpAddr, u32)> {
    let exchange = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .exchange();
    let mut found = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        let q = Query::query(Name::from_ascii(name).unwrap(), rtype);
        let r = exchange
            .lookup(q, DnsRequestOptions::default())
            .first_answer()
            .await
            .unwrap_or_else(|e| panic!("query {name} {rtype} at {server}: {e}"));
        for rec in &r.answers {
            match &rec.data {
                RData::A(a) => found.push((IpAddr::V4(a.0), rec.ttl)),
                RData::AAAA(a) => found.push((IpAddr::V6(a.0), rec.ttl)),
                _ => {}
            }
        }
    }
    found
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn ha_dns_switch_points_the_name_at_the_active_site() {
    let bind = Bind::start();
    let dir = tempfile::tempdir().unwrap();
    let key = bind.key_file(Bind::KEY);
    let cfg = config(dir.path(), bind.addr, &bind.zone, Bind::KEY, &key);
    let name = format!("sip.{}", bind.zone);
    let fd = FrontDoor::open(&cfg, repo(dir.path(), &cfg).await)
        .await
        .unwrap();
    // Opening brought DNS in line with the persisted site (site1).
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);

    fd.switch(&cfg, "sip", "site2").await.unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE2), TTL)]);
    // An IPv6 backend: the A record goes, an AAAA comes.
    fd.switch(&cfg, "sip", "site3").await.unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE3), TTL)]);
    fd.switch(&cfg, "sip", "site1").await.unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
    // Idempotent: the same switch again leaves one record.
    for _ in 0..2 {
        let r = fd.switch(&cfg, "sip", "site1").await.unwrap();
        assert_eq!(r.previous, "site1");
        assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
    }
    // A service without a dns_name switches without touching DNS.
    fd.switch(&cfg, "web", "site2").await.unwrap();
    assert!(
        lookup(bind.addr, &format!("web.{}", bind.zone))
            .await
            .is_empty()
    );

    // Time from the switch to the new answer served by BIND.
    let mut took = Vec::new();
    for i in 0..20 {
        let (site, want) = if i % 2 == 0 {
            ("site2", SITE2)
        } else {
            ("site1", SITE1)
        };
        let t0 = Instant::now();
        fd.switch(&cfg, "sip", site).await.unwrap();
        let acked = t0.elapsed();
        loop {
            if lookup(bind.addr, &name).await == vec![(ip(want), TTL)] {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{site} not served");
        }
        took.push((acked, t0.elapsed()));
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut served: Vec<_> = took.iter().map(|t| t.1).collect();
    served.sort();
    println!(
        "dns switch: update acknowledged p50 {:.1} ms (max {:.1}); new answer served p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} switches",
        ms(took[took.len() / 2].0),
        ms(took[took.len() - 1].0),
        ms(served[served.len() / 2]),
        ms(served[served.len() * 95 / 100]),
        ms(served[served.len() - 1]),
        served.len()
    );
}

#[tokio::test]
async fn ha_dns_a_wrong_key_is_refused_and_the_record_stays() {
    let bind = Bind::start();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sip.{}", bind.zone);
    let good = config(
        dir.path(),
        bind.addr,
        &bind.zone,
        Bind::KEY,
        &bind.key_file(Bind::KEY),
    );
    let repo = repo(dir.path(), &good).await;
    FrontDoor::open(&good, repo.clone()).await.unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);

    // The right key name with another secret: NOTAUTH, BADSIG.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, WRONG_SECRET).unwrap();
    let cfg = config(dir.path(), bind.addr, &bind.zone, Bind::KEY, &wrong);
    let fd = FrontDoor::open(&cfg, repo.clone())
        .await
        .expect("a refused update does not stop the start");
    let err = fd.switch(&cfg, "sip", "site2").await.unwrap_err();
    let msg = error_chain(&err);
    for part in [
        "service sip: the switch to site2 is recorded, but the dns target did not follow it and may still send clients to the old site",
        &format!(
            "dns update of {name} in zone {} at {}",
            bind.zone, bind.addr
        ),
        "the server answered NOTAUTH (TSIG error BADSIG: the secret differs)",
        "check key_name, algorithm and the secret",
    ] {
        assert!(msg.contains(part), "missing '{part}' in: {msg}");
    }
    assert!(!err.is_temporary(), "{msg}");
    println!("a wrong secret: {msg}");
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
    // The switch itself is recorded.
    assert_eq!(repo.service("sip").await.unwrap().active_site, "site2");

    // A key the server does not have: NOTAUTH, BADKEY.
    let cfg = config(dir.path(), bind.addr, &bind.zone, "nobody", &wrong);
    let fd = FrontDoor::open(&cfg, repo.clone()).await.unwrap();
    let msg = error_chain(&fd.switch(&cfg, "sip", "site1").await.unwrap_err());
    assert!(msg.contains("NOTAUTH (TSIG error BADKEY"), "{msg}");

    // A valid key the zone's policy does not allow: REFUSED.
    let cfg = config(
        dir.path(),
        bind.addr,
        &bind.zone,
        Bind::OTHER_KEY,
        &bind.key_file(Bind::OTHER_KEY),
    );
    let fd = FrontDoor::open(&cfg, repo.clone()).await.unwrap();
    let msg = error_chain(&fd.switch(&cfg, "sip", "site2").await.unwrap_err());
    assert!(
        msg.contains("the server answered REFUSED: its policy does not let key 'other-key (hmac-sha256)' update this name"),
        "{msg}"
    );
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
}

#[tokio::test]
async fn ha_dns_a_restarted_front_door_repairs_the_record() {
    let bind = Bind::start();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sip.{}", bind.zone);
    let cfg = config(
        dir.path(),
        bind.addr,
        &bind.zone,
        Bind::KEY,
        &bind.key_file(Bind::KEY),
    );
    let repo = repo(dir.path(), &cfg).await;
    let fd = FrontDoor::open(&cfg, repo.clone()).await.unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
    drop(fd);
    // The controller recorded a switch to site2 and stopped before the
    // update reached the server.
    repo.switch_service("sip", "site2", Utc::now())
        .await
        .unwrap();
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE1), TTL)]);
    let fd = FrontDoor::open(&cfg, repo.clone()).await.unwrap();
    assert_eq!(fd.record("sip").unwrap().active_site, "site2");
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE2), TTL)]);
}

#[tokio::test]
async fn ha_dns_an_unreachable_server_is_reported_and_does_not_stop_the_start() {
    let bind = Bind::start();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the port of a server that was stopped.
    let addr = bind.addr;
    let key = dir.path().join("key.conf");
    std::fs::copy(bind.key_file(Bind::KEY), &key).unwrap();
    let zone = bind.zone.clone();
    drop(bind);
    let cfg = config(dir.path(), addr, &zone, Bind::KEY, &key);
    let t0 = Instant::now();
    let fd = FrontDoor::open(&cfg, repo(dir.path(), &cfg).await)
        .await
        .expect("an unreachable DNS server does not stop the start");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());

    // The target alone, with a short timeout.
    let dns = DnsTarget::new(
        cfg.dns.as_ref().unwrap(),
        [("sip".to_string(), format!("sip.{zone}"))].into(),
    )
    .unwrap()
    .with_timeout(Duration::from_millis(300));
    let err = dns
        .point("sip", "site2", format!("{SITE2}:5060").parse().unwrap())
        .await
        .unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains(&format!("dns update of sip.{zone} in zone {zone} at {addr} failed: no answer over UDP nor TCP within 0.3s")),
        "{msg}"
    );
    assert!(err.is_temporary(), "{msg}");
    drop(fd);
}

#[tokio::test]
async fn ha_dns_an_update_without_udp_answer_is_sent_over_tcp() {
    let bind = Bind::start();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sip.{}", bind.zone);
    // A server address whose UDP swallows datagrams and whose TCP leads
    // to named.
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let front = udp.local_addr().unwrap();
    let named = bind.addr;
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while udp.recv_from(&mut buf).await.is_ok() {}
    });
    tokio::spawn(async move {
        while let Ok((mut c, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(named).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            });
        }
    });
    let cfg = config(
        dir.path(),
        front,
        &bind.zone,
        Bind::KEY,
        &bind.key_file(Bind::KEY),
    );
    let dns = DnsTarget::new(
        cfg.dns.as_ref().unwrap(),
        [("sip".to_string(), name.clone())].into(),
    )
    .unwrap()
    .with_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    dns.point("sip", "site2", format!("{SITE2}:5060").parse().unwrap())
        .await
        .expect("the update goes over tcp, signed and verified");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(lookup(bind.addr, &name).await, vec![(ip(SITE2), TTL)]);
}
