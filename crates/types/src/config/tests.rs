use std::path::Path;
use std::time::Duration;

use super::*;
use crate::watch::ProbeCheck;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("standby.toml"))
}

#[test]
fn example_parses() {
    let cfg = parse(EXAMPLE).expect("example config is valid");
    assert_eq!(cfg.sites.len(), 2);
    assert_eq!(cfg.home_site("pbx1"), Some("site1"));
    assert_eq!(cfg.groups["gold"].chunk_size, ByteSize(64 << 10));
    assert_eq!(
        cfg.groups["gold"].schedule,
        Schedule::Every(Duration::from_secs(30))
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let err = parse("[sites.site1]\ndescription = \n").unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.to_string().starts_with("standby.toml:2:"), "{err}");
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let src = EXAMPLE.replace("disk_dir = \"site2/disks\"", "disk_dir = \"x\"\ncolour = 3");
    let err = parse(&src).unwrap_err();
    assert!(err.message.contains("colour"), "{err}");
    let line = src.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    assert_eq!(err.line, line, "{err}");
}

#[test]
fn bad_reference_names_field_and_line() {
    let src = EXAMPLE.replace("host = \"site1-host1\"", "host = \"nowhere\"");
    let err = parse(&src).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("vms.pbx1.host"), "{err}");
    let line = src.lines().position(|l| l.contains("\"nowhere\"")).unwrap() + 1;
    assert_eq!(err.line, line, "{err}");
    assert!(err.to_string().contains("unknown host 'nowhere'"), "{err}");
}

#[test]
fn bad_chunk_size_and_schedule_are_rejected() {
    let src = EXAMPLE.replace("chunk_size = \"64KiB\"", "chunk_size = \"96KiB\"");
    let err = parse(&src).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("groups.gold.chunk_size"));
    let src = EXAMPLE.replace("schedule = \"every 30s\"", "schedule = \"whenever\"");
    let err = parse(&src).unwrap_err();
    assert!(err.message.contains("bad cron expression"), "{err}");
    assert!(err.line > 0);
}

#[test]
fn site_variables_are_read_and_checked() {
    let src = EXAMPLE.replace(
        "[sites.site2]",
        "[sites.site2]\nvars = { ip = \"127.0.2.1\" }",
    );
    let cfg = parse(&src).unwrap();
    assert_eq!(cfg.sites["site2"].vars["ip"], "127.0.2.1");
    let src = EXAMPLE.replace(
        "[sites.site2]",
        "[sites.site2]\nvars = { \"my-ip\" = \"x\" }",
    );
    let err = parse(&src).unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("sites.site2.vars.my-ip"),
        "{err}"
    );
}

#[test]
fn site_bandwidth_windows_are_read_and_checked() {
    let windows = r#"[sites.site1]
timezone = "Europe/Berlin"
bandwidth = [
  { limit = "10MiB", days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00" },
  { limit = "50MiB", from = "22:00", to = "06:00" },
]"#;
    let cfg = parse(&EXAMPLE.replace("[sites.site1]", windows)).unwrap();
    let s = cfg.bandwidth_of("site1").expect("site1 has windows");
    assert_eq!(s.timezone, "Europe/Berlin");
    assert_eq!(s.windows[0].limit, ByteSize(10 << 20));
    assert_eq!(s.windows[0].days.len(), 5);
    assert_eq!(s.windows[1].days, Day::ALL.to_vec(), "every day by default");
    assert_eq!(cfg.bandwidth_of("site2"), None, "no windows: unlimited");

    let err = parse(&EXAMPLE.replace("[sites.site1]", "[sites.site1]\ntimezone = \"Europe/Bonn\""))
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("sites.site1.timezone"), "{err}");
    assert!(
        err.message.contains("unknown time zone 'Europe/Bonn'"),
        "{err}"
    );
    assert!(err.to_string().starts_with("standby.toml:"), "{err}");
    assert!(err.line > 0, "{err}");

    let bad = windows.replace("to = \"18:00\"", "to = \"18:00\", colour = 1");
    let err = parse(&EXAMPLE.replace("[sites.site1]", &bad)).unwrap_err();
    assert!(err.message.contains("colour"), "{err}");
    let bad = windows.replace("\"22:00\", to = \"06:00\"", "\"06:00\", to = \"06:00\"");
    let err = parse(&EXAMPLE.replace("[sites.site1]", &bad)).unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("sites.site1.bandwidth.1.to"),
        "{err}"
    );
    let bad = windows.replace("\"08:00\"", "\"8am\"");
    let err = parse(&EXAMPLE.replace("[sites.site1]", &bad)).unwrap_err();
    assert!(err.message.contains("bad time '8am'"), "{err}");
}

