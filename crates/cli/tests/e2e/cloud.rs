//! Recovery from the cloud alone: points are copied to an encrypted
//! datastore on Azure Blob (Azurite) or S3 (moto); with both site
//! datastores gone, `standby restore --from cloud-store --site site2`
//! brings the VM back byte-identical.

use std::time::Duration;

use standby_testkit::objects::{AZURITE_KEY, Kind, Server};

use crate::harness::{Lab, LabOptions};
use crate::watch::wait_until;

fn cloud_store(kind: Kind, server: &Server) -> (String, Vec<(String, String)>) {
    let (store, env) = match kind {
        Kind::Azurite => (
            format!(
                r#"kind = "azure"
account = "devstoreaccount1"
container = "standby"
endpoint = "{}"
access_key_env = "E2E_AZURE_KEY""#,
                server.endpoint()
            ),
            vec![("E2E_AZURE_KEY".to_string(), AZURITE_KEY.to_string())],
        ),
        Kind::Moto => (
            format!(
                r#"kind = "s3"
bucket = "standby"
endpoint = "{}"
allow_http = true
access_key_id_env = "E2E_S3_ID"
secret_access_key_env = "E2E_S3_SECRET""#,
                server.endpoint()
            ),
            vec![
                ("E2E_S3_ID".to_string(), "testing".to_string()),
                ("E2E_S3_SECRET".to_string(), "testing".to_string()),
            ],
        ),
    };
    (
        format!(
            r#"
[sites.cloud]
description = "a public cloud region"
[datastores.cloud-store]
site = "cloud"
prefix = "e2e"
{store}
[datastores.cloud-store.encryption]
key_file = "cloud.key"
"#
        ),
        env,
    )
}

fn sha(path: &std::path::Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

fn restore_from_cloud_alone(kind: Kind) {
    let server = Server::start(kind);
    server.create_bucket("standby");
    let (extra, env) = cloud_store(kind, &server);
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut lab = Lab::new(LabOptions {
        watch: extra,
        env,
        files: vec![("cloud.key", key)],
        group_datastores: r#""site1-store", "site2-store", "cloud-store""#,
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..20);
    let before = lab.bindings();
    // A stopped VM gives a point equal to its disk, to compare bytes.
    lab.json(&["vm", "shutdown", "pbx1"]);
    lab.json(&["protect", "run", "gold"]);
    let points = lab.json(&["points", "list", "pbx1"]);
    let p = points.as_array().unwrap().last().unwrap().clone();
    let copies: Vec<&str> = p["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        copies.contains(&"cloud-store"),
        "copied to the cloud: {copies:?}"
    );
    let id = p["id"].as_str().unwrap().to_string();
    let disk = lab.path("site1/disks/pbx1/data.img");
    let want = sha(&disk);
    // A sampled verify of the cloud copy reads a fraction of it.
    let v = lab.json(&["store", "verify", "cloud-store", "--sample", "0.5"]);
    assert_eq!(v["sample_fraction"], 0.5);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");

    // Lose both sites' datastores (and site 1's disks).
    lab.stop_server();
    for dir in ["site1/store", "site2/store", "site1/disks"] {
        std::fs::remove_dir_all(lab.path(dir)).unwrap();
    }
    lab.start_server();
    let points = lab.json(&["points", "list", "pbx1"]);
    let p = points
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == id.as_str())
        .expect("the catalog finds the point in the cloud")
        .clone();
    assert_eq!(p["copies"], serde_json::json!(["cloud-store"]), "{p}");

    let r = lab.json(&["restore", &id, "--from", "cloud-store", "--site", "site2"]);
    assert_eq!(r["datastore"], "cloud-store", "{r}");
    let restored = lab.path("site2/disks/pbx1/data.img");
    assert_eq!(sha(&restored), want, "byte-identical from the cloud");
    lab.wait_sip();
    wait_until("the registrations", Duration::from_secs(10), || {
        (lab.bindings() == before).then_some(())
    });
}

#[test]
fn restore_from_azure_alone() {
    restore_from_cloud_alone(Kind::Azurite);
}

#[test]
fn restore_from_s3_alone() {
    restore_from_cloud_alone(Kind::Moto);
}

#[test]
fn wrong_cloud_key_is_a_clear_error() {
    let server = Server::start(Kind::Moto);
    server.create_bucket("standby");
    let (extra, env) = cloud_store(Kind::Moto, &server);
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut lab = Lab::new(LabOptions {
        watch: extra,
        env,
        files: vec![("cloud.key", key)],
        ..LabOptions::default()
    });
    let ok = lab.json(&["store", "list"]);
    let cloud = ok
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cloud-store")
        .unwrap()
        .clone();
    assert!(cloud["error"].is_null(), "{cloud}");
    assert!(
        cloud["path"]
            .as_str()
            .unwrap()
            .starts_with("s3://standby/e2e"),
        "{cloud}"
    );
    lab.stop_server();
    let other: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(lab.path("cloud.key"), other).unwrap();
    lab.start_server();
    let list = lab.json(&["store", "list"]);
    let cloud = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cloud-store")
        .unwrap()
        .clone();
    let err = cloud["error"].as_str().expect("the store does not open");
    assert!(err.contains("wrong key"), "{err}");
}
