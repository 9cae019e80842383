//! Runbooks end to end: the shipped move-vm, a user runbook's control
//! flow, durable execution across controller crashes at every step,
//! validation errors and the alert trigger with its lock.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, LabOptions, STANDBY, free_port};

pub(crate) fn wait_job(lab: &Lab, job: i64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = lab.json(&["runbook", "steps", &job.to_string()]);
        let st = v["job"]["status"].as_str().unwrap_or("").to_string();
        if st == "succeeded" || st == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "job {job} did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn step<'a>(v: &'a Value, id: &str, item: i64) -> &'a Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == id && s["item"] == item)
        .unwrap_or_else(|| panic!("no step {id}[{item}] in {v:#}"))
}

#[test]
fn move_vm_moves_the_vnf_to_site2_and_keeps_its_registrations() {
    let lab = Lab::new(LabOptions::default());
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..10);

    let plan = lab.run(&[
        "runbook",
        "run",
        "move-vm",
        "-p",
        "vm=pbx1",
        "-p",
        "site=site2",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success()
            && text.contains("2. live (vm.migrate) when {{ params.live }}")
            && text.contains("6. restore (point.restore)"),
        "{text}"
    );
    assert_eq!(
        lab.json(&["vm", "status", "pbx1"])["active_site"],
        "site1",
        "a dry run acts on nothing"
    );

    let v = lab.json(&[
        "runbook",
        "run",
        "move-vm",
        "-p",
        "vm=pbx1",
        "-p",
        "site=site2",
        "--wait",
    ]);
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    for id in ["incident", "shutdown", "final", "restore", "done"] {
        assert_eq!(step(&v, id, -1)["state"], "succeeded", "{id}: {v:#}");
    }
    assert_eq!(step(&v, "traffic", -1)["state"], "skipped");
    // Not asked to move live: the cold move only.
    for id in ["live", "why"] {
        assert_eq!(step(&v, id, -1)["state"], "skipped", "{id}: {v:#}");
    }
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2");
    assert_eq!(vm["state"], "running");
    lab.wait_sip();
    let expect: Vec<String> = {
        let mut e: Vec<String> = (0..10)
            .map(|n| format!("sip:user{n}@e2e.invalid"))
            .collect();
        e.sort();
        e
    };
    assert_eq!(lab.bindings(), expect, "registrations survive the move");

    // Every step is on the incident's timeline, which says the source
    // stays stopped.
    let incident = v["incident"].as_i64().expect("the job has an incident");
    let d = lab.json(&["incidents", "show", &incident.to_string()]);
    assert_eq!(d["state"], "resolved");
    let timeline: Vec<String> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["text"].as_str().unwrap()
            )
        })
        .collect();
    for id in ["shutdown", "final", "restore"] {
        assert!(
            timeline
                .iter()
                .any(|t| t.starts_with("step") && t.contains(&format!("step {id} succeeded"))),
            "{id} not on the timeline: {timeline:#?}"
        );
    }
    assert!(
        timeline.iter().any(|t| t.contains("stays stopped")),
        "{timeline:#?}"
    );
}

const FLOW: &str = r#"
name: flow
params:
  dir: { type: string, required: true }
steps:
  - id: each
    action: shell
    for_each: [1, 2, 3, 4]
    parallel: 2
    when: "{{ item != 3 }}"
    with: { command: [sh, -c, "echo {{ index }} > {{ params.dir }}/item-{{ item }}"] }
  - id: flaky
    action: shell
    retry: { attempts: 3, backoff: 100ms }
    with: { command: [sh, -c, "echo x >> {{ params.dir }}/tries; test $(wc -l < {{ params.dir }}/tries) -ge 2"] }
  - id: broken
    action: shell
    on_failure: continue
    with: { command: [sh, -c, "exit 3"] }
  - id: after
    action: shell
    with: { command: [sh, -c, "echo {{ steps.each.output | length }} {{ steps.broken.state }} > {{ params.dir }}/after"] }
  - id: never
    action: shell
    when: "{{ steps.broken.state == 'succeeded' }}"
    with: { command: [sh, -c, "touch {{ params.dir }}/never"] }
