//! The front door with real sockets on loopback and a real controller:
//! clients keep one address while the service moves between sites.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use standby_server::RunningServer;
use standby_types::api::{ServiceView, SwitchResult};
use standby_types::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(5);

use standby_testkit::free_port;

/// A site's copy of the service: UDP answers `SITE:payload` (after 500 ms
/// when the payload starts with `slow`), TCP greets with `SITE\n` and then
/// echoes, both on one address.
async fn backend(site: &'static str) -> SocketAddr {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = TcpListener::bind(addr).await else {
            continue;
        };
        tokio::spawn(async move {
            let udp = std::sync::Arc::new(udp);
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                let msg = format!("{site}:{}", String::from_utf8_lossy(&buf[..n]));
                let udp = udp.clone();
                tokio::spawn(async move {
                    if msg.contains(":slow") {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let _ = udp.send_to(msg.as_bytes(), from).await;
                });
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(format!("{site}\n").as_bytes()).await.unwrap();
                    let mut buf = [0u8; 2048];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        return addr;
    }
    panic!("no address free for both udp and tcp");
}

fn config(dir: &Path, listen: SocketAddr, backends: &str, extra: &str) -> Config {
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

[services.svc]
vm = "pbx1"
listen = "{listen}"
backends = {{ {backends} }}
probe = "sip"
{extra}
"#
    );
    Config::parse(&src, Path::new("standby.toml")).expect("test config is valid")
}

fn two_sites(s1: SocketAddr, s2: SocketAddr) -> String {
    format!("site1 = \"{s1}\", site2 = \"{s2}\"")
}

async fn start(cfg: Config) -> RunningServer {
    standby_server::start(cfg).await.expect("controller starts")
}

/// Send `msg` from `sock` to `to`; the answer as text.
async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer to {msg:?} within {WAIT:?}"))
        .unwrap();
    assert_eq!(from, to, "the answer comes from the front door's address");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Connect through the front door; the greeting names the site.
async fn tcp_site(to: SocketAddr) -> (String, BufReader<TcpStream>) {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(to))
        .await
        .unwrap()
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut line))
        .await
        .expect("greeting in time")
        .unwrap();
    (line.trim().to_string(), r)
}

/// A client that authenticates with the admin token the controller wrote
/// at its first start.
fn http(srv: &RunningServer) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = srv
        .ctl
        .cfg()
        .controller
        .data_dir
        .join(standby_server::auth::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&file).expect("the bootstrap admin token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn services(srv: &RunningServer) -> Vec<ServiceView> {
    http(srv)
        .get(format!("http://{}/api/v1/services", srv.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn udp_and_tcp_follow_a_switch() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(dir.path(), door, &two_sites(s1, s2), "")).await;

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&client, door, "a").await, "site1:a");
    let (site, mut old_conn) = tcp_site(door).await;
    assert_eq!(site, "site1");
    // The stream is really forwarded both ways.
    old_conn.get_mut().write_all(b"echo\n").await.unwrap();
    let mut line = String::new();
    old_conn.read_line(&mut line).await.unwrap();
    assert_eq!(line, "echo\n");

    // A reply site1 sends after the switch must not reach the client.
    client.send_to(b"slow", door).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r: SwitchResult = srv.ctl.switch_traffic("svc", "site2").await.unwrap();
    assert_eq!((r.service.as_str(), r.site.as_str()), ("svc", "site2"));
    assert_eq!(r.previous, "site1");
    assert!(r.switched_at.is_some());

    // site1's late answer never arrives, even before the client sends
    // again; then the same client socket is answered by site2.
    let mut buf = [0u8; 2048];
    let late = tokio::time::timeout(Duration::from_millis(800), client.recv_from(&mut buf)).await;
    assert!(
        late.is_err(),
        "got {:?} after the switch",
        late.map(|r| r.map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned()))
    );
    assert_eq!(ask(&client, door, "b").await, "site2:b");

    // The connection to site1 is closed; a new one reaches site2.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, old_conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the old tcp connection is still open");
    let (site, _new_conn) = tcp_site(door).await;
    assert_eq!(site, "site2");

    // Idempotent: switching again changes nothing.
    let again: SwitchResult = srv.ctl.switch_traffic("svc", "site2").await.unwrap();
    assert_eq!(again.previous, "site2");
    assert_eq!(again.switched_at, r.switched_at);
    assert_eq!(ask(&client, door, "c").await, "site2:c");

    // The API and /metrics show where the traffic went.
    let list = services(&srv).await;
    assert_eq!(list.len(), 1);
    let svc = &list[0];
    assert_eq!(
        (svc.name.as_str(), svc.vm.as_str(), svc.active_site.as_str()),
        ("svc", "pbx1", "site2")
    );
    assert_eq!(svc.protocols, vec!["udp", "tcp"]);
    assert_eq!(svc.probe.as_deref(), Some("sip"));
    assert_eq!(svc.switched_at, r.switched_at);
    let c1 = &svc.counters.sites["site1"];
    let c2 = &svc.counters.sites["site2"];
    assert_eq!(
        (c1.packets_to_site, c1.packets_to_clients),
        (2, 1),
        "{c1:?}"
    );
    assert_eq!(
        (c2.packets_to_site, c2.packets_to_clients),
        (2, 2),
        "{c2:?}"
    );
    assert_eq!((c1.flows, c2.flows), (1, 1));
    assert_eq!((c1.connections, c2.connections), (1, 1));
    assert_eq!(c1.connections_active, 0);
    assert!(c1.bytes_to_clients >= "site1\necho\n".len() as u64 + 7);
    assert_eq!(svc.counters.flows_active, 1);
    let metrics = http(&srv)
        .get(format!("http://{}/metrics", srv.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "standby_frontdoor_active_site{service=\"svc\",site=\"site2\"} 1",
        "standby_frontdoor_active_site{service=\"svc\",site=\"site1\"} 0",
        "standby_frontdoor_packets_total{service=\"svc\",site=\"site2\",direction=\"to_clients\"} 2",
        "standby_frontdoor_connections_total{service=\"svc\",site=\"site1\"} 1",
    ] {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_active_site_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(dir.path(), door, &two_sites(s1, s2), "");
    let srv = start(cfg.clone()).await;
    assert_eq!(services(&srv).await[0].active_site, "site1");
    assert_eq!(services(&srv).await[0].switched_at, None);
    srv.ctl.switch_traffic("svc", "site2").await.unwrap();
    srv.stop().await;

    let srv = start(cfg).await;
    let svc = &services(&srv).await[0];
    assert_eq!(svc.active_site, "site2");
    assert!(svc.switched_at.is_some());
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&client, door, "x").await, "site2:x");
    assert_eq!(tcp_site(door).await.0, "site2");
    srv.stop().await;
}

