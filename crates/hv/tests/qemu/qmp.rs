//! The QMP client against `-machine none`.

use std::process::Stdio;
use std::time::Duration;

use standby_hv::HvError;

use crate::common::*;

#[tokio::test]
async fn qmp_against_real_qemu() {
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("m.qmp");
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let qmp = connect_qmp(&sock).await;
    assert!(qmp.version()["qemu"]["major"].as_u64().unwrap() >= 7);
    let mut events = qmp.events();
    // Concurrent callers on one connection.
    let (a, b) = tokio::join!(
        qmp.query_status(),
        qmp.execute_raw("query-name", serde_json::Value::Null)
    );
    assert!(a.unwrap().running);
    assert!(b.unwrap().is_object());
    qmp.stop().await.unwrap();
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "paused"));
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.event, "STOP");
    qmp.cont().await.unwrap();
    assert!(qmp.query_status().await.unwrap().running);
    // A QMP error carries QEMU's class and description.
    match qmp
        .execute_raw(
            "block-dirty-bitmap-add",
            serde_json::json!({"node": "nope", "name": "b"}),
        )
        .await
    {
        Err(HvError::QmpCommand { class, desc, .. }) => {
            assert_eq!(class, "GenericError");
            assert!(desc.contains("nope"), "{desc}");
        }
        other => panic!("expected a qmp error, got {other:?}"),
    }
    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), qmp.closed())
        .await
        .unwrap();
    // RESUME from `cont`, then SHUTDOWN from `quit`.
    let mut seen = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        seen.push(ev.event.clone());
        if ev.event == "SHUTDOWN" {
            assert_eq!(ev.data["reason"], "host-qmp-quit");
            break;
        }
    }
    assert_eq!(seen, ["RESUME", "SHUTDOWN"]);
}