#[test]
fn groups_sharing_a_vm_and_a_datastore_are_refused() {
    let src = format!(
        "{EXAMPLE}\n[groups.silver]\nmembers = [\"pbx1\"]\nschedule = \"every 1h\"\ndatastores = [\"site2-store\"]\n"
    );
    let err = parse(&src).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("groups.silver.members"), "{err}");
    assert!(err.message.contains("site2-store"), "{err}");
}

const WATCH: &str = r#"
[agents.site2-agent]
site = "site2"

[probes.pbx1-sip]
kind = "sip"
target = "127.0.0.1:5060"
labels = { vm = "pbx1", site = "site1", scope = "service" }

[probes.site1-from-site2]
kind = "http"
url = "http://198.18.0.2:7781/health"
attempts = 3
from = ["controller", "agent:site2-agent"]
labels = { site = "site1", scope = "site" }

[receivers.hook]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret_env = "HOOK_SECRET"

[[routes]]
severity = "critical"
receivers = ["hook"]
group_by = ["site"]
"#;

/// The example without its watch part.
fn no_probes() -> &'static str {
    &EXAMPLE[..EXAMPLE.find("\n# A probe:").expect("example has a probe")]
}

#[test]
fn watch_sections_parse() {
    let cfg = parse(&format!("{}{WATCH}", no_probes())).expect("valid");
    let spec = cfg.probes["pbx1-sip"].spec("pbx1-sip").unwrap();
    assert_eq!(
        spec.check,
        ProbeCheck::Sip {
            target: "127.0.0.1:5060".into()
        }
    );
    assert_eq!(spec.interval, Duration::from_secs(1));
    assert_eq!(spec.attempts, 1);
    assert_eq!(cfg.probes["pbx1-sip"].from, vec!["controller"]);
    assert_eq!(cfg.probes["site1-from-site2"].from.len(), 2);
    assert_eq!(cfg.agents["site2-agent"].heartbeat, Duration::from_secs(1));
    assert_eq!(cfg.routes[0].group_wait, Duration::from_secs(1));
    assert_eq!(cfg.receivers["hook"].max_attempts(), 10);
}

#[test]
fn watch_errors_name_the_field() {
    let cases = [
        (
            "kind = \"sip\"",
            "kind = \"icmp\"",
            "probes.pbx1-sip.kind",
            "unknown probe kind 'icmp'",
        ),
        (
            "target = \"127.0.0.1:5060\"",
            "",
            "probes.pbx1-sip.target",
            "a sip probe needs 'target'",
        ),
        (
            "\"agent:site2-agent\"]",
            "\"agent:nobody\"]",
            "probes.site1-from-site2.from.1",
            "unknown vantage point 'agent:nobody'",
        ),
        (
            "vm = \"pbx1\"",
            "vm = \"pbx9\"",
            "probes.pbx1-sip.labels.vm",
            "unknown vm 'pbx9'",
        ),
        (
            "receivers = [\"hook\"]",
            "receivers = [\"pager\"]",
            "routes.0.receivers.0",
            "unknown receiver 'pager'",
        ),
        (
            "url = \"http://127.0.0.1:9/hook\"",
            "url = \"ftp://x\"",
            "receivers.hook.url",
            "not an http",
        ),
        (
            "site = \"site2\"\n\n[probes",
            "site = \"site7\"\n\n[probes",
            "agents.site2-agent.site",
            "unknown site 'site7'",
        ),
    ];
    for (from, to, field, msg) in cases {
        let src = format!("{}{}", no_probes(), WATCH.replacen(from, to, 1));
        let err = parse(&src).expect_err(field);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.message.contains(msg), "{err}");
        assert!(err.line > 0, "{err}");
    }
}

const SERVICE: &str = r#"
[services.sip]
vm = "pbx1"
listen = "0.0.0.0:5060"
backends = { site1 = "198.18.0.2:5060", site2 = "198.18.0.6:5060" }
"#;

