//! The monthly DR report, against a running controller: two tenants'
//! VMs, acme's protected every 2 s with a 10 s target and drilled,
//! globex's protected once with a 3 s target; an incident of each. Each
//! tenant's report (JSON and CSV) holds its own VMs, drills and incidents
//! with figures that make sense, and nothing of the other's; the portal's
//! `/reports` in a real browser (`tests/browser/report.mjs`) shows the
//! tables and downloads the CSV.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, STANDBY, free_port};
use crate::portal::run_browser;
use crate::watch::wait_until;

/// `GET path` with a bearer token: (status, content type, body).
fn get(lab: &Lab, token: &str, path: &str) -> (u16, String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}{path}", lab.api))
            .bearer_auth(token)
            .send()
            .await
            .expect("controller answers");
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            r.status().as_u16(),
            kind,
            r.text().await.unwrap_or_default(),
        )
    })
}

fn report(lab: &Lab, token: &str, query: &str) -> Value {
    let (s, _, body) = get(lab, token, &format!("/api/v1/reports/monthly{query}"));
    assert_eq!(s, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn vm_names(r: &Value) -> Vec<&str> {
    r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm"].as_str().unwrap())
        .collect()
}

/// A new operator token of `tenant`.
pub(crate) fn token(lab: &Lab, tenant: &str) -> String {
    let t = lab.json(&[
        "token", "create", "--name", "e2e", "--role", "operator", "--tenant", tenant,
    ]);
    t["secret"].as_str().unwrap().to_string()
}

/// `standby user add` of a tenant's user, the password on standard input.
pub(crate) fn add_user(lab: &Lab, name: &str, role: &str, tenant: &str, password: &str) {
    let mut add = Command::new(STANDBY)
        .args(["--config", lab.cfg.to_str().unwrap()])
        .args(["user", "add", name, "--role", role, "--tenant", tenant])
        .arg("--password-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{password}").unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The VM rows of a CSV table (after the header), as cells; the table
/// holds no quoted cell here.
fn csv_rows(body: &str) -> (String, Vec<Vec<String>>) {
    assert!(body.ends_with("\r\n"), "CRLF line ends: {body:?}");
    let mut lines = body.split("\r\n").filter(|l| !l.is_empty());
    let header = lines.next().expect("a header row").to_string();
    let rows = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn ecosystem_monthly_report_per_tenant() {
    let started = Instant::now();
    let (sip, http_port, front) = (free_port(), free_port(), free_port());
    let lab = Lab::new(LabOptions {
        vm: Some(format!(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}", "--http", "127.0.0.1:{http_port}"]
tenant = "acme""#
        )),
        schedule: "every 2s",
        retention: "keep_last = 1000",
        group: "rpo_target = \"10s\"\ntenant = \"acme\"",
        extra: r#"
[tenants.acme]
[tenants.globex]
[vms.other]
host = "site1-host1"
command = "sleep"
args = ["600"]
tenant = "globex"
[[vms.other.disks]]
name = "data"
size = "1MiB"
[groups.silver]
members = ["other"]
schedule = "0 0 1 1 *"
datastores = ["site1-store"]
rpo_target = "3s"
tenant = "globex"
"#,
        // The drill probes its copy with the VM's front-door service check.
        watch: format!(
            r#"
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "127.0.0.1:{sip}", site2 = "127.0.0.1:{sip}" }}
probe = "sip"
"#
        ),
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.json(&["vm", "start", "other"]);
    // globex's VM: one point, then none (its schedule is once a year).
    lab.json(&["protect", "run", "silver"]);
    let (acme, globex, admin) = (token(&lab, "acme"), token(&lab, "globex"), lab.token());

    // acme's VM: a point every 2 s.
    wait_until("five points of pbx1", Duration::from_secs(60), || {
        let r = report(&lab, &acme, "");
        (r["vms"][0]["points"].as_u64().unwrap_or(0) >= 5).then_some(())
    });

    // A drill of acme's VM, by acme; it opens (and resolves) an incident.
    let (s, body) = {
        let (s, body) = lab.post(
            "/api/v1/runbooks/drill/run",
            json!({"params": {"vm": "pbx1"}}),
        );
        (
            s,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    assert_eq!(s, 200, "{body}");
    let job = body["job"].as_i64().expect("a job id");
    let done = wait_until("the drill to finish", Duration::from_secs(180), || {
        let (_, body) = lab.get(&format!("/api/v1/jobs/{job}"));
        let j: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        matches!(j["status"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    assert_eq!(done["status"], "succeeded", "{done:#}");
    // An incident of globex's, which acme must not see.
    let (s, body) = lab.post(
        "/api/v1/incidents",
        json!({"title": "globex storage slow", "labels": {"tenant": "globex"}}),
    );
    assert_eq!(s, 200, "{body}");
    let globex_incident = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    // Let globex's one point age well past its 3 s target.
    std::thread::sleep(Duration::from_secs(4));

    // acme: only pbx1, within its target nearly all the time since its
    // first point; its drill with a measured RTO; its incident only.
    let r = report(&lab, &acme, "");
    eprintln!("acme's report: {r:#}");
    assert_eq!(r["tenant"], "acme");
    assert_eq!(vm_names(&r), ["pbx1"]);
    let pbx1 = &r["vms"][0];
    assert_eq!(pbx1["rpo_target_seconds"], 10.0);
    assert_eq!(pbx1["groups"], json!(["gold"]));
    let c = pbx1["compliance_percent"].as_f64().unwrap();
    assert!(c > 90.0 && c <= 100.0, "pbx1 is protected every 2 s: {c} %");
    assert!(pbx1["points"].as_u64().unwrap() >= 5, "{pbx1}");
    assert!(pbx1["worst_age_seconds"].as_f64().unwrap() < 30.0, "{pbx1}");
    let drills = r["drills"].as_array().unwrap();
    let drill = drills
        .iter()
        .find(|d| d["job"] == job)
        .unwrap_or_else(|| panic!("the drill is in acme's report: {r:#}"));
    assert_eq!(drill["scope"], "pbx1");
    assert_eq!(drill["result"], "passed");
    let rto = drill["rto_seconds"].as_f64().expect("a measured RTO");
    assert!(rto > 0.0 && rto < 180.0, "{rto}");
    assert_eq!(drill["vms"][0]["vm"], "pbx1");
    assert_eq!(drill["vms"][0]["site"], "site2");
    let incidents = r["incidents"].as_array().unwrap();
    assert!(!incidents.is_empty(), "the drill's incident: {r:#}");
    assert!(
        incidents.iter().all(|i| i["id"] != globex_incident),
        "{r:#}"
    );
    assert_eq!(r["totals"]["vms"], 1);
    assert_eq!(r["totals"]["drills_passed"], drills.len());
    assert_eq!(r["totals"]["worst_rto_seconds"].as_f64(), Some(rto));
    // The same month asked by name; a bad and a future month are 400.
    let month = r["month"].as_str().unwrap().to_string();
    assert_eq!(
        report(&lab, &acme, &format!("?month={month}"))["month"],
        month.as_str()
    );
    let (s, _, body) = get(&lab, &acme, "/api/v1/reports/monthly?month=2026-13");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("expected YYYY-MM"), "{body}");
    let (s, _, body) = get(&lab, &acme, "/api/v1/reports/monthly?month=2999-01");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("has not begun"), "{body}");
    // Another tenant's report does not exist for acme.
    let (s, _, body) = get(&lab, &acme, "/api/v1/reports/monthly?tenant=globex");
    assert_eq!(s, 404, "{body}");

    // globex: only its VM, one point long past its 3 s target.
    let g = report(&lab, &globex, "");
    eprintln!("globex's report: {g:#}");
    assert_eq!(vm_names(&g), ["other"]);
    let other = &g["vms"][0];
    assert_eq!(other["points"], 1);
    let c = other["compliance_percent"].as_f64().unwrap();
    assert!(c > 0.0 && c < 60.0, "one point, 3 s target: {c} %");
    assert!(other["missed_seconds"].as_f64().unwrap() > 1.0, "{other}");
    assert!(
        other["worst_age_seconds"].as_f64().unwrap() > 3.0,
        "{other}"
    );
    assert!(g["drills"].as_array().unwrap().is_empty(), "{g:#}");
    let gi: Vec<i64> = g["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(gi, [globex_incident], "{g:#}");

    // The operators: every VM, or one tenant's; an unknown tenant is 404.
    let all = report(&lab, &admin, "");
    assert_eq!(vm_names(&all), ["other", "pbx1"]);
    assert!(all["tenant"].is_null());
    assert_eq!(vm_names(&report(&lab, &admin, "?tenant=acme")), ["pbx1"]);
    let (s, _, body) = get(&lab, &admin, "/api/v1/reports/monthly?tenant=nosuch");
    assert_eq!(s, 404, "{body}");

    // CSV: a table per part, with its header and a row per VM / per VM
    // of each drill / per incident.
    let (s, kind, body) = get(&lab, &acme, "/api/v1/reports/monthly.csv");
    assert_eq!(s, 200, "{body}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let (header, rows) = csv_rows(&body);
    assert_eq!(
        header,
        "month,tenant,vm,groups,rpo_target_seconds,compliance_percent,measured_seconds,\
         missed_seconds,worst_age_seconds,points,last_point"
    );
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0][..3], [month.clone(), "acme".into(), "pbx1".into()]);
    let csv_c: f64 = rows[0][5].parse().unwrap();
    assert!(csv_c > 90.0, "{body}");
    let (_, _, body) = get(&lab, &acme, "/api/v1/reports/monthly.csv?part=drills");
    let (header, rows) = csv_rows(&body);
    assert!(
        header.ends_with(",vm,site,rto_seconds,data_age_seconds"),
        "{header}"
    );
    let row = rows
        .iter()
        .find(|r| r[2] == job.to_string())
        .unwrap_or_else(|| panic!("the drill's row: {body}"));
    assert_eq!(
        (row[6].as_str(), row[8].as_str()),
        ("passed", "pbx1"),
        "{body}"
    );
    assert!(row[10].parse::<f64>().unwrap() > 0.0, "{body}");
    let (_, _, body) = get(&lab, &globex, "/api/v1/reports/monthly.csv?part=incidents");
    assert!(body.contains("globex storage slow"), "{body}");
    let (s, _, body) = get(&lab, &acme, "/api/v1/reports/monthly.csv?part=points");
    assert_eq!(s, 400, "{body}");
    // The page as the operators see it: every VM, or one tenant's.
    let (s, _, html) = get(&lab, &admin, "/reports");
    assert_eq!(s, 200, "{html}");
    for row in [r#"data-report-vm="pbx1""#, r#"data-report-vm="other""#] {
        assert!(html.contains(row), "{row}: {html}");
    }
    // A link to each tenant's report of the month (`&` escaped).
    assert!(
        html.contains(&format!(
            r#"href="/reports?month={month}&#38;tenant=globex""#
        )),
        "{html}"
    );
    let (s, _, html) = get(&lab, &admin, "/reports?tenant=acme");
    assert_eq!(s, 200, "{html}");
    assert!(html.contains(r#"data-report-vm="pbx1""#), "{html}");
    assert!(!html.contains(r#"data-report-vm="other""#), "{html}");
    let (s, _, html) = get(&lab, &acme, "/reports?month=2026-13");
    assert_eq!(s, 400, "{html}");
    assert!(html.contains("expected YYYY-MM"), "{html}");
    eprintln!("report: API checks done after {:?}", started.elapsed());

    // The portal page in a real browser, as acme's viewer.
    add_user(&lab, "acme-viewer", "viewer", "acme", "report-e2e-secret");
    let (_, artifacts) = run_browser(
        &lab,
        "report",
        ("acme-viewer", "report-e2e-secret"),
        &[("REPORT_VM", "pbx1"), ("REPORT_HIDDEN_VM", "other")],
        Duration::from_secs(180),
    );
    assert!(artifacts.join("report-laptop.png").exists());
    eprintln!("report: done after {:?}", started.elapsed());
}
