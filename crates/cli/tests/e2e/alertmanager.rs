//! Alertmanager as a trigger, with Debian's `prometheus` and
//! `prometheus-alertmanager` (`scripts/test` installs them): Prometheus
//! scrapes a controller's `/metrics` with a viewer's token, its alert rule
//! fires on a failing standby probe, Alertmanager posts the alert to
//! `POST /api/v1/alertmanager` with an operator's token, a standby rule
//! with an event condition raises a standby alert, and that alert starts a
//! runbook. Also: how the route refuses what it must, and every query of
//! the Grafana dashboard (`contrib/grafana/standby.json`) evaluated by
//! that Prometheus. Everything on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, free_port};

/// Prometheus and Alertmanager, killed when dropped (a failing test too).
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking HTTP client: (status, body).
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> (u16, String) {
        self.rt.block_on(async {
            match req.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        })
    }

    fn get(&self, url: &str) -> (u16, String) {
        self.send(self.client.get(url))
    }

    fn post(&self, url: &str, token: Option<&str>, body: Vec<u8>) -> (u16, String) {
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req)
    }

    /// A PromQL instant query through the form-encoded POST.
    fn query(&self, prometheus: &str, promql: &str) -> Value {
        let body: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (s, text) = self.send(
            self.client
                .post(format!("{prometheus}/api/v1/query"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("query={body}")),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            s == 200 && v["status"] == "success",
            "Prometheus refused {promql}: {s} {text}"
        );
        v
    }
}

/// The program, or a failure that says what to install.
fn program(name: &'static str, package: &str) -> &'static str {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is missing: apt-get install {package} (scripts/test installs it)"
    );
    name
}

fn spawn(daemons: &mut Daemons, prog: &str, args: &[String], log: &Path) {
    let child = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"));
    daemons.0.push(child);
}