#[test]
fn services_parse_with_defaults() {
    let cfg = parse(&format!("{EXAMPLE}{SERVICE}")).expect("valid");
    let s = &cfg.services["sip"];
    assert_eq!(s.protocols, vec![Protocol::Udp, Protocol::Tcp]);
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.backend("site2"), Some("198.18.0.6:5060".parse().unwrap()));
    assert_eq!(s.listen_addr(), Some("0.0.0.0:5060".parse().unwrap()));
    assert_eq!(s.probe, None);
    let src = SERVICE.replace(
        "listen =",
        "protocols = [\"udp\"]\nprobe = \"http\"\nprobe_url = \"http://198.18.0.2/health\"\nidle_timeout = \"30s\"\nlisten =",
    );
    let cfg = parse(&format!("{EXAMPLE}{src}")).expect("valid");
    let s = &cfg.services["sip"];
    assert_eq!(s.protocols, vec![Protocol::Udp]);
    assert_eq!(s.probe, Some(ServiceProbe::Http));
    assert_eq!(s.idle_timeout, Duration::from_secs(30));
}

#[test]
fn service_errors_name_the_field() {
    let cases = [
        (
            "vm = \"pbx1\"",
            "vm = \"pbx9\"",
            "services.sip.vm",
            "unknown vm 'pbx9'",
        ),
        (
            "listen = \"0.0.0.0:5060\"",
            "listen = \"sip.example.net\"",
            "services.sip.listen",
            "'sip.example.net' is not an address",
        ),
        (
            "listen = \"0.0.0.0:5060\"",
            "listen = \"127.0.0.1:7780\"",
            "services.sip.listen",
            "the controller's API address",
        ),
        (
            "site2 = \"198.18.0.6:5060\"",
            "site3 = \"198.18.0.6:5060\"",
            "services.sip.backends.site3",
            "unknown site 'site3'",
        ),
        (
            "site2 = \"198.18.0.6:5060\"",
            "site2 = \"198.18.0.6\"",
            "services.sip.backends.site2",
            "'198.18.0.6' is not a backend address",
        ),
        (
            "backends = { site1 = \"198.18.0.2:5060\", ",
            "backends = { ",
            "services.sip.backends",
            "no backend at site 'site1', the home site of vm 'pbx1'",
        ),
        (
            "backends = {",
            "protocols = []\nbackends = {",
            "services.sip.protocols",
            "at least one",
        ),
        (
            "backends = {",
            "protocols = [\"udp\", \"udp\"]\nbackends = {",
            "services.sip.protocols.1",
            "protocol 'udp' is listed twice",
        ),
        (
            "backends = {",
            "probe = \"http\"\nbackends = {",
            "services.sip.probe",
            "an http probe needs 'probe_url'",
        ),
        (
            "backends = {",
            "probe = \"sip\"\nprobe_url = \"http://x/\"\nbackends = {",
            "services.sip.probe_url",
            "applies only to probe = \"http\"",
        ),
        (
            "backends = {",
            "idle_timeout = \"10ms\"\nbackends = {",
            "services.sip.idle_timeout",
            "below 1s",
        ),
    ];
    for (from, to, field, msg) in cases {
        let src = format!("{EXAMPLE}{}", SERVICE.replacen(from, to, 1));
        let err = parse(&src).expect_err(field);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.message.contains(msg), "{field}: {err}");
        assert!(err.line > 0, "{err}");
    }
}

#[test]
fn service_syntax_errors_are_refused() {
    for (from, to, what) in [
        ("vm =", "colour = 3\nvm =", "colour"),
        (
            "backends = {",
            "protocols = [\"sctp\"]\nbackends = {",
            "sctp",
        ),
        ("backends = {", "probe = \"icmp\"\nbackends = {", "icmp"),
    ] {
        let src = format!("{EXAMPLE}{}", SERVICE.replacen(from, to, 1));
        let err = parse(&src).expect_err(what);
        assert!(err.message.contains(what), "{err}");
        assert!(err.line > 0, "{err}");
    }
}