#[tokio::test]
async fn bad_switches_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(dir.path(), door, &two_sites(s1, s2), "")).await;
    let base = format!("http://{}/api/v1/services", srv.addr);
    let cases = [
        (
            "nope/switch",
            r#"{"site":"site2"}"#,
            404,
            "service 'nope' not found",
        ),
        (
            "svc/switch",
            r#"{"site":"site9"}"#,
            400,
            "unknown site 'site9'",
        ),
        (
            "svc/switch",
            r#"{"site":"site3"}"#,
            400,
            "service 'svc' has no backend at site 'site3' (it has site1, site2)",
        ),
        (
            "svc/switch",
            r#"{"place":"site2"}"#,
            400,
            "bad switch request",
        ),
    ];
    for (path, body, status, msg) in cases {
        let r = http(&srv)
            .post(format!("{base}/{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(
            err["message"].as_str().unwrap().contains(msg),
            "{path} {body}: {err}"
        );
    }
    let r = http(&srv).get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Nothing moved.
    let r = http(&srv).get(format!("{base}/svc")).send().await.unwrap();
    let svc: ServiceView = r.json().await.unwrap();
    assert_eq!(svc.active_site, "site1");
    // A good switch through the API.
    let r: SwitchResult = http(&srv)
        .post(format!("{base}/svc/switch"))
        .json(&serde_json::json!({"site": "site2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((r.previous.as_str(), r.site.as_str()), ("site1", "site2"));
    srv.stop().await;
}

#[tokio::test]
async fn a_listen_address_in_use_stops_the_controller_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let door = taken.local_addr().unwrap();
    let err = standby_server::start(config(dir.path(), door, &two_sites(s1, s2), ""))
        .await
        .err()
        .expect("start refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("service svc: unable to listen on udp {door}")),
        "{msg}"
    );
    // Once the address is free the same data directory starts.
    drop(taken);
    let srv = start(config(dir.path(), door, &two_sites(s1, s2), "")).await;
    srv.stop().await;
}

#[tokio::test]
async fn sip_registrations_follow_the_switch() {
    use standby_vnf::{Config as VnfConfig, Vnf, client};
    let dir = tempfile::tempdir().unwrap();
    let vnf = |name: &str| VnfConfig {
        name: name.to_string(),
        disk: dir.path().join(format!("{name}.img")),
        disk_size: 4 << 20,
        sip: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
    };
    let pbx_site1 = Vnf::start(&vnf("pbx-site1")).await.unwrap();
    let pbx_site2 = Vnf::start(&vnf("pbx-site2")).await.unwrap();
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backends = two_sites(pbx_site1.sip_addr(), pbx_site2.sip_addr());
    let srv = start(config(dir.path(), door, &backends, "protocols = [\"udp\"]")).await;

    client::options(door, WAIT)
        .await
        .expect("OPTIONS through the front door");
    let (alice, alice_at) = ("sip:alice@example.com", "sip:alice@198.18.0.10:5060");
    client::register(door, alice, alice_at, 3600, WAIT)
        .await
        .expect("REGISTER through the front door");
    assert!(pbx_site1.state().has_binding(alice, alice_at));
    assert!(!pbx_site2.state().has_binding(alice, alice_at));

    srv.ctl.switch_traffic("svc", "site2").await.unwrap();
    let (bob, bob_at) = ("sip:bob@example.com", "sip:bob@198.18.0.11:5060");
    client::register(door, bob, bob_at, 3600, WAIT)
        .await
        .expect("REGISTER after the switch");
    assert!(pbx_site2.state().has_binding(bob, bob_at));
    assert!(!pbx_site1.state().has_binding(bob, bob_at));

    srv.stop().await;
    pbx_site1.shutdown().await;
    pbx_site2.shutdown().await;
}

/// `cargo test -p standby-server --test frontdoor -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_udp_round_trip_through_the_front_door() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(dir.path(), door, &two_sites(s1, s2), "")).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut report = Vec::new();
    for (what, to) in [("direct", s1), ("front door", door)] {
        let mut buf = [0u8; 2048];
        let mut times = Vec::with_capacity(N);
        for i in 0..N + 100 {
            let t = Instant::now();
            client.send_to(b"ping", to).await.unwrap();
            tokio::time::timeout(WAIT, client.recv_from(&mut buf))
                .await
                .expect("answer")
                .unwrap();
            if i >= 100 {
                times.push(t.elapsed());
            }
        }
        times.sort();
        let p = |q: f64| times[((N as f64 * q) as usize).min(N - 1)];
        report.push(format!(
            "{what:>10}: p50 {:?} p99 {:?} ({N} requests)",
            p(0.50),
            p(0.99)
        ));
    }
    println!("{}", report.join("\n"));
    srv.stop().await;
}

/// The service's counters as the API shows them.
async fn counters(srv: &RunningServer) -> standby_types::api::ServiceCounters {
    services(srv).await.remove(0).counters
}

/// A full flow table still serves a new client: the least recently active
/// flow makes room (and is counted), the others keep theirs.
#[tokio::test]
async fn hardening_a_full_flow_table_serves_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(
        dir.path(),
        door,
        &two_sites(s1, s2),
        "max_flows = 2\nprotocols = [\"udp\"]",
    ))
    .await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(ask(&c, door, &format!("c{i}")).await, format!("site1:c{i}"));
        clients.push(c);
    }
    let c = counters(&srv).await;
    assert_eq!((c.flows_active, c.flows_evicted), (2, 1), "{c:?}");
    // The evicted client (the first) gets a new flow when it comes back.
    assert_eq!(ask(&clients[0], door, "again").await, "site1:again");
    let c = counters(&srv).await;
    assert_eq!((c.flows_active, c.flows_evicted), (2, 2), "{c:?}");
    srv.stop().await;
}

