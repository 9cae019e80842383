//! New certificates and CAs taken up by running processes.

use std::time::Duration;

use super::*;
use crate::{CHECK_INTERVAL, pki};

/// Requests on new connections every 50 ms until `stop`: the server
/// fingerprints seen, in order, and every failure.
fn keep_connecting(
    c: reqwest::Client,
    url: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut seen, mut errors) = (Vec::<String>::new(), Vec::new());
        while !stop.is_cancelled() {
            match get_text(&c, &url).await {
                Ok((status, fp, body)) if status == 200 => {
                    if seen.last() != Some(&fp) {
                        seen.push(fp);
                    }
                    let _ = body;
                }
                Ok((status, _, body)) => errors.push(format!("{status}: {body}")),
                Err(e) => errors.push(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (seen, errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_presented_within_a_second_without_errors() {
    let dir = pki_with(&[&agent("a"), &controller("ctl1")]);
    let server = serve(material(dir.path(), &agent("a"))).await;
    let me = material(dir.path(), &controller("ctl1"));
    let c = client(me.clone(), vec![agent("a")]);
    let old = server.material.fingerprint();
    let old_client = me.fingerprint();

    let stop = CancellationToken::new();
    let task = keep_connecting(c.clone(), server.url("/whoami"), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = pki::issue(dir.path(), &agent("a"), 30).unwrap().fingerprint;
    let new_client = pki::issue(dir.path(), &controller("ctl1"), 30)
        .unwrap()
        .fingerprint;
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(500)).await;
    stop.cancel();
    let (seen, errors) = task.await.unwrap();

    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(seen, vec![old, new.clone()]);
    assert_eq!(server.material.fingerprint(), new);
    // The client side reloaded too: the server sees its new certificate.
    let (_, _, body) = get_text(&c, &server.url("/whoami")).await.unwrap();
    assert_eq!(body, format!("ctl1.controller.standby {new_client}"));
    assert_ne!(new_client, old_client);
}

#[tokio::test]
async fn a_ca_rotation_trusts_both_cas_until_the_old_one_is_retired() {
    let dir = pki_with(&[&agent("a"), &controller("old")]);
    let server = serve(material(dir.path(), &agent("a"))).await;
    let old_ca = pki::status(dir.path()).unwrap().cas[0].fingerprint.clone();

    let rotated = pki::init_rotate(dir.path()).unwrap();
    assert_eq!(rotated.trusted, 2);
    assert_ne!(rotated.fingerprint, old_ca);
    pki::issue(dir.path(), &agent("a"), 30).unwrap();
    pki::issue(dir.path(), &controller("new"), 30).unwrap();
    server.material.refresh();
    let status = pki::status(dir.path()).unwrap();
    let a = status
        .leaves
        .iter()
        .find(|l| l.identity == Some(agent("a")))
        .unwrap();
    assert_eq!(a.issuer, Ok(rotated.fingerprint.clone()));

    // Both CAs trusted: a leaf of each gets in (and trusts the server,
    // now a leaf of the new CA).
    let old_leaf = client(material(dir.path(), &controller("old")), vec![agent("a")]);
    let new_leaf = client(material(dir.path(), &controller("new")), vec![agent("a")]);
    get_text(&old_leaf, &server.url("/whoami")).await.unwrap();
    get_text(&new_leaf, &server.url("/whoami")).await.unwrap();

    // Not while a leaf here is of the old CA…
    let e = pki::retire(dir.path(), false).unwrap_err().to_string();
    assert!(e.contains("controller-old.pem"), "{e}");
    // …unless forced (the old controller's certificate was left behind on
    // purpose: it must now be refused).
    let retired = pki::retire(dir.path(), true).unwrap();
    assert_eq!(retired.removed, vec![old_ca]);
    assert_eq!(retired.kept, rotated.fingerprint);
    server.material.refresh();

    let e = get_text(&old_leaf, &server.url("/whoami"))
        .await
        .unwrap_err();
    assert!(e.contains("UnknownCA") || e.contains("unknown CA"), "{e}");
    get_text(&new_leaf, &server.url("/whoami")).await.unwrap();
}

#[tokio::test]
async fn a_file_that_does_not_load_keeps_the_previous_material() {
    let dir = pki_with(&[&agent("a"), &controller("ctl1")]);
    let server = serve(material(dir.path(), &agent("a"))).await;
    let c = client(material(dir.path(), &controller("ctl1")), vec![agent("a")]);
    let good = server.material.fingerprint();
    let cert = pki::cert_path(dir.path(), &agent("a"));
    let key = pki::key_path(dir.path(), &agent("a"));

    // A corrupt certificate.
    let saved = std::fs::read(&cert).unwrap();
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    server.material.refresh();
    assert_eq!(server.material.fingerprint(), good);
    let (_, fp, _) = get_text(&c, &server.url("/whoami")).await.unwrap();
    assert_eq!(fp, good);

    // A key of another certificate.
    std::fs::write(&cert, &saved).unwrap();
    let other_key = std::fs::read(pki::key_path(dir.path(), &controller("ctl1"))).unwrap();
    std::fs::write(&key, other_key).unwrap();
    server.material.refresh();
    assert_eq!(server.material.fingerprint(), good);
    get_text(&c, &server.url("/whoami")).await.unwrap();

    // An empty trust bundle.
    let bundle = pki::bundle_path(dir.path());
    let cas = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, "").unwrap();
    server.material.refresh();
    assert_eq!(server.material.fingerprint(), good);
    get_text(&c, &server.url("/whoami")).await.unwrap();

    // Good files again: taken up.
    std::fs::write(&bundle, cas).unwrap();
    let new = pki::issue(dir.path(), &agent("a"), 30).unwrap().fingerprint;
    server.material.refresh();
    assert_eq!(server.material.fingerprint(), new);
    let (_, fp, _) = get_text(&c, &server.url("/whoami")).await.unwrap();
    assert_eq!(fp, new);
}