#[test]
fn two_services_on_one_address_are_refused() {
    let other = SERVICE.replace("[services.sip]", "[services.sip2]");
    let err = parse(&format!("{EXAMPLE}{SERVICE}{other}")).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("services.sip2.listen"), "{err}");
    assert!(
        err.message
            .contains("service 'sip' already listens on udp 0.0.0.0:5060"),
        "{err}"
    );
    // Different transports on one address are fine.
    let udp = SERVICE.replace("backends = {", "protocols = [\"udp\"]\nbackends = {");
    let tcp = other.replace("backends = {", "protocols = [\"tcp\"]\nbackends = {");
    parse(&format!("{EXAMPLE}{udp}{tcp}")).expect("udp and tcp apart");
}

#[test]
fn byte_sizes_and_schedules() {
    assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
    assert_eq!("2 GiB".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
    assert!("12 parsecs".parse::<ByteSize>().is_err());
    assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
    let cron: Schedule = "*/5 * * * *".parse().unwrap();
    let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
        .unwrap()
        .to_utc();
    assert_eq!(
        cron.next_after(t).unwrap().to_rfc3339(),
        "2026-01-01T00:05:00+00:00"
    );
}

#[test]
fn agent_url_and_host_netns_are_checked() {
    let base = |extra: &str| {
        format!(
            r#"
[sites.s1]
[hosts.h1]
site = "s1"
driver = "process"
disk_dir = "d"
{extra}
"#
        )
    };
    let ok = parse(&base(
        "netns = \"lab-s1\"\n[hosts.h2]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"d2\"\n[agents.a]\nsite = \"s1\"\nhost = \"h2\"\nurl = \"http://198.18.0.2:7781\"",
    ))
    .unwrap();
    assert_eq!(ok.hosts["h1"].netns.as_deref(), Some("lab-s1"));
    assert_eq!(
        ok.remote_agent_of("h2"),
        Some(("a", "http://198.18.0.2:7781"))
    );
    assert_eq!(ok.remote_agent_of("h1"), None);
    for (extra, field, msg) in [
        (
            "netns = \"a b\"",
            "hosts.h1.netns",
            "not a network namespace name",
        ),
        (
            "[agents.a]\nsite = \"s1\"\nurl = \"http://x:1\"",
            "agents.a.url",
            "set 'host' too",
        ),
        (
            "[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"ftp://x\"",
            "agents.a.url",
            "not an http:// URL",
        ),
        (
            "netns = \"n\"\n[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"http://x:1\"",
            "hosts.h1.netns",
            "in-process hosts only",
        ),
    ] {
        let e = parse(&base(extra)).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(msg), "{extra}: {e}");
    }
}