"#;

#[test]
fn a_user_runbook_runs_as_written() {
    let lab = Lab::new(LabOptions {
        controller: r#"runbooks = ["flow.yaml"]"#.into(),
        files: vec![("flow.yaml", FLOW.into())],
        ..LabOptions::default()
    });
    let dir = lab.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let dir_param = format!("dir={}", dir.display());
    let v = lab.json(&["runbook", "run", "flow", "-p", &dir_param, "--wait"]);
    assert_eq!(
        v["job"]["status"], "succeeded",
        "on_failure: continue: {v:#}"
    );
    for (item, n) in [(1, "0"), (2, "1"), (4, "3")] {
        let got = std::fs::read_to_string(dir.join(format!("item-{item}"))).unwrap();
        assert_eq!(got.trim(), n, "item {item} ran with its index");
    }
    assert!(!dir.join("item-3").exists(), "when: false skips item 3");
    assert_eq!(step(&v, "each", 2)["state"], "skipped");
    let tries = std::fs::read_to_string(dir.join("tries")).unwrap();
    assert_eq!(tries.lines().count(), 2, "retried once, then passed");
    assert_eq!(step(&v, "flaky", -1)["attempt"], 2);
    assert_eq!(step(&v, "broken", -1)["state"], "failed");
    assert!(
        step(&v, "broken", -1)["error"]
            .as_str()
            .unwrap()
            .contains("exit"),
        "{v:#}"
    );
    let after = std::fs::read_to_string(dir.join("after")).unwrap();
    assert_eq!(
        after.trim(),
        "4 failed",
        "later steps see earlier outputs and states"
    );
    assert_eq!(step(&v, "never", -1)["state"], "skipped");
    assert!(!dir.join("never").exists());
}

const CRASHY: &str = r#"
name: crashy
params:
  dir: { type: string, required: true }
steps:
  - id: open
    action: incident.open
    with: { title: "crash test" }
  - id: point
    action: point.create
    with: { vm: pbx1 }
  - id: down
    action: vm.shutdown
    with: { vm: pbx1 }
  - id: restore
    action: point.restore
    with:
      vm: pbx1
      site: site2
      point: "{{ steps.point.output.points[0].point }}"
      start: false
  - id: up
    action: vm.start
    with: { vm: pbx1 }
  - id: line
    action: shell
    with:
      command:
        - sh
        - -c
        - 'grep -qx "$STANDBY_IDEMPOTENCY_KEY" {{ params.dir }}/lines 2>/dev/null || echo "$STANDBY_IDEMPOTENCY_KEY" >> {{ params.dir }}/lines'
"#;