/// A UDP flow silent for `idle_timeout` is dropped (and counted); the
/// client's next datagram opens a new one.
#[tokio::test]
async fn hardening_an_idle_udp_flow_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(
        dir.path(),
        door,
        &two_sites(s1, s2),
        "idle_timeout = \"1s\"\nprotocols = [\"udp\"]",
    ))
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&client, door, "a").await, "site1:a");
    assert_eq!(counters(&srv).await.flows_active, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let c = counters(&srv).await;
        if c.flows_active == 0 {
            assert_eq!(c.flows_expired, 1, "{c:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the idle flow stays: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ask(&client, door, "b").await, "site1:b");
    assert_eq!(counters(&srv).await.sites["site1"].flows, 2);
    srv.stop().await;
}

/// TCP: beyond `max_connections` a client is closed at once (and counted
/// in the API and `/metrics`); a connection without a byte for
/// `tcp_idle_timeout` is closed.
#[tokio::test]
async fn hardening_tcp_connections_beyond_the_cap_are_refused_and_idle_ones_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (backend("site1").await, backend("site2").await);
    let door: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = start(config(
        dir.path(),
        door,
        &two_sites(s1, s2),
        "max_connections = 2\ntcp_idle_timeout = \"2s\"\nprotocols = [\"tcp\"]",
    ))
    .await;
    let (a, mut ra) = tcp_site(door).await;
    let (b, mut rb) = tcp_site(door).await;
    assert_eq!((a.as_str(), b.as_str()), ("site1", "site1"));
    // The third is closed without a greeting.
    let mut third = TcpStream::connect(door).await.unwrap();
    let mut rest = Vec::new();
    let got = tokio::time::timeout(WAIT, third.read_to_end(&mut rest)).await;
    assert!(
        matches!(got, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection was served: {got:?} {rest:?}"
    );
    let c = counters(&srv).await;
    assert_eq!(c.connections_refused, 1, "{c:?}");
    let metrics = http(&srv)
        .get(format!("http://{}/metrics", srv.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = "standby_frontdoor_connections_refused_total{service=\"svc\"} 1";
    assert!(metrics.contains(want), "no {want} in\n{metrics}");
    // A connection in use stays past the idle timeout; silent ones close.
    for _ in 0..3 {
        ra.get_mut().write_all(b"x\n").await.unwrap();
        let mut line = String::new();
        ra.read_line(&mut line).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_millis(100), rb.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent connection is still open");
    let closed = tokio::time::timeout(WAIT, ra.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open once silent");
    let c = counters(&srv).await;
    assert_eq!(c.connections_idle_closed, 2, "{c:?}");
    // The places are given back: a new client is served.
    assert_eq!(tcp_site(door).await.0, "site1");
    srv.stop().await;
}
