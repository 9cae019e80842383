//! ETSI NFV end to end (`docs/nfv.md`): a VNF manager's calls, as
//! OpenStack Tacker makes them, to a real controller whose VNF instance is
//! a real `standby-vnf` SIP registrar. A heal restarts it in place (a new
//! process that answers SIP again) or recovers it at the DR site (active
//! and answering at site 2, its registrations kept), each read back as a
//! VnfLcmOpOcc until COMPLETED; a heal that cannot finish is FAILED with
//! its error; an alarm notification becomes an event that a rule of the
//! lab turns into an alert whose runbook runs; what is not right is
//! refused with SOL 013's ProblemDetails. Everything on 127.0.0.1.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, free_port};

const INSTANCE: &str = "6b1f0c2e-4d2a-4c1e-9a7b-pbx";

const RULES: &str = r#"
rules:
  - name: vnf-alarm
    condition:
      event: { kind: nfv.alarm, probable_cause: registrar-unresponsive }
      within: 10m
      group_by: [vnf_instance, vm, site, perceived_severity]
    for: 0s
    severity: critical
    annotations:
      summary: "the VNF manager reports {{ labels.vm }} unresponsive"
"#;

const RUNBOOK: &str = r#"
name: on-vnf-alarm
trigger:
  alert: { alertname: vnf-alarm }
params:
  vm: { type: string, required: true, default: "{{ trigger.alert.labels.vm }}" }
lock: "vnf-alarm:{{ params.vm }}"
steps:
  - id: open
    action: incident.open
    with:
      title: "VNF alarm: {{ params.vm }} at {{ trigger.alert.labels.site }} (VNF instance {{ trigger.alert.labels.vnf_instance }}, {{ trigger.alert.labels.perceived_severity }})"
      dedup: "vnf-alarm:{{ params.vm }}"
"#;

/// A blocking HTTP client: (status, headers, body).
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// A SOL 013 ProblemDetails with this status whose detail has `text`.
    fn problem(&self, status: u16, text: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), "application/problem+json");
        let v = self.json();
        assert_eq!(v["status"], status, "{v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(text), "{text:?} not in {v}");
    }
}

impl Http {
    fn new(lab: &Lab) -> Http {
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
            base: format!("http://127.0.0.1:{}", lab.api),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        self.rt.block_on(async {
            let url = if path.starts_with("http") {
                path.to_string()
            } else {
                format!("{}{path}", self.base)
            };
            let mut req = self.client.request(method, url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            let r = req.send().await.expect("the controller answers");
            Answer {
                status: r.status().as_u16(),
                headers: r.headers().clone(),
                body: r.text().await.unwrap_or_default(),
            }
        })
    }

    fn get(&self, path: &str, token: &str) -> Answer {
        self.call(reqwest::Method::GET, path, Some(token), None)
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            path,
            token,
            Some(serde_json::to_vec(body).unwrap()),
        )
    }
}

fn token(lab: &Lab, name: &str, role: &str, tenant: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    lab.json(&args)["secret"].as_str().unwrap().to_string()
}

fn heal_path(id: &str) -> String {
    format!("/vnflcm/v1/vnf_instances/{id}/heal")
}

/// Heal and return the op occ's URL (from `Location`).
fn heal(http: &Http, tok: &str, id: &str, body: &Value) -> String {
    let a = http.post(&heal_path(id), Some(tok), body);
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.body.is_empty(), "{}", a.body);
    let loc = a.header("location").to_string();
    assert!(
        loc.starts_with(&format!("{}/vnflcm/v1/vnf_lcm_op_occs/", http.base)),
        "{loc}"
    );
    loc
}