#[test]
fn qemu_vms_parse_and_are_checked() {
    let base = |h2_driver: &str, vm: &str| {
        format!(
            r#"
[sites.s1]
vars = {{ sip = "127.0.1.1" }}
[sites.s2]
vars = {{ sip = "127.0.2.1" }}
[hosts.h1]
site = "s1"
driver = "qemu"
disk_dir = "d1"
[hosts.h2]
site = "s2"
driver = "{h2_driver}"
disk_dir = "d2"
[vms.pbx]
host = "h1"
dr_site = "s2"
{vm}
"#
        )
    };
    let good = r#"
[vms.pbx.qemu]
memory_mib = 128
accel = "tcg"
kernel = "/g/vmlinuz"
initrd = "/g/initrd.img"
append = "console=ttyS0 vnf.name={vm}"
forwards = [{ protocol = "udp", host_addr = "{site.sip}", host_port = 5060, guest_port = 5060 }]
[[vms.pbx.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx.disks]]
name = "data"
size = "64MiB"
"#;
    let cfg = parse(&base("qemu", good)).unwrap();
    let vm = &cfg.vms["pbx"];
    assert_eq!(vm.program(), "qemu-system-x86_64");
    let q = vm.qemu.as_ref().unwrap();
    assert_eq!((q.memory_mib, q.cpus, q.accel), (128, 1, QemuAccel::Tcg));
    assert_eq!(q.forwards[0].protocol, ForwardProtocol::Udp);
    assert_eq!(vm.disks[0].format, DiskFormat::Qcow2);
    assert_eq!(vm.disks[1].format, DiskFormat::Raw);
    for (h2, vm, field, msg) in [
        (
            "process",
            good,
            "vms.pbx.qemu",
            "host 'h2' uses the process driver",
        ),
        (
            "qemu",
            "command = \"/bin/true\"",
            "vms.pbx",
            "needs a [vms.pbx.qemu] table",
        ),
        (
            "qemu",
            "[vms.pbx.qemu]\nkernel = \"/k\"\nforwards = [{ protocol = \"udp\", host_addr = \"{site.nope}\", host_port = 1, guest_port = 1 }]",
            "vms.pbx.qemu.forwards.0.host_addr",
            "site 's1' has no variable 'nope'",
        ),
        (
            "qemu",
            "[vms.pbx.qemu]\nkernel = \"/k\"\nforwards = [{ protocol = \"udp\", host_addr = \"localhost\", host_port = 1, guest_port = 1 }]",
            "vms.pbx.qemu.forwards.0.host_addr",
            "not an IPv4 address",
        ),
        (
            "qemu",
            "[vms.pbx.qemu]\nmachine = \"virt\"",
            "standby.toml:18",
            "unknown variant `virt`",
        ),
        (
            "qemu",
            "[vms.pbx.qemu]\nkernel = \"/k\"\n[[vms.pbx.disks]]\nname = \"0d\"\nsize = \"1MiB\"",
            "vms.pbx.disks.0.name",
            "must start with a letter",
        ),
        (
            "qemu",
            "[vms.pbx.qemu]\ninitrd = \"/i\"",
            "vms.pbx.qemu.initrd",
            "needs a kernel",
        ),
    ] {
        let e = parse(&base(h2, vm)).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(msg), "{vm}: {e}");
    }
    // A qemu host may be run by a remote agent, with its policy.
    let remote = base(
        "qemu",
        "[vms.pbx.qemu]\nkernel = \"/k\"\n[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"http://x:1\"\nallowed_commands = [\"standby-vnf\"]",
    );
    let cfg = parse(&remote).unwrap();
    assert_eq!(cfg.agents["a"].allowed_commands, ["standby-vnf"]);
    // A process VM: qcow2 and a missing command are refused.
    let proc_base = |vm: &str| {
        format!(
            "[sites.s1]\n[hosts.h1]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"d\"\n[vms.v]\nhost = \"h1\"\n{vm}"
        )
    };
    let e = parse(&proc_base("args = []")).unwrap_err().to_string();
    assert!(
        e.contains("vms.v.command") && e.contains("needs a command"),
        "{e}"
    );
    let e = parse(&proc_base(
        "command = \"x\"\n[[vms.v.disks]]\nname = \"d\"\nsize = \"1MiB\"\nformat = \"qcow2\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("vms.v.disks.0.format"), "{e}");
}

#[test]
fn pki_needs_https_agents_an_agent_listener_and_no_tokens() {
    let base = |pki: &str, url: &str, extra: &str| {
        format!(
            "[controller]\n{extra}\n[sites.s1]\n[hosts.h1]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"/d\"\n\
             [agents.a1]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"{url}\"\n{pki}"
        )
    };
    let pki = "[pki]\ndir = \"/etc/standby/pki\"\n";
    let listen = "agent_listen = \"127.0.0.1:7443\"";
    let ok = parse(&base(pki, "https://198.18.0.2:7781", listen)).unwrap();
    assert_eq!(ok.pki.unwrap().dir, Path::new("/etc/standby/pki"));
    let cases = [
        (
            base(pki, "http://198.18.0.2:7781", listen),
            "agents.a1.url",
            "use https://",
        ),
        (
            base(pki, "https://198.18.0.2:7781", ""),
            "controller.agent_listen",
            "set agent_listen",
        ),
        (
            base("", "https://198.18.0.2:7781", ""),
            "agents.a1.url",
            "needs the certificates of [pki]",
        ),
        (
            base("", "http://198.18.0.2:7781", listen),
            "controller.agent_listen",
            "needs [pki]",
        ),
        (
            base(pki, "https://198.18.0.2:7781", listen)
                .replace("url =", "token = \"0123456789abcdef0\"\nurl ="),
            "agents.a1.token",
            "remove the token",
        ),
    ];
    for (src, field, text) in cases {
        let e = parse(&src).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(text), "{field}: {e}");
    }
}

const DNS: &str = r#"
[dns]
server = "127.0.0.1:5353"
zone = "svc.example.test."
key_name = "standby"
secret_file = "dns.key"
"#;