/// Wait (bounded) for `url` to answer 200; panic with `log` if not.
fn wait_ready(http: &Http, url: &str, log: &Path, daemons: &mut Daemons) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).0 != 200 {
        for c in &mut daemons.0 {
            if let Some(st) = c.try_wait().unwrap() {
                panic!(
                    "a daemon exited ({st}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready in 30 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

const RULES: &str = r#"
rules:
  - name: prometheus-probe-down
    condition:
      event: { kind: alertmanager.firing, alertname: StandbyProbeDown }
      within: 10m
      group_by: [vm, site, probe, instance, team]
    for: 0s
    severity: critical
    annotations:
      summary: "Prometheus sees probe {{ labels.probe }} of {{ labels.vm }} down"
"#;

const RUNBOOK: &str = r#"
name: on-prometheus
trigger:
  alert: { alertname: prometheus-probe-down }
params:
  vm: { type: string, required: true, default: "{{ trigger.alert.labels.vm }}" }
lock: "prometheus:{{ params.vm }}"
steps:
  - id: open
    action: incident.open
    with:
      title: "Prometheus: {{ params.vm }} at {{ trigger.alert.labels.site }} ({{ trigger.alert.labels.probe }}, team {{ trigger.alert.labels.team }})"
      dedup: "prometheus:{{ params.vm }}"
  - id: hold
    action: sleep
    with: { duration: 1s }
"#;

const PROMETHEUS_RULES: &str = r#"
groups:
  - name: standby
    interval: 1s
    rules:
      - alert: StandbyProbeDown
        expr: standby_probe_up{job="standby"} == 0
        for: 0s
        labels: { severity: critical, team: dr }
        annotations:
          summary: "standby's probe {{ $labels.probe }} of {{ $labels.vm }} fails"
"#;

fn token(lab: &Lab, name: &str, role: &str, tenant: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    lab.json(&args)["secret"].as_str().unwrap().to_string()
}

/// The route refuses no token (401), a viewer or a tenant (403), what is
/// not the payload or another version (400) and more than 1 MiB (413).
fn refusals(http: &Http, lab: &Lab, url: &str, operator: &str, viewer: &str) {
    let firing = json!({"version": "4", "status": "firing", "alerts": []});
    let body = |v: &Value| serde_json::to_vec(v).unwrap();
    let (s, text) = http.post(url, None, body(&firing));
    assert_eq!(s, 401, "{text}");
    let (s, text) = http.post(url, Some(viewer), body(&firing));
    assert_eq!(s, 403, "a viewer: {text}");
    let tenant = token(lab, "acme-ops", "operator", Some("acme"));
    let (s, text) = http.post(url, Some(&tenant), body(&firing));
    assert_eq!(s, 403, "a tenant's operator: {text}");
    for bad in [b"not json".to_vec(), body(&json!({"alerts": "none"}))] {
        let (s, text) = http.post(url, Some(operator), bad);
        assert_eq!(s, 400, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("not an Alertmanager webhook payload"),
            "{v}"
        );
    }
    let (s, text) = http.post(
        url,
        Some(operator),
        body(&json!({"version": "3", "status": "firing", "alerts": []})),
    );
    assert_eq!(s, 400, "{text}");
    assert!(
        text.contains("unsupported Alertmanager webhook version '3'"),
        "{text}"
    );
    let (s, text) = http.post(url, Some(operator), vec![b' '; (1 << 20) + 1]);
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("too_large"), "{text}");
    // An empty notification is fine and records nothing.
    let (s, text) = http.post(url, Some(operator), body(&firing));
    assert_eq!((s, text.as_str()), (200, r#"{"events":0}"#));
}

#[test]
fn ecosystem_alertmanager_alert_starts_a_runbook() {
    let prometheus = program("prometheus", "prometheus");
    let alertmanager = program("prometheus-alertmanager", "prometheus-alertmanager");
    let closed = free_port();
    let lab = Lab::new(LabOptions {
        controller: "rules = [\"rules.yaml\"]\nrunbooks = [\"on-prometheus.yaml\"]".into(),
        extra: "[tenants.acme]\n",
        watch: format!(
            "\n[probes.dead]\nkind = \"tcp\"\ntarget = \"127.0.0.1:{closed}\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\nlabels = {{ vm = \"pbx1\", site = \"site1\" }}\n"
        ),
        files: vec![
            ("rules.yaml", RULES.into()),
            ("on-prometheus.yaml", RUNBOOK.into()),
        ],
        ..LabOptions::default()
    });
    let http = Http::new();
    let api = format!("http://127.0.0.1:{}", lab.api);
    let hook = format!("{api}/api/v1/alertmanager");
    let operator = token(&lab, "alertmanager", "operator", None);
    let viewer = token(&lab, "prometheus", "viewer", None);
    refusals(&http, &lab, &hook, &operator, &viewer);

    let (prom_port, am_port) = (free_port(), free_port());
    let dir = lab.path("ecosystem");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            r#"route:
  receiver: standby
  group_by: [alertname, vm]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: standby
    webhook_configs:
      - url: "{hook}"
        send_resolved: true
        http_config:
          authorization: {{ credentials: "{operator}" }}
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("rules.yml"), PROMETHEUS_RULES).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            r#"global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}
rule_files: ["{rules}"]
alerting:
  alertmanagers:
    - static_configs: [{{ targets: ["127.0.0.1:{am_port}"] }}]
scrape_configs:
  - job_name: standby
    authorization: {{ credentials: "{viewer}" }}
    static_configs: [{{ targets: ["127.0.0.1:{api_port}"] }}]
"#,
            rules = p("rules.yml"),
            api_port = lab.api,
        ),
    )
    .unwrap();
    let mut daemons = Daemons(Vec::new());
    let am_log = dir.join("alertmanager.log");
    spawn(
        &mut daemons,
        alertmanager,
        &[
            format!("--config.file={}", p("alertmanager.yml")),
            format!("--storage.path={}", p("am-data")),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
        &am_log,
    );
    let am = format!("http://127.0.0.1:{am_port}");
    wait_ready(&http, &format!("{am}/-/ready"), &am_log, &mut daemons);
    let prom_log = dir.join("prometheus.log");
    spawn(
        &mut daemons,
        prometheus,
        &[
            format!("--config.file={}", p("prometheus.yml")),
            format!("--storage.tsdb.path={}", p("prom-data")),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &prom_log,
    );
    let prom = format!("http://127.0.0.1:{prom_port}");
    wait_ready(&http, &format!("{prom}/-/ready"), &prom_log, &mut daemons);

    // Prometheus's alert, firing, and when it became active.
    let deadline = Instant::now() + Duration::from_secs(60);
    let prom_alert = loop {
        let (_, text) = http.get(&format!("{prom}/api/v1/alerts"));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(a) = v["data"]["alerts"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["labels"]["alertname"] == "StandbyProbeDown" && a["state"] == "firing")
        }) {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's alert never fired: {text}\n{}",
            std::fs::read_to_string(&prom_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let active_at = time(&prom_alert["activeAt"]);
    assert_eq!(prom_alert["labels"]["vm"], "pbx1", "{prom_alert}");

    // The runbook job the standby alert started.
    let job = lab
        .wait_runbook_job("on-prometheus", Duration::from_secs(60))
        .unwrap_or_else(|jobs| {
            panic!(
                "no runbook job from Prometheus's alert: {jobs:#}\nAlertmanager: {}",
                std::fs::read_to_string(&am_log).unwrap_or_default()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(30);
    let steps = loop {
        let v = lab.json(&["runbook", "steps", &job.to_string()]);
        let open_done = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "open" && s["state"] == "succeeded");
        if open_done {
            break v;
        }
        assert!(Instant::now() < deadline, "step open not done: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Prometheus's labels came through to the runbook.
    let alert = &steps["trigger"]["alert"];
    assert_eq!(steps["trigger"]["kind"], "alert");
    assert_eq!(alert["rule"], "prometheus-probe-down");
    assert_eq!(alert["labels"]["vm"], "pbx1", "{alert:#}");
    assert_eq!(alert["labels"]["site"], "site1", "{alert:#}");
    assert_eq!(alert["labels"]["probe"], "dead", "{alert:#}");
    assert_eq!(alert["labels"]["team"], "dr", "{alert:#}");
    assert_eq!(
        alert["labels"]["instance"],
        format!("127.0.0.1:{}", lab.api),
        "{alert:#}"
    );
    assert_eq!(
        alert["annotations"]["summary"],
        "Prometheus sees probe dead of pbx1 down"
    );
    assert_eq!(steps["params"]["vm"], "pbx1");
    let incident = steps["incident"].as_i64().expect("the runbook's incident");
    let d = lab.json(&["incidents", "show", &incident.to_string()]);
    assert_eq!(
        d["title"], "Prometheus: pbx1 at site1 (dead, team dr)",
        "{d:#}"
    );
    // The event Alertmanager's notification became.
    let (s, text) = lab.get("/api/v1/events?kind=alertmanager.firing&source=alertmanager");
    assert_eq!(s, 200, "{text}");
    let events: Value = serde_json::from_str(&text).unwrap();
    let first = &events[0];
    assert_eq!(
        first["labels"]["alertname"], "StandbyProbeDown",
        "{events:#}"
    );
    assert_eq!(first["labels"]["status"], "firing");
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["labels"]["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(
        first["message"],
        "StandbyProbeDown firing: standby's probe dead of pbx1 fails"
    );

    // The figure: Prometheus's alert to the runbook's first step.
    let open = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "open")
        .unwrap();
    let started = time(&open["started_at"]);
    let received = time(&first["at"]);
    let fired = time(&alert["fired_at"]);
    let total = secs(active_at, started);
    println!(
        "alertmanager: Prometheus alert active → runbook's first step: {total:.2} s \
         (→ event received {:.2} s, → standby alert fired {:.2} s, → settled and step started {:.2} s)",
        secs(active_at, received),
        secs(received, fired),
        secs(fired, started),
    );
    assert!(
        (0.0..30.0).contains(&total),
        "alert to first step took {total} s"
    );

    // Every query of the Grafana dashboard is PromQL Prometheus evaluates,
    // and those of what this lab has return series.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/grafana/standby.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            let v = http.query(&prom, &expr);
            queries += 1;
            if expr.starts_with("standby_probe_up") || expr.starts_with("standby_alerts{") {
                assert!(
                    !v["data"]["result"].as_array().unwrap().is_empty(),
                    "{expr}: no series: {v}"
                );
            }
        }
    }
    assert!(queries > 25, "{queries} queries");
    drop(daemons);
}
