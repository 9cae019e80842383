//! Watch on loopback: a killed VNF raises an alert, opens an incident and
//! notifies a real webhook receiver and a real SMTP server; a flapping
//! probe gives one alert; a webhook receiver that is down gets the message
//! once it is up; a broken rule file keeps the rules in force.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, LabOptions, free_port};
use standby_testkit::mail::MailServer;

use crate::hooks::WebhookReceiver;

/// Poll `f` until it returns Some, or panic naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn alerts(lab: &Lab, all: bool) -> Vec<Value> {
    let mut args = vec!["alerts", "list", "--limit", "1000"];
    if all {
        args.push("--all");
    }
    lab.json(&args).as_array().cloned().unwrap_or_default()
}

pub fn probe_ok(lab: &Lab, probe: &str, vantage: &str) -> Option<bool> {
    lab.json(&["probes"])
        .as_array()?
        .iter()
        .find(|r| r["probe"] == probe && r["vantage"] == vantage)
        .and_then(|r| r["ok"].as_bool())
}

fn hook_config(hook: u16, extra_receivers: &str, receivers: &str) -> String {
    format!(
        r#"
[receivers.hook]
kind = "webhook"
url = "http://127.0.0.1:{hook}/hook"
secret_file = "hook.secret"
max_attempts = 30
{extra_receivers}

[[routes]]
severity = "warning"
receivers = [{receivers}]
group_by = ["alertname", "site", "vm"]
group_wait = "1s"
"#
    )
}