fn vnf_processes(lab: &Lab) -> usize {
    let out = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("standby-vnf --name pbx1 --disk {}", lab.path("").display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The controller dies right after each step's action returned, before
/// its success is recorded; the restarted controller finishes the job
/// with no effect doubled.
#[test]
fn a_job_survives_a_controller_crash_at_every_step() {
    let mut lab = Lab::new(LabOptions {
        controller: r#"runbooks = ["crashy.yaml"]"#.into(),
        files: vec![("crashy.yaml", CRASHY.into())],
        ..LabOptions::default()
    });
    let dir = lab.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let dir_param = format!("dir={}", dir.display());
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let steps = ["open", "point", "down", "restore", "up", "line"];
    // Every step after its action returned, and one before its action ran.
    let crashes = steps
        .iter()
        .map(|s| (*s, "after"))
        .chain([("restore", "before")]);
    for (n, (crash_step, when)) in crashes.enumerate() {
        let points_before = lab
            .json(&["points", "list", "pbx1"])
            .as_array()
            .unwrap()
            .len();
        lab.stop_server();
        lab.set_env(
            "STANDBY_CRASH_AT",
            Some(&format!("crashy:{crash_step}:{when}")),
        );
        lab.start_server();
        let job = lab.json(&["runbook", "run", "crashy", "-p", &dir_param])["job"]
            .as_i64()
            .unwrap();
        assert!(
            lab.wait_server_exit(Duration::from_secs(60)),
            "the controller did not crash at {crash_step}"
        );
        lab.set_env("STANDBY_CRASH_AT", None);
        lab.start_server();
        let v = wait_job(&lab, job, Duration::from_secs(60));
        assert_eq!(
            v["job"]["status"], "succeeded",
            "crash at {crash_step}: {v:#}"
        );
        for id in steps {
            let s = step(&v, id, -1);
            assert_eq!(s["state"], "succeeded", "crash at {crash_step}: {id}");
            assert_eq!(
                s["attempt"], 1,
                "crash at {crash_step}: {id} ran as one attempt"
            );
        }
        assert_eq!(v["steps"].as_array().unwrap().len(), steps.len());
        // No effect doubled: one incident per job, one point per job, one
        // line per job, the VM running once.
        let incidents = lab.json(&["incidents", "list", "--all"]);
        let crash_incidents = incidents
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["title"] == "crash test")
            .count();
        assert_eq!(
            crash_incidents,
            n + 1,
            "crash at {crash_step}: one incident per job"
        );
        let points_after = lab
            .json(&["points", "list", "pbx1"])
            .as_array()
            .unwrap()
            .len();
        assert_eq!(
            points_after,
            points_before + 1,
            "crash at {crash_step}: one point per job"
        );
        let lines = std::fs::read_to_string(dir.join("lines")).unwrap();
        assert_eq!(
            lines.lines().count(),
            n + 1,
            "crash at {crash_step}: {lines}"
        );
        let vm = lab.json(&["vm", "status", "pbx1"]);
        assert_eq!(
            (vm["active_site"].as_str(), vm["state"].as_str()),
            (Some("site2"), Some("running"))
        );
        assert_eq!(
            vnf_processes(&lab),
            1,
            "crash at {crash_step}: the VM runs once"
        );
    }
}

#[test]
fn validate_names_file_step_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: bad\nsteps:\n  - id: vms\n    action: vm.list\n  - id: start\n    action: vm.start\n    for_each: \"{{ steps.vms.output.vms }}\"\n    with: { vm: \"{{ itm.name }}\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(STANDBY)
        .args(["runbook", "validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: steps[1].with.vm: undefined value 'itm'",
            file.display()
        )),
        "{err}"
    );
    std::fs::write(&file, "name: bad\nsteps:\n  - id: a\n    action: sleep\n    with: { duration: 1s }\n    retries: 3\n").unwrap();
    let out = std::process::Command::new(STANDBY)
        .args(["runbook", "validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:6:5: steps[0]: unknown field `retries`"),
        "{err}"
    );
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runbooks");
    for f in ["protect.yaml", "failover-site.yaml", "move-vm.yaml"] {
        let out = std::process::Command::new(STANDBY)
            .args(["runbook", "validate", shipped.join(f).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The published JSON Schema (`standby runbook schema`) checks each step's
/// inputs against its action, as a real validator (jsonschema-rs, from
/// the venv `scripts/test` fills) reads it: the shipped runbooks pass; an
/// unknown input, a missing one, a value of the wrong type and an unknown
/// action fail at their path; a template passes where a bool is meant.
#[test]
fn the_published_schema_checks_each_actions_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(STANDBY)
        .args(["runbook", "schema"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runbooks");
    let bad = |name: &str, step: &str| {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, format!("name: {name}\nsteps:\n  - id: s\n{step}")).unwrap();
        f
    };
    let cases = [
        (
            bad(
                "unknown-input",
                "    action: sleep\n    with: { duration: 1s, jitter: 2s }\n",
            ),
            false,
        ),
        (
            bad(
                "missing-input",
                "    action: point.restore\n    with: { vm: pbx1 }\n",
            ),
            false,
        ),
        (
            bad(
                "wrong-type",
                "    action: point.restore\n    with: { vm: pbx1, site: site2, start: [yes] }\n",
            ),
            false,
        ),
        (
            bad(
                "unknown-action",
                "    action: vm.explode\n    with: { vm: pbx1 }\n",
            ),
            false,
        ),
        (
            bad(
                "template",
                "    action: point.restore\n    with: { vm: pbx1, site: site2, start: \"{{ params.start }}\" }\n",
            ),
            true,
        ),
    ];
    let mut files: Vec<(std::path::PathBuf, bool)> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| (e.unwrap().path(), true))
        .filter(|(p, _)| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    files.extend(cases);
    let script = r#"
import json, sys, yaml, jsonschema_rs
v = jsonschema_rs.validator_for(json.load(open(sys.argv[1])))
for f in sys.argv[2:]:
    errs = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in v.iter_errors(yaml.safe_load(open(f)))]
    print(json.dumps({"file": f, "errors": errs}))
"#;
    let mut cmd = std::process::Command::new(crate::harness::venv_bin("python3"));
    cmd.args(["-c", script]).arg(&schema);
    for (f, _) in &files {
        cmd.arg(f);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run the venv's python3 ({e}): install it with scripts/test")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), files.len());
    for ((f, ok), r) in files.iter().zip(&results) {
        let errs = r["errors"].as_array().unwrap();
        assert_eq!(errs.is_empty(), *ok, "{}: {errs:?}", f.display());
        if !ok {
            // Each failure is placed at the step.
            assert!(
                errs.iter()
                    .any(|e| e.as_str().unwrap().starts_with("steps/0")),
                "{}: {errs:?}",
                f.display()
            );
        }
    }
}

const DEAD_RULES: &str = r#"
rules:
  - name: dead-down
    condition:
      probe: { probe: dead }
      group_by: [vm]
    for: 1s
    severity: warning
"#;

const ON_DEAD: &str = r#"
name: on-dead
trigger:
  alert: { alertname: dead-down }
params:
  vm: { type: string, required: true, default: "{{ trigger.alert.labels.vm }}" }
lock: "dead:{{ params.vm }}"
steps:
  - id: open
    action: incident.open
    with: { title: "dead port of {{ params.vm }}", dedup: "dead:{{ params.vm }}" }
  - id: note
    action: incident.note
    with: { text: "runbook saw alert {{ trigger.alert.id }} for {{ params.vm }}" }
  - id: hold
    action: sleep
    with: { duration: 20s }
"#;

#[test]
fn an_alert_starts_a_runbook_and_its_lock_skips_a_second_trigger() {
    let closed = free_port();
    let lab = Lab::new(LabOptions {
        controller: "rules = [\"rules.yaml\"]\nrunbooks = [\"on-dead.yaml\"]".into(),
        watch: format!(
            "\n[probes.dead]\nkind = \"tcp\"\ntarget = \"127.0.0.1:{closed}\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\nlabels = {{ vm = \"pbx1\", site = \"site1\" }}\n"
        ),
        files: vec![
            ("rules.yaml", DEAD_RULES.into()),
            ("on-dead.yaml", ON_DEAD.into()),
        ],
        ..LabOptions::default()
    });
    let job = lab
        .wait_runbook_job("on-dead", Duration::from_secs(30))
        .unwrap_or_else(|jobs| panic!("no runbook job from the alert: {jobs:#}"));
    // The note lands on the incident the runbook opened.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (v, incident) = loop {
        let v = lab.json(&["runbook", "steps", &job.to_string()]);
        if v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "note" && s["state"] == "succeeded")
        {
            let i = v["incident"].as_i64().unwrap();
            break (v, i);
        }
        assert!(Instant::now() < deadline, "note step not done: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["trigger"]["kind"], "alert");
    assert_eq!(v["params"]["vm"], "pbx1");
    let d = lab.json(&["incidents", "show", &incident.to_string()]);
    let texts: Vec<&str> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let alert = v["trigger"]["alert"]["id"].as_i64().unwrap();
    assert!(
        texts.contains(&format!("runbook saw alert {alert} for pbx1").as_str()),
        "{texts:#?}"
    );
    // While the job holds the lock, another trigger is skipped.
    let err = lab.fails(&["runbook", "run", "on-dead", "-p", "vm=pbx1"]);
    assert!(
        err.contains(&format!("skipped: lock 'dead:pbx1' is held by job {job}")),
        "{err}"
    );
    let list = lab.json(&["runbook", "list"]);
    assert_eq!(
        list["locks"][0],
        serde_json::json!(["dead:pbx1", job]),
        "{list:#}"
    );
}

const HOOKED: &str = r#"
name: hooked
trigger:
  manual: false
  webhook: { secret_env: HOOKED_SECRET }
params:
  dir: { type: string, required: true }
steps:
  - id: mark
    action: shell
    with: { command: [sh, -c, "echo {{ trigger.body.note }} > {{ params.dir }}/mark"] }
"#;

/// The headers of a webhook call signed with `secret` at `ts` (Unix
/// seconds), with a fresh nonce.
fn signed(secret: &[u8], body: &str, ts: i64) -> reqwest::header::HeaderMap {
    let nonce = standby_notify::new_nonce();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(standby_notify::TIMESTAMP_HEADER, ts.into());
    h.insert(standby_notify::NONCE_HEADER, nonce.parse().unwrap());
    h.insert(
        standby_notify::SIGNATURE_HEADER,
        standby_notify::sign(secret, ts, &nonce, body.as_bytes())
            .parse()
            .unwrap(),
    );
    h
}

/// A controller running the `hooked` runbook with the webhook secret
/// `s3cret`: the lab, a call's body (its note, an output directory) and
/// the webhook's URL.
fn hooked_lab(note: &str) -> (Lab, String, String) {
    let mut lab = Lab::new(LabOptions {
        controller: r#"runbooks = ["hooked.yaml"]"#.into(),
        files: vec![("hooked.yaml", HOOKED.into())],
        ..LabOptions::default()
    });
    lab.stop_server();
    lab.set_env("HOOKED_SECRET", Some("s3cret"));
    lab.start_server();
    let dir = lab.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let body = serde_json::json!({ "note": note, "params": { "dir": dir } }).to_string();
    let url = format!(
        "http://127.0.0.1:{}/api/v1/runbooks/hooked/webhook",
        lab.api
    );
    (lab, body, url)
}

/// A webhook call replayed (the same headers and body again) or signed
/// with a timestamp more than five minutes off is refused with a clear
/// error, and starts nothing; a fresh call still does.
#[test]
fn hardening_a_replayed_or_stale_webhook_is_refused() {
    let (lab, body, url) = hooked_lab("once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let post = |h: reqwest::header::HeaderMap| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(&url)
                .headers(h)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let now = chrono::Utc::now().timestamp();
    let first = signed(b"s3cret", &body, now);
    let (status, text) = post(first.clone());
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(first);
    assert_eq!(status, 400, "a replay is refused: {text}");
    assert!(text.contains("replayed request"), "{text}");
    let (status, text) = post(signed(b"s3cret", &body, now - 600));
    assert_eq!(status, 400, "a stale call is refused: {text}");
    assert!(text.contains("stale request"), "{text}");
    let (status, text) = post(signed(b"s3cret", &body, now + 600));
    assert_eq!(status, 400, "a call from the future is refused: {text}");
    // Without timestamp and nonce (the old format): refused, named.
    let mut old = signed(b"s3cret", &body, now);
    old.remove(standby_notify::NONCE_HEADER);
    let (status, text) = post(old);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("missing X-Standby-Nonce"), "{text}");
    let (status, text) = post(signed(b"s3cret", &body, now));
    assert_eq!(status, 200, "a fresh call: {text}");
    let runs = lab.json(&["jobs", "list"]);
    let hooked = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["target"] == "hooked")
        .count();
    assert_eq!(hooked, 2, "two calls accepted, two runs: {runs:#}");
}

/// A signed webhook starts the runbook; a bad signature starts nothing;
/// the schema is served.
#[test]
fn a_signed_webhook_starts_a_runbook() {
    let (lab, body, url) = hooked_lab("from-the-hook");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (bad, good, schema) = rt.block_on(async {
        let c = reqwest::Client::new();
        let bad = c
            .post(&url)
            .headers(signed(b"wrong", &body, chrono::Utc::now().timestamp()))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        let good: Value = c
            .post(&url)
            .headers(signed(b"s3cret", &body, chrono::Utc::now().timestamp()))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let schema: Value = c
            .get(format!(
                "http://127.0.0.1:{}/api/v1/runbooks/schema",
                lab.api
            ))
            .bearer_auth(lab.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (bad, good, schema)
    });
    assert_eq!(bad, 400, "a bad signature is refused");
    let job = good["job"].as_i64().unwrap_or_else(|| panic!("{good}"));
    let v = wait_job(&lab, job, Duration::from_secs(30));
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    assert_eq!(
        std::fs::read_to_string(lab.path("out/mark"))
            .unwrap()
            .trim(),
        "from-the-hook"
    );
    assert_eq!(v["trigger"]["kind"], "webhook");
    assert_eq!(schema["title"], "Runbook");
    // manual: false refuses a run by hand.
    let err = lab.fails(&["runbook", "run", "hooked", "-p", "dir=/tmp"]);
    assert!(err.contains("cannot be run by hand"), "{err}");
}

/// The shipped `failover-site`, killed at each of its steps in turn (right
/// after the step's action returned, before its success is recorded): the
/// restarted controller finishes the failover with every step done once,
/// one incident, the VNF running once at site 2 with its registrations,
/// site 1 fenced and the front door at site 2.
#[test]
fn failover_site_survives_a_crash_at_every_step() {
    let steps = [
        "incident", "fence", "vms", "restore", "probes", "traffic", "resolve",
    ];
    for crash_step in steps {
        let front = free_port();
        let mut lab = Lab::new(LabOptions {
            // `{sip}` in `watch` is the VNF's address.
            watch: format!(
                r#"
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
probe = "sip"
"#
            ),
            ..LabOptions::default()
        });
        lab.json(&["vm", "start", "pbx1"]);
        lab.wait_sip();
        lab.register(0..5);
        lab.json(&["protect", "run", "gold"]);
        lab.stop_server();
        lab.set_env(
            "STANDBY_CRASH_AT",
            Some(&format!("failover-site:{crash_step}:after")),
        );
        lab.start_server();
        let job = lab.json(&["runbook", "run", "failover-site", "-p", "site=site1"])["job"]
            .as_i64()
            .unwrap();
        assert!(
            lab.wait_server_exit(Duration::from_secs(60)),
            "the controller did not crash at {crash_step}"
        );
        lab.set_env("STANDBY_CRASH_AT", None);
        lab.start_server();
        let v = wait_job(&lab, job, Duration::from_secs(90));
        let what = format!("crash at {crash_step}");
        assert_failed_over_once(&lab, &v, &what);
        assert_eq!(lab.bindings().len(), 5, "{what}");
    }
}

/// `failover-site` of site 1 finished with every step done once (one
/// attempt each), one incident, pbx1 running once at site 2, site 1
/// fenced and the front door at site 2; `what` names the trial.
pub(crate) fn assert_failed_over_once(lab: &Lab, v: &Value, what: &str) {
    assert_eq!(v["job"]["status"], "succeeded", "{what}: {v:#}");
    let steps = [
        ("incident", -1),
        ("fence", -1),
        ("vms", -1),
        ("resolve", -1),
    ]
    .into_iter()
    .chain([("restore", 0), ("probes", 0), ("traffic", 0)]);
    for (id, item) in steps {
        let s = step(v, id, item);
        assert_eq!(s["state"], "succeeded", "{what}: {id}");
        assert_eq!(s["attempt"], 1, "{what}: {id} ran once: {v:#}");
    }
    let incidents = lab.json(&["incidents", "list", "--all"]);
    let failovers = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["title"] == "failover of site site1")
        .count();
    assert_eq!(failovers, 1, "{what}: one incident");
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(
        (vm["active_site"].as_str(), vm["state"].as_str()),
        (Some("site2"), Some("running")),
        "{what}: {vm:#}"
    );
    assert_eq!(vnf_processes(lab), 1, "{what}: one copy of the VNF");
    let sites = lab.json(&["site", "list"]).to_string();
    assert!(sites.contains("\"fenced\":true"), "{what}: {sites}");
    let svc = lab.json(&["service", "list"]);
    assert_eq!(svc[0]["active_site"], "site2", "{what}: {svc:#}");
}