#[test]
fn dns_names_parse_with_defaults() {
    let svc = SERVICE.replace("vm =", "dns_name = \"sip\"\nvm =");
    let cfg = parse(&format!("{EXAMPLE}{svc}{DNS}")).expect("valid");
    let dns = cfg.dns.as_ref().unwrap();
    assert_eq!(dns.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(dns.ttl, Duration::from_secs(5));
    assert_eq!(dns.ttl_secs(), 5);
    assert_eq!(dns.server_addr(), Some("127.0.0.1:5353".parse().unwrap()));
    let name = cfg.services["sip"].dns_name.as_deref().unwrap();
    assert_eq!(dns.fqdn(name).unwrap(), "sip.svc.example.test.");
    let dns512 = DNS.replace(
        "secret_file",
        "algorithm = \"hmac-sha512\"\nttl = \"30s\"\nsecret_file",
    );
    let cfg = parse(&format!("{EXAMPLE}{svc}{dns512}")).expect("valid");
    let dns = cfg.dns.as_ref().unwrap();
    assert_eq!(dns.algorithm, TsigAlgorithm::HmacSha512);
    assert_eq!(dns.ttl_secs(), 30);
    // The API shows the path of the secret, never a secret.
    let shown = redacted(&cfg).to_string();
    assert!(shown.contains("dns.key"), "{shown}");
}

#[test]
fn dns_errors_name_the_field() {
    let svc = |name: &str| SERVICE.replace("vm =", &format!("dns_name = \"{name}\"\nvm ="));
    let cases = [
        (
            svc("sip"),
            String::new(),
            "services.sip.dns_name",
            "needs a [dns] table",
        ),
        (
            svc("sip.example.test."),
            DNS.to_string(),
            "services.sip.dns_name",
            "'sip.example.test.' is outside the zone 'svc.example.test.'",
        ),
        (
            svc("sip phone"),
            DNS.to_string(),
            "services.sip.dns_name",
            "is not a DNS name",
        ),
        (
            svc("sip"),
            DNS.replace("127.0.0.1:5353", "ns1.example.test"),
            "dns.server",
            "'ns1.example.test' is not the primary server's address",
        ),
        (
            svc("sip"),
            DNS.replace("secret_file", "ttl = \"500ms\"\nsecret_file"),
            "dns.ttl",
            "1s at least",
        ),
        (
            svc("sip"),
            DNS.replace("svc.example.test.", "svc..test"),
            "dns.zone",
            "is not a zone name",
        ),
        (
            svc("sip"),
            DNS.replace("secret_file", "algorithm = \"hmac-md5\"\nsecret_file"),
            "",
            "hmac-md5",
        ),
        (
            svc("sip"),
            DNS.replace("secret_file", "secret = \"abc\"\nsecret_file"),
            "",
            "unknown field `secret`",
        ),
    ];
    for (svc, dns, field, msg) in cases {
        let err = parse(&format!("{EXAMPLE}{svc}{dns}")).expect_err(msg);
        if !field.is_empty() {
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
        assert!(err.message.contains(msg), "{msg}: {err}");
        assert!(err.line > 0, "{err}");
    }
    // One name, two services: they would overwrite each other's records.
    let other = svc("sip")
        .replace("[services.sip]", "[services.sip2]")
        .replace("0.0.0.0:5060", "0.0.0.0:5070");
    let err = parse(&format!("{EXAMPLE}{}{other}{DNS}", svc("sip"))).unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("services.sip2.dns_name"),
        "{err}"
    );
    assert!(
        err.message
            .contains("service 'sip' already has the name sip.svc.example.test."),
        "{err}"
    );
}

#[test]
fn a_dns_secret_file_is_checked_at_load() {
    let dir = std::env::temp_dir().join(format!("standby-dns-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("standby.toml");
    let svc = SERVICE.replace("vm =", "dns_name = \"sip\"\nvm =");
    std::fs::write(&file, format!("{EXAMPLE}{svc}{DNS}")).unwrap();
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("dns.secret_file"), "{err}");
    assert!(
        err.message.contains("unable to read the TSIG secret"),
        "{err}"
    );
    assert!(
        err.message
            .contains(&dir.join("dns.key").display().to_string()),
        "{err}"
    );
    assert!(err.line > 0, "{err}");
    std::fs::write(dir.join("dns.key"), "secret!").unwrap();
    let err = Config::load(&file).unwrap_err();
    assert!(err.message.contains("not base64"), "{err}");
    std::fs::write(
        dir.join("dns.key"),
        "key \"standby\" {\n\talgorithm hmac-sha256;\n\tsecret \"deLeVm7eMY8Q9twch/2aQHV5pACLAp0VojmTB4NkCnc=\";\n};\n",
    )
    .unwrap();
    let cfg = Config::load(&file).expect("a BIND key file is read");
    let dns = cfg.dns.unwrap();
    assert_eq!(dns.secret_file, dir.join("dns.key"));
    assert_eq!(dns.read_secret().unwrap().len(), 32);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ha_needs_an_odd_quorum_of_known_agents_with_urls() {
    let base = |ha: &str| {
        format!(
            "[sites.s1]\n[sites.s2]\n[sites.w]\n\
             [agents.a1]\nsite = \"s1\"\nurl = \"http://198.18.0.2:7781\"\n\
             [agents.a2]\nsite = \"s2\"\nurl = \"http://198.18.0.6:7781\"\n\
             [agents.w]\nsite = \"w\"\nurl = \"http://198.18.0.10:7781\"\n\
             [agents.nourl]\nsite = \"w\"\n{ha}"
        )
    };
    let ok = parse(&base(
        "[ha]\nself_fence_after = \"4s\"\nquorum = [\"a1\", \"a2\", \"w\"]\n",
    ))
    .unwrap();
    let ha = ok.ha.unwrap();
    assert_eq!(ha.majority(), 2);
    assert_eq!(
        ha.fenced_after(),
        Duration::from_secs(6),
        "default margin 2s"
    );
    for (ha, path, msg) in [
        (
            "[ha]\nself_fence_after = \"4s\"\nquorum = [\"a1\", \"a2\"]\n",
            "ha.quorum",
            "odd number of agents, at least three",
        ),
        (
            "[ha]\nself_fence_after = \"4s\"\nquorum = [\"a1\", \"a2\", \"x\"]\n",
            "ha.quorum.2",
            "unknown agent 'x'",
        ),
        (
            "[ha]\nself_fence_after = \"4s\"\nquorum = [\"a1\", \"a2\", \"nourl\"]\n",
            "ha.quorum.2",
            "has no url",
        ),
        (
            "[ha]\nself_fence_after = \"4s\"\nquorum = [\"a1\", \"a2\", \"a1\"]\n",
            "ha.quorum.2",
            "listed twice",
        ),
        (
            "[ha]\nself_fence_after = \"500ms\"\nquorum = [\"a1\", \"a2\", \"w\"]\n",
            "ha.self_fence_after",
            "at least 1s",
        ),
    ] {
        let e = parse(&base(ha)).unwrap_err().to_string();
        assert!(e.contains(&format!("{path}: ")) && e.contains(msg), "{e}");
    }
}

#[test]
fn database_is_the_sqlite_file_unless_a_postgres_url_is_given() {
    let cfg = parse(EXAMPLE).unwrap();
    assert_eq!(
        cfg.controller.database(),
        Database::Sqlite(cfg.controller.data_dir.join("state.db"))
    );
    for url in [
        "postgres://standby@db.example/standby",
        "postgresql://standby:pw@10.0.0.5:5432/standby?sslmode=disable",
    ] {
        let src = EXAMPLE.replacen(
            "[controller]",
            &format!("[controller]\ndatabase = \"{url}\""),
            1,
        );
        let cfg = parse(&src).unwrap();
        assert_eq!(cfg.controller.database(), Database::Postgres(url.into()));
    }
    let src = EXAMPLE.replacen(
        "[controller]",
        "[controller]\ndatabase = \"mysql://u:topsecret@db/standby\"",
        1,
    );
    let err = parse(&src).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("controller.database"));
    assert!(err.message.contains("postgres://"), "{err}");
    assert!(!err.to_string().contains("topsecret"), "{err}");
}

#[test]
fn a_power_fence_names_its_program_first() {
    let base = |pf: &str| {
        format!(
            "[sites.s1]\n[hosts.h1]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"/d\"\n{pf}\n"
        )
    };
    let cfg = parse(&base(
        "power_fence = [\"ipmitool\", \"chassis\", \"power\", \"off\"]",
    ))
    .unwrap();
    assert_eq!(cfg.hosts["h1"].power_fence[0], "ipmitool");
    let e = parse(&base("power_fence = [\"\", \"off\"]"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hosts.h1.power_fence: the first item is the program"),
        "{e}"
    );
}

#[test]
fn dr_sites_are_an_ordered_list_of_other_sites() {
    let three = EXAMPLE.replace(
        "[hosts.site1-host1]",
        "[sites.site3]\n[sites.cloud]\n[hosts.site3-host1]\nsite = \"site3\"\ndriver = \"process\"\ndisk_dir = \"site3/disks\"\n[hosts.site1-host1]",
    );
    let ok = three.replace("dr_site = \"site2\"", "dr_sites = [\"site2\", \"site3\"]");
    let cfg = parse(&ok).unwrap();
    assert_eq!(cfg.vms["pbx1"].dr_sites(), ["site2", "site3"]);
    // The shorthand.
    let cfg = parse(&three).unwrap();
    assert_eq!(cfg.vms["pbx1"].dr_sites(), ["site2"]);
    for (to, field, says) in [
        (
            "dr_sites = [\"site2\", \"site2\"]",
            "vms.pbx1.dr_sites",
            "named twice",
        ),
        (
            "dr_sites = [\"site1\"]",
            "vms.pbx1.dr_sites",
            "the VM's own site",
        ),
        (
            "dr_site = \"site3\"\ndr_sites = [\"site2\", \"site3\"]",
            "vms.pbx1.dr_site",
            "not the first of dr_sites",
        ),
    ] {
        let src = three.replace("dr_site = \"site2\"", to);
        let err = parse(&src).unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{to}: {err}");
        assert!(err.message.contains(says), "{to}: {err}");
    }
}

fn parse_with(extra: &str) -> Result<Config, ConfigError> {
    parse(&format!("{EXAMPLE}\n{extra}"))
}

#[test]
fn a_plan_reads_its_tiers_and_places_each_vm() {
    let cfg = parse_with(
        r#"
[plans.pbx]
rto_target = "5m"
[[plans.pbx.tiers]]
groups = ["gold"]
[[plans.pbx.tiers]]
vms = []
groups = []
"#,
    );
    let err = cfg.unwrap_err();
    assert_eq!(err.field.as_deref(), Some("plans.pbx.tiers.1"), "{err}");
    assert!(err.message.contains("needs vms or groups"), "{err}");
    let cfg = parse_with(
        "[plans.pbx]\nrto_target = \"5m\"\n[[plans.pbx.tiers]]\ngroups = [\"gold\"]\nafter = \"30s\"\nwait = \"1m\"\n",
    )
    .unwrap();
    let plan = &cfg.plans["pbx"];
    assert_eq!(plan.rto_target, Some(Duration::from_secs(300)));
    assert_eq!(
        plan.tiers[0].after,
        TierStart::Delay(Duration::from_secs(30))
    );
    assert_eq!(plan.tiers[0].wait, Duration::from_secs(60));
    assert_eq!(plan.tier_vms(&cfg.groups), vec![vec!["pbx1".to_string()]]);
    assert_eq!(
        cfg.plan_of("pbx1"),
        Some(PlanPlace {
            plan: "pbx",
            tier: 1
        })
    );
}

#[test]
fn bad_plans_are_named() {
    for (extra, field, says) in [
        (
            "[plans.p]\ntiers = []\n",
            "plans.p.tiers",
            "at least one tier",
        ),
        (
            "[plans.p]\n[[plans.p.tiers]]\nvms = [\"nope\"]\n",
            "plans.p.tiers.0.vms.0",
            "unknown vm 'nope'",
        ),
        (
            "[plans.p]\n[[plans.p.tiers]]\ngroups = [\"nope\"]\n",
            "plans.p.tiers.0.groups.0",
            "unknown group 'nope'",
        ),
        (
            "[plans.p]\n[[plans.p.tiers]]\nvms = [\"pbx1\"]\n[[plans.p.tiers]]\ngroups = [\"gold\"]\n",
            "plans.p.tiers.1",
            "already in tier 1 of plan 'p'",
        ),
    ] {
        let err = parse_with(extra).unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{extra}: {err}");
        assert!(err.message.contains(says), "{extra}: {err}");
    }
    let err = parse_with("[plans.p]\n[[plans.p.tiers]]\nvms = [\"pbx1\"]\nafter = \"soon\"\n")
        .unwrap_err();
    assert!(
        err.message.contains("neither 'probes' nor a delay"),
        "{err}"
    );
}