#[test]
fn killed_vnf_raises_alert_opens_incident_and_notifies() {
    let hook = free_port();
    let receiver = WebhookReceiver::start(hook);
    let mail = MailServer::start();
    let smtp = mail.port;
    let mut watch = hook_config(
        hook,
        &format!(
            r#"[receivers.mail]
kind = "smtp"
server = "127.0.0.1:{smtp}"
from = "standby@e2e.invalid"
to = ["noc@e2e.invalid"]"#
        ),
        r#""hook", "mail""#,
    );
    watch.push_str(
        r#"
[probes.pbx1-sip]
kind = "sip"
target = "{sip}"
interval = "1s"
timeout = "500ms"
labels = { vm = "pbx1", site = "site1", scope = "service" }
"#,
    );
    // This test watches a crash stay unhealed until it starts the VM
    // itself: the shipped heal-vm is replaced by a manual-only one (how an
    // operator turns automatic healing off); recovery.rs tests healing.
    let opts = LabOptions {
        watch,
        controller: "runbooks = [\"heal-vm.yaml\"]".into(),
        files: vec![
            ("hook.secret", format!("{}\n", crate::hooks::SECRET)),
            ("heal-vm.yaml", HEAL_OFF.into()),
        ],
        ..LabOptions::default()
    };
    let lab = Lab::new(opts);
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    wait_until("the SIP probe to pass", Duration::from_secs(15), || {
        (probe_ok(&lab, "pbx1-sip", "controller") == Some(true)).then_some(())
    });
    assert!(alerts(&lab, false).is_empty(), "no alert while all is well");

    let vm = lab.json(&["vm", "status", "pbx1"]);
    let pid = vm["pid"].as_u64().expect("running VM has a pid");
    let killed = chrono::Utc::now();
    nix_kill(pid);

    let fired = wait_until("an alert for pbx1", Duration::from_secs(20), || {
        let a = alerts(&lab, false);
        let mine: Vec<Value> = a
            .into_iter()
            .filter(|a| a["labels"]["vm"] == "pbx1")
            .collect();
        (!mine.is_empty()).then_some(mine)
    });
    let first_fired = fired
        .iter()
        .filter_map(|a| a["fired_at"].as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .min()
        .unwrap();
    let detect = (first_fired.with_timezone(&chrono::Utc) - killed).num_milliseconds();
    eprintln!("killed VNF detected in {detect} ms");
    assert!(detect < 10_000, "detection took {detect} ms");
    for a in &fired {
        assert!(
            ["vm-crashed", "vnf-down"].contains(&a["rule"].as_str().unwrap()),
            "unexpected alert {a}"
        );
        assert_eq!(a["labels"]["site"], "site1");
    }

    // One incident for the VNF, with the alerts on its timeline.
    let incident = wait_until("the VNF incident", Duration::from_secs(10), || {
        let list = lab.json(&["incidents", "list"]);
        list.as_array()
            .and_then(|l| l.iter().find(|i| i["template"] == "vnf-outage").cloned())
    });
    let open: Vec<Value> = lab.json(&["incidents", "list"]).as_array().unwrap().clone();
    assert_eq!(open.len(), 1, "one incident for one failure: {open:#?}");
    let id = incident["id"].as_i64().unwrap().to_string();
    let detail = lab.json(&["incidents", "show", &id]);
    assert!(
        detail["title"].as_str().unwrap().contains("pbx1"),
        "{detail}"
    );
    assert!(!detail["alerts"].as_array().unwrap().is_empty());
    let kinds: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"opened") && kinds.contains(&"alert"),
        "{kinds:?}"
    );

    // The webhook got a signed firing message naming the incident.
    let got = receiver.wait_for("a firing notification", Duration::from_secs(15), |g| {
        g.iter().any(|r| r.body["status"] == "firing")
    });
    let firing: Vec<_> = got
        .iter()
        .filter(|r| r.body["status"] == "firing")
        .collect();
    assert!(
        firing.iter().all(|r| r.signed),
        "every message is signed: {firing:#?}"
    );
    assert!(
        firing
            .iter()
            .all(|r| r.header("x-standby-delivery").is_some())
    );
    assert_eq!(
        firing[0].body["incident"]["id"]
            .as_i64()
            .unwrap()
            .to_string(),
        id
    );
    assert_eq!(firing[0].body["alerts"][0]["labels"]["vm"], "pbx1");
    // And the mail went out.
    let mails = wait_until("a mail", Duration::from_secs(15), || {
        let m = mail.mails();
        (!m.is_empty()).then_some(m)
    });
    assert!(mails[0].contains("FIRING"), "{}", mails[0]);
    assert!(mails[0].contains("noc@e2e.invalid"));
    assert!(mails[0].contains("pbx1"));

    // Acknowledge, then bring the VNF back: alerts resolve by themselves,
    // the incident with them, and a resolved message follows.
    let first_id = fired[0]["id"].as_i64().unwrap().to_string();
    let acked = lab.json(&["alerts", "ack", &first_id, "--by", "e2e"]);
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "e2e");
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    wait_until("alerts to resolve", Duration::from_secs(30), || {
        alerts(&lab, false).is_empty().then_some(())
    });
    let inc = wait_until("the incident to resolve", Duration::from_secs(10), || {
        let d = lab.json(&["incidents", "show", &id]);
        (d["state"] == "resolved").then_some(d)
    });
    assert!(inc["resolved_at"].is_string());
    receiver.wait_for("a resolved notification", Duration::from_secs(15), |g| {
        g.iter().any(|r| r.body["status"] == "resolved")
    });
    let history = alerts(&lab, true);
    assert!(
        history.iter().all(|a| a["state"] == "resolved"),
        "{history:#?}"
    );

    // People close it with a note; the timeline keeps everything.
    lab.json(&[
        "incidents",
        "note",
        &id,
        "root cause: killed by the e2e test",
    ]);
    let closed = lab.json(&["incidents", "close", &id]);
    assert_eq!(closed["state"], "closed");
    let detail = lab.json(&["incidents", "show", &id]);
    let texts: Vec<String> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert!(texts.iter().any(|t| t.contains("root cause")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("resolved → closed")),
        "{texts:?}"
    );

    // `events tail` streams them: the backlog since a time, then live.
    let out = lab.run(&[
        "--json",
        "events",
        "tail",
        "--since",
        "10m",
        "--kind",
        "alert.firing",
        "--count",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let ev: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(ev["kind"], "alert.firing");
    assert_eq!(ev["labels"]["vm"], "pbx1");
    // Events were stored for all of it, and metrics show the probe.
    let events = lab.json(&["events", "list", "--kind", "alert.firing", "--limit", "100"]);
    assert!(!events.as_array().unwrap().is_empty());
    let (_, metrics) = lab.get("/metrics");
    assert!(metrics.contains("standby_probe_up{"), "{metrics}");
    assert!(metrics.contains("probe=\"pbx1-sip\""), "{metrics}");
    assert!(
        metrics.contains("standby_alerts{state=\"firing\"} 0"),
        "{metrics}"
    );
}

/// A `heal-vm` that only runs by hand, replacing the shipped one.
pub const HEAL_OFF: &str = "name: heal-vm\ndescription: automatic healing off\ntrigger: { manual: true }\nsteps:\n  - id: nothing\n    action: sleep\n    with: { duration: 0s }\n";

pub fn nix_kill(pid: u64) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

const FLAP_RULES: &str = r#"
rules:
  - name: flappy-down
    condition:
      probe: { probe: flappy }
      group_by: [vm]
    for: 1s
    clear_for: 5s
    severity: warning
    labels: { team: e2e }
    annotations:
      summary: "flappy port of {{ labels.vm }} is down"
"#;

fn tcp_probe(name: &str, port: u16) -> String {
    format!(
        r#"
[probes.{name}]
kind = "tcp"
target = "127.0.0.1:{port}"
interval = "250ms"
timeout = "200ms"
labels = {{ vm = "pbx1", site = "site1" }}
"#
    )
}

#[test]
fn flapping_probe_gives_one_alert() {
    let (hook, flap) = (free_port(), free_port());
    let receiver = WebhookReceiver::start(hook);
    let lab = Lab::new(LabOptions {
        controller: r#"rules = ["rules.yaml"]"#.into(),
        watch: hook_config(hook, "", r#""hook""#) + &tcp_probe("flappy", flap),
        files: vec![
            ("rules.yaml", FLAP_RULES.into()),
            ("hook.secret", crate::hooks::SECRET.into()),
        ],
        ..LabOptions::default()
    });
    // Up for a moment, then flap: down 1.5 s (long enough to fire), up
    // 1 s, for about 15 s, then up for good.
    let listener = std::net::TcpListener::bind(("127.0.0.1", flap)).unwrap();
    wait_until("the probe to pass", Duration::from_secs(10), || {
        (probe_ok(&lab, "flappy", "controller") == Some(true)).then_some(())
    });
    drop(listener);
    let start = Instant::now();
    let mut cycles = 0;
    while start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(1500));
        let l = std::net::TcpListener::bind(("127.0.0.1", flap)).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        drop(l);
        cycles += 1;
    }
    let _steady = std::net::TcpListener::bind(("127.0.0.1", flap)).unwrap();
    wait_until("the alert to resolve", Duration::from_secs(20), || {
        let all = alerts(&lab, true);
        (!all.is_empty() && all.iter().all(|a| a["state"] == "resolved")).then_some(())
    });
    let history: Vec<Value> = alerts(&lab, true)
        .into_iter()
        .filter(|a| a["rule"] == "flappy-down")
        .collect();
    assert_eq!(
        history.len(),
        1,
        "{cycles} flaps gave {} alerts: {history:#?}",
        history.len()
    );
    let got = receiver.wait_for("the resolved message", Duration::from_secs(10), |g| {
        g.iter().any(|r| r.body["status"] == "resolved")
    });
    let firing = got.iter().filter(|r| r.body["status"] == "firing").count();
    assert_eq!(firing, 1, "one firing message, not a storm: {got:#?}");
    // The probe really flapped: failures and successes were both recorded.
    let events = lab.json(&[
        "events",
        "list",
        "--kind",
        "probe.result",
        "--label",
        "probe=flappy",
        "--limit",
        "1000",
    ]);
    let ev = events.as_array().unwrap();
    let fails = ev.iter().filter(|e| e["severity"] == "warning").count();
    let oks = ev.len() - fails;
    assert!(
        fails >= 10 && oks >= 10,
        "{fails} failed and {oks} good results"
    );
}

