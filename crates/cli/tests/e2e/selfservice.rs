//! Self-service: protection groups made, changed and deleted through the
//! API by a tenant's user (kept in the database beside the file's, kept
//! across a restart and a reload, exported as TOML), and in the portal
//! through a real browser, with the tenant's restore button.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions};
use crate::portal::{check_tools, root, run_browser};
use crate::report::{add_user, token};
use crate::watch::wait_until;

/// acme's second VM (in no group yet) and globex's VM with its group.
const EXTRA: &str = r#"
[vms.db1]
host = "site1-host1"
dr_site = "site2"
command = "sleep"
args = ["600"]
shutdown_timeout = "2s"
tenant = "acme"
[[vms.db1.disks]]
name = "data"
size = "1MiB"
"#;

fn call(
    lab: &Lab,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .request(method, format!("http://127.0.0.1:{}{path}", lab.api))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("controller answers");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}

fn group_names(lab: &Lab, token: &str) -> Vec<(String, bool)> {
    let (s, text) = call(lab, reqwest::Method::GET, "/api/v1/groups", token, None);
    assert_eq!(s, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["managed"] == true,
            )
        })
        .collect()
}

#[test]
fn ecosystem_self_service_groups_and_a_tenants_restore_in_the_portal() {
    let root = root();
    check_tools(&root);
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]\ntenant = \"acme\"".into()),
        extra: Box::leak(
            format!("{}{EXTRA}", crate::auth::TENANTS_AND_ANOTHER_VM).into_boxed_str(),
        ),
        ..LabOptions::default()
    });
    let (acme, globex, admin) = (token(&lab, "acme"), token(&lab, "globex"), lab.token());
    use reqwest::Method;

    // A tenant's user makes a group of its VM: in force at once.
    let bronze = json!({
        "members": ["db1"], "schedule": "every 2s", "datastores": ["site1-store"],
        "retention": {"keep_last": 3}, "rpo_target": "1m",
    });
    let (s, text) = call(
        &lab,
        Method::POST,
        "/api/v1/groups/bronze",
        &acme,
        Some(bronze.clone()),
    );
    assert_eq!(s, 200, "{text}");
    assert!(group_names(&lab, &acme).contains(&("bronze".into(), true)));
    assert!(
        !group_names(&lab, &globex)
            .iter()
            .any(|(n, _)| n == "bronze")
    );
    lab.json(&["vm", "start", "db1"]);
    wait_until("a scheduled point of db1", Duration::from_secs(30), || {
        let p = lab.json(&["points", "list", "db1"]);
        p.as_array().is_some_and(|a| !a.is_empty()).then_some(())
    });

    // What it may not do: another tenant's VM, another's group, the
    // file's group, a bad schedule, the same name twice.
    let other =
        json!({"members": ["other"], "schedule": "every 1h", "datastores": ["site2-store"]});
    let (s, text) = call(
        &lab,
        Method::POST,
        "/api/v1/groups/evil",
        &acme,
        Some(other),
    );
    assert_eq!(s, 404, "{text}");
    let (s, text) = call(
        &lab,
        Method::PUT,
        "/api/v1/groups/silver",
        &acme,
        Some(bronze.clone()),
    );
    assert_eq!(s, 404, "another tenant's group: {text}");
    let (s, text) = call(
        &lab,
        Method::PUT,
        "/api/v1/groups/gold",
        &admin,
        Some(bronze.clone()),
    );
    assert_eq!(s, 409, "{text}");
    assert!(
        text.contains("declared in the configuration file"),
        "{text}"
    );
    let bad =
        json!({"members": ["db1"], "schedule": "every banana", "datastores": ["site1-store"]});
    let (s, text) = call(&lab, Method::PUT, "/api/v1/groups/bronze", &acme, Some(bad));
    assert_eq!(s, 400, "{text}");
    let (s, text) = call(
        &lab,
        Method::POST,
        "/api/v1/groups/bronze",
        &acme,
        Some(bronze.clone()),
    );
    assert_eq!(s, 409, "{text}");

    // Exported as TOML; kept across a restart and a reload of the file.
    let out = lab.run(&["config", "export"]);
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        toml.contains("[groups.bronze]") && !toml.contains("[groups.gold]"),
        "{toml}"
    );
    assert!(toml.contains("every 2s"), "{toml}");
    let mut lab = lab;
    lab.stop_server();
    lab.start_server();
    let (s, text) = call(&lab, Method::GET, "/api/v1/groups/bronze", &acme, None);
    assert_eq!(s, 200, "{text}");
    let spec: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(spec["schedule"], "every 2s", "{spec}");
    assert_eq!(spec["managed"], true, "{spec}");
    let r = lab.json(&["config", "reload"]);
    assert_eq!(r["changes"], json!([]), "{r}");
    assert!(group_names(&lab, &admin).contains(&("bronze".into(), true)));

    // The portal: the tenant's user makes, changes and deletes a group and
    // restores a point of db1.
    lab.json(&["vm", "stop", "db1"]);
    wait_until("db1 stopped", Duration::from_secs(10), || {
        (lab.json(&["vm", "status", "db1"])["state"] == "stopped").then_some(())
    });
    add_user(
        &lab,
        "acme-op",
        "operator",
        "acme",
        "selfservice-e2e-secret",
    );
    run_browser(
        &lab,
        "selfservice",
        ("acme-op", "selfservice-e2e-secret"),
        &[("PORTAL_VM", "db1"), ("PORTAL_STORE", "site2-store")],
        Duration::from_secs(300),
    );
    // What the browser did, seen from the API: the group gone, the restore
    // a job of db1 that succeeded, db1 running.
    assert!(!group_names(&lab, &admin).iter().any(|(n, _)| n == "web"));
    let v = lab.json(&["vm", "status", "db1"]);
    assert_eq!(v["state"], "running", "{v}");

    // Deleted by the tenant: gone, its points kept; the log has each change.
    let (s, text) = call(&lab, Method::DELETE, "/api/v1/groups/bronze", &acme, None);
    assert_eq!(s, 204, "{text}");
    assert!(!group_names(&lab, &admin).iter().any(|(n, _)| n == "bronze"));
    let p = lab.json(&["points", "list", "db1"]);
    assert!(p.as_array().is_some_and(|a| !a.is_empty()), "{p}");
    let (s, text) = lab.get("/api/v1/events?source=api");
    assert_eq!(s, 200, "{text}");
    for kind in ["group.created", "group.deleted"] {
        assert!(text.contains(kind), "no {kind} event: {text}");
    }
    lab.json(&["vm", "stop", "db1"]);
}