/// Poll the op occ until it is COMPLETED or FAILED; it and the seconds
/// from the request.
fn settle(http: &Http, tok: &str, url: &str, from: Instant) -> (Value, f64) {
    let mut seen = Vec::new();
    loop {
        let a = http.get(url, tok);
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        let state = v["operationState"].as_str().unwrap().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "COMPLETED" || state == "FAILED" {
            for s in &seen {
                assert!(
                    ["STARTING", "PROCESSING", "COMPLETED", "FAILED"].contains(&s.as_str()),
                    "{seen:?}"
                );
            }
            return (v, from.elapsed().as_secs_f64());
        }
        assert!(
            from.elapsed() < Duration::from_secs(60),
            "not settled: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid(lab: &Lab) -> u64 {
    lab.json(&["vm", "status", "pbx1"])["pid"]
        .as_u64()
        .expect("pbx1 runs")
}

/// What the API refuses: no token 401, a viewer 403, an unknown instance
/// or op occ 404, a tenant's user another's instance 404 and a
/// notification 403, a bad body or parameter 400, too large 413; each a
/// ProblemDetails.
fn refusals(http: &Http, lab: &Lab, op: &str) {
    let viewer = token(lab, "nfvo-viewer", "viewer", None);
    let acme = token(lab, "acme-ops", "operator", Some("acme"));
    let body = json!({"cause": "test"});
    http.post(&heal_path(INSTANCE), None, &body)
        .problem(401, "authentication required");
    http.post(&heal_path(INSTANCE), Some(&viewer), &body)
        .problem(403, "this needs operator");
    http.post(&heal_path("no-such-vnf"), Some(op), &body)
        .problem(404, "vnf instance 'no-such-vnf' not found");
    http.post(&heal_path(INSTANCE), Some(&acme), &body)
        .problem(404, "not found");
    http.get(&format!("/vnflcm/v1/vnf_instances/{INSTANCE}"), &acme)
        .problem(404, "not found");
    assert_eq!(
        http.get("/vnflcm/v1/vnf_instances", &acme).json(),
        json!([])
    );
    let a = http.call(
        reqwest::Method::POST,
        &heal_path(INSTANCE),
        Some(op),
        Some(b"{not json".to_vec()),
    );
    a.problem(400, "not a HealVnfRequest");
    http.post(
        &heal_path(INSTANCE),
        Some(op),
        &json!({"vnfcInstanceId": "pbx1"}),
    )
    .problem(400, "not a HealVnfRequest");
    http.post(
        &heal_path(INSTANCE),
        Some(op),
        &json!({"vnfcInstanceId": ["pbx9"]}),
    )
    .problem(400, "vnfcInstanceId 'pbx9' is not a VNFC of VNF instance");
    http.post(
        &heal_path(INSTANCE),
        Some(op),
        &json!({"additionalParams": {"standby_action": "reboot"}}),
    )
    .problem(400, "standby_action must be \"restart\"");
    let a = http.call(
        reqwest::Method::POST,
        &heal_path(INSTANCE),
        Some(op),
        Some(vec![b' '; (1 << 20) + 1]),
    );
    a.problem(413, "at most");
    http.get("/vnflcm/v1/vnf_lcm_op_occs/424242", op)
        .problem(404, "vnf lcm op occ '424242' not found");
    http.get("/vnflcm/v1/vnf_lcm_op_occs/nope", op)
        .problem(404, "not found");
    // A job that is not a heal is no op occ.
    let (s, text) = lab.post("/api/v1/groups/gold/run", json!({}));
    assert_eq!(s, 200, "{text}");
    let job = serde_json::from_str::<Value>(&text).unwrap()["job"]
        .as_i64()
        .expect("a job");
    http.get(&format!("/vnflcm/v1/vnf_lcm_op_occs/{job}"), op)
        .problem(404, "not found");
    // Its point done before the heals (they would wait for it anyway).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = lab.get(&format!("/api/v1/jobs/{job}"));
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["status"] == "succeeded" {
            break;
        }
        assert!(
            v["status"] != "failed" && Instant::now() < deadline,
            "the protection run: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fault management: not a notification, a tenant; the endpoint test.
    http.post(
        "/vnffm/v1/notifications",
        Some(op),
        &json!({"notificationType": "VnfLcmOperationOccurrenceNotification", "id": "x"}),
    )
    .problem(400, "not a VNF fault management notification");
    http.post("/vnffm/v1/notifications", Some(&acme), &json!({}))
        .problem(403, "operators'");
    let a = http.get("/vnffm/v1/notifications", &viewer);
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    // Nothing of that started a heal.
    assert_eq!(http.get("/vnflcm/v1/vnf_lcm_op_occs", op).json(), json!([]));
}

#[test]
fn ecosystem_nfv_heal_recover_and_alarms() {
    let began = Instant::now();
    let front = free_port();
    let lab = Lab::new(LabOptions {
        controller: "rules = [\"rules.yaml\"]\nrunbooks = [\"on-vnf-alarm.yaml\"]".into(),
        extra: "[tenants.acme]\n",
        watch: format!(
            r#"
[services.sip]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
probe = "sip"

[vms.other]
host = "site1-host1"
dr_site = "site2"
command = "sleep"
args = ["600"]

[nfv.vnf_instances."{INSTANCE}"]
vms = ["pbx1"]
name = "pbx"
vnfd_id = "b1bb0ce7-ebca-4fa7-95ed-4840d70a1177"
vnf_provider = "standby"
vnf_product_name = "standby-vnf"

[nfv.vnf_instances.unprotected]
vms = ["other"]
"#
        ),
        files: vec![
            ("rules.yaml", RULES.into()),
            ("on-vnf-alarm.yaml", RUNBOOK.into()),
        ],
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.json(&["vm", "start", "other"]);
    lab.wait_sip();
    lab.register(0..5);
    let http = Http::new(&lab);
    let op = token(&lab, "tacker", "operator", None);
    refusals(&http, &lab, &op);

    // The instance as a VNF manager reads it.
    let inst = http
        .get(&format!("/vnflcm/v1/vnf_instances/{INSTANCE}"), &op)
        .json();
    assert_eq!(inst["id"], INSTANCE);
    assert_eq!(inst["vnfInstanceName"], "pbx");
    assert_eq!(inst["vnfdId"], "b1bb0ce7-ebca-4fa7-95ed-4840d70a1177");
    assert_eq!(inst["instantiationState"], "INSTANTIATED");
    let info = &inst["instantiatedVnfInfo"];
    assert_eq!(info["vnfState"], "STARTED", "{inst:#}");
    assert_eq!(info["vnfcResourceInfo"][0]["id"], "pbx1");
    assert_eq!(info["vnfcResourceInfo"][0]["metadata"]["site"], "site1");
    assert_eq!(
        inst["_links"]["heal"]["href"],
        format!("{}{}", http.base, heal_path(INSTANCE))
    );
    let all = http.get("/vnflcm/v1/vnf_instances", &op).json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all:#}");

    // Heal, restart in place: a new process, answering SIP again.
    let before = pid(&lab);
    let t = Instant::now();
    let url = heal(
        &http,
        &op,
        INSTANCE,
        &json!({"cause": "registrar hangs", "vnfcInstanceId": ["pbx1"]}),
    );
    // One operation on an instance at a time.
    http.post(&heal_path(INSTANCE), Some(&op), &json!({}))
        .problem(409, "is busy");
    let (occ, restart_s) = settle(&http, &op, &url, t);
    assert_eq!(occ["operationState"], "COMPLETED", "{occ:#}");
    assert_eq!(occ["operation"], "HEAL");
    assert_eq!(occ["vnfInstanceId"], INSTANCE);
    assert_eq!(occ["isAutomaticInvocation"], false);
    assert_eq!(occ["operationParams"]["cause"], "registrar hangs");
    assert_eq!(occ["_links"]["self"]["href"], url.as_str());
    assert!(occ.get("error").is_none(), "{occ:#}");
    let after = pid(&lab);
    assert_ne!(before, after, "the VNF was restarted");
    lab.wait_sip();
    let steps = lab.json(&["runbook", "steps", occ["id"].as_str().unwrap()]);
    let answered = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "answers" && s["item"] == 0)
        .unwrap_or_else(|| panic!("no answers step: {steps:#}"));
    assert_eq!(answered["state"], "succeeded", "{steps:#}");

    // An alarm of the VNF manager: an event, the lab's rule's alert, its
    // runbook's job; then its clearing.
    let alarm = json!({
        "id": "n-1", "notificationType": "AlarmNotification", "subscriptionId": "s-1",
        "timeStamp": "2026-12-06T08:00:00Z",
        "alarm": {
            "id": "alarm-1", "managedObjectId": INSTANCE, "vnfcInstanceIds": ["pbx1"],
            "alarmRaisedTime": "2026-12-06T08:00:00Z", "ackState": "UNACKNOWLEDGED",
            "perceivedSeverity": "MAJOR", "eventTime": "2026-12-06T08:00:00Z",
            "eventType": "PROCESSING_ERROR_ALARM", "probableCause": "registrar-unresponsive",
            "isRootCause": true, "faultDetails": ["no answer to REGISTER"],
            "_links": {"self": {"href": "http://vnfm/vnffm/v1/alarms/alarm-1"}}
        },
        "_links": {"subscription": {"href": "http://vnfm/vnffm/v1/subscriptions/s-1"}}
    });
    let t = Instant::now();
    let a = http.post("/vnffm/v1/notifications", Some(&op), &alarm);
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let job = lab
        .wait_runbook_job("on-vnf-alarm", Duration::from_secs(30))
        .unwrap_or_else(|jobs| panic!("no runbook job from the alarm: {jobs:#}"));
    let done = crate::runbooks::wait_job(&lab, job, Duration::from_secs(30));
    let alarm_s = t.elapsed().as_secs_f64();
    assert_eq!(done["job"]["status"], "succeeded", "{done:#}");
    let labels = &done["trigger"]["alert"]["labels"];
    assert_eq!(labels["vnf_instance"], INSTANCE, "{labels:#}");
    assert_eq!(labels["vm"], "pbx1");
    assert_eq!(labels["site"], "site1");
    assert_eq!(labels["perceived_severity"], "MAJOR");
    let incident = done["incident"].as_i64().expect("an incident");
    let d = lab.json(&["incidents", "show", &incident.to_string()]);
    assert_eq!(
        d["title"],
        format!("VNF alarm: pbx1 at site1 (VNF instance {INSTANCE}, MAJOR)")
    );
    let (s, text) = lab.get("/api/v1/events?kind=nfv.alarm&source=nfv");
    assert_eq!(s, 200, "{text}");
    let events: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(events[0]["severity"], "error", "{events:#}");
    assert_eq!(events[0]["labels"]["alarm_id"], "alarm-1");
    assert_eq!(
        events[0]["labels"]["probable_cause"],
        "registrar-unresponsive"
    );
    let cleared = json!({
        "id": "n-2", "notificationType": "AlarmClearedNotification", "subscriptionId": "s-1",
        "timeStamp": "2026-12-06T08:01:00Z", "alarmId": "alarm-1",
        "alarmClearedTime": "2026-12-06T08:01:00Z",
        "_links": {"subscription": {"href": "x"}, "alarm": {"href": "y"}}
    });
    let a = http.post("/vnffm/v1/notifications", Some(&op), &cleared);
    assert_eq!(a.status, 204, "{}", a.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = lab.get("/api/v1/events?kind=nfv.alarm_cleared");
        let v: Value = serde_json::from_str(&text).unwrap();
        if let Some(e) = v.as_array().and_then(|a| a.first()) {
            // The labels of the alarm it clears.
            assert_eq!(e["labels"]["vm"], "pbx1", "{e:#}");
            assert_eq!(e["labels"]["vnf_instance"], INSTANCE);
            assert_eq!(
                e["message"],
                format!("VNF instance {INSTANCE}: alarm alarm-1 cleared")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no nfv.alarm_cleared event: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Heal, recover at the DR site: active and answering at site 2, its
    // registrations kept.
    let t = Instant::now();
    let url = heal(
        &http,
        &op,
        INSTANCE,
        &json!({"cause": "site1 degraded", "additionalParams": {"standby_action": "recover"}}),
    );
    let (occ, recover_s) = settle(&http, &op, &url, t);
    assert_eq!(occ["operationState"], "COMPLETED", "{occ:#}");
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2", "{vm:#}");
    assert_eq!(vm["state"], "running");
    lab.wait_sip();
    let expect: Vec<String> = (0..5).map(|n| format!("sip:user{n}@e2e.invalid")).collect();
    assert_eq!(lab.bindings(), expect, "registrations survive the recovery");
    let inst = http
        .get(&format!("/vnflcm/v1/vnf_instances/{INSTANCE}"), &op)
        .json();
    let vnfc = &inst["instantiatedVnfInfo"]["vnfcResourceInfo"][0];
    assert_eq!(vnfc["metadata"]["site"], "site2", "{inst:#}");
    assert_eq!(inst["instantiatedVnfInfo"]["vnfState"], "STARTED");
    let services = lab.json(&["service", "list"]);
    assert_eq!(services[0]["active_site"], "site2", "{services:#}");

    // A heal that cannot finish (a VM in no protection group has no
    // final point to recover from): FAILED, with why.
    let url = heal(
        &http,
        &op,
        "unprotected",
        &json!({"additionalParams": {"standby_action": "recover"}}),
    );
    let (occ, _) = settle(&http, &op, &url, Instant::now());
    assert_eq!(occ["operationState"], "FAILED", "{occ:#}");
    assert_eq!(occ["error"]["status"], 500, "{occ:#}");
    assert!(
        occ["error"]["detail"].as_str().unwrap().contains("final"),
        "{occ:#}"
    );

    let list = http.get("/vnflcm/v1/vnf_lcm_op_occs", &op).json();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operationState"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["FAILED", "COMPLETED", "COMPLETED"], "{list:#}");
    // A page at a time, newest first, with the number of matches.
    let page = http.get("/vnflcm/v1/vnf_lcm_op_occs?limit=1&offset=1", &op);
    assert_eq!(page.header("x-total-count"), "3");
    assert_eq!(
        page.json()[0]["operationState"],
        "COMPLETED",
        "{:#}",
        page.json()
    );
    assert_eq!(page.json().as_array().unwrap().len(), 1);
    println!(
        "nfv: heal restart → COMPLETED {restart_s:.2} s; alarm → runbook job done {alarm_s:.2} s; \
         heal recover at site 2 → COMPLETED {recover_s:.2} s; whole test {:.1} s",
        began.elapsed().as_secs_f64()
    );
}