#[test]
fn webhook_receiver_down_then_up_gets_the_message_once() {
    let (hook, closed) = (free_port(), free_port());
    let lab = Lab::new(LabOptions {
        controller: r#"rules = ["rules.yaml"]"#.into(),
        watch: hook_config(hook, "", r#""hook""#) + &tcp_probe("dead", closed),
        files: vec![
            ("rules.yaml", FLAP_RULES.replace("flappy", "dead")),
            ("hook.secret", crate::hooks::SECRET.into()),
        ],
        ..LabOptions::default()
    });
    // Nothing listens on the hook port yet: deliveries fail and are retried.
    let pending = wait_until("two failed attempts", Duration::from_secs(30), || {
        let d = lab.json(&["alerts", "deliveries"]);
        d.as_array()?
            .iter()
            .find(|d| d["state"] == "pending" && d["attempts"].as_u64() >= Some(2))
            .cloned()
    });
    assert!(
        pending["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{pending}"
    );
    let id = pending["id"].as_i64().unwrap();

    let receiver = WebhookReceiver::start(hook);
    let delivered = wait_until("the delivery", Duration::from_secs(30), || {
        let d = lab.json(&["alerts", "deliveries"]);
        d.as_array()?
            .iter()
            .find(|d| d["id"] == id && d["state"] == "delivered")
            .cloned()
    });
    assert!(delivered["attempts"].as_u64().unwrap() >= 3);
    // Give a duplicate time to show up, then count.
    std::thread::sleep(Duration::from_secs(3));
    let got: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.header("x-standby-delivery") == Some(&id.to_string()))
        .collect();
    assert_eq!(got.len(), 1, "delivered once: {got:#?}");
    assert!(got[0].signed);
    assert_eq!(got[0].body["alerts"][0]["rule"], "dead-down");
}

#[test]
fn broken_rule_file_keeps_the_rules_in_force() {
    let closed = free_port();
    let lab = Lab::new(LabOptions {
        controller: r#"rules = ["rules.yaml"]"#.into(),
        watch: tcp_probe("dead", closed),
        files: vec![("rules.yaml", FLAP_RULES.replace("flappy", "dead"))],
        ..LabOptions::default()
    });
    let rules = lab.path("rules.yaml");
    let st = lab.json(&["rules", "status"]);
    assert!(
        st["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "dead-down"),
        "{st}"
    );

    // Break the file: a bad duration on line 7.
    let broken = FLAP_RULES
        .replace("flappy", "dead")
        .replace("for: 1s", "for: soon");
    std::fs::write(&rules, &broken).unwrap();
    let st = wait_until("the reload error", Duration::from_secs(10), || {
        let st = lab.json(&["rules", "status"]);
        st["error"].is_string().then_some(st)
    });
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("rules.yaml:7:"),
        "error names file and line: {err}"
    );
    assert!(err.contains("rules[0].for"), "error names the field: {err}");
    assert!(
        st["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "dead-down")
    );

    // The previous rules still work: the dead port fires its alert.
    wait_until(
        "the alert under the previous rules",
        Duration::from_secs(15),
        || {
            alerts(&lab, false)
                .iter()
                .any(|a| a["rule"] == "dead-down")
                .then_some(())
        },
    );
    // A silence mutes it, and says so on the alert; expiring it unmutes.
    let sil = lab.json(&[
        "alerts",
        "silence",
        "--match",
        "alertname=dead-down",
        "--for",
        "1h",
        "--comment",
        "e2e",
    ]);
    let sid = sil["id"].as_i64().unwrap();
    wait_until("the alert to be silenced", Duration::from_secs(5), || {
        alerts(&lab, false)
            .iter()
            .any(|a| a["rule"] == "dead-down" && a["silenced_by"] == sid)
            .then_some(())
    });
    let listed = lab.json(&["alerts", "silences"]);
    assert_eq!(listed[0]["matchers"]["alertname"], "dead-down");
    lab.run(&["alerts", "unsilence", &sid.to_string()]);
    wait_until("the silence to end", Duration::from_secs(5), || {
        alerts(&lab, false)
            .iter()
            .any(|a| a["rule"] == "dead-down" && a["silenced_by"].is_null())
            .then_some(())
    });
    assert!(
        lab.json(&["alerts", "silences"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The same error offline, with exit status 1.
    let out = lab.fails(&["rules", "check", rules.to_str().unwrap()]);
    assert!(
        out.contains("rules.yaml:7:") && out.contains("rules[0].for"),
        "{out}"
    );

    // Fixed file: the error goes.
    std::fs::write(&rules, FLAP_RULES.replace("flappy", "dead")).unwrap();
    wait_until("the error to clear", Duration::from_secs(10), || {
        lab.json(&["rules", "status"])["error"]
            .is_null()
            .then_some(())
    });
}
