//! The PKI directory's files.

use std::os::unix::fs::PermissionsExt;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::{Error, pki};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_makes_a_ca_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let ca = pki::init(&pki_dir).unwrap();
    assert_eq!(ca.bundle, pki_dir.join("ca.pem"));
    assert_eq!(mode(&ca.key), 0o600);
    assert_eq!(ca.trusted, 1);
    let status = pki::status(&pki_dir).unwrap();
    assert_eq!(status.cas.len(), 1);
    assert!(status.cas[0].current);
    assert_eq!(status.cas[0].fingerprint, ca.fingerprint);
    let years = status.cas[0]
        .not_after
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / (365 * 86400);
    assert_eq!(years, 9); // ten years less a day or two of leap years

    let e = pki::init(&pki_dir).unwrap_err();
    assert!(matches!(e, Error::CaExists { .. }), "{e}");
    assert!(e.to_string().contains("ca.key"), "{e}");
}

#[test]
fn a_leaf_is_its_certificate_then_its_ca() {
    let dir = pki_with(&[]);
    let issued = pki::issue(dir.path(), &agent("site1-agent"), 7).unwrap();
    assert_eq!(issued.cert, dir.path().join("agent-site1-agent.pem"));
    assert_eq!(issued.key, dir.path().join("agent-site1-agent.key"));
    assert_eq!(mode(&issued.key), 0o600);
    assert_eq!(mode(&issued.cert), 0o644);

    let chain: Vec<_> = CertificateDer::pem_file_iter(&issued.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let cas: Vec<_> = CertificateDer::pem_file_iter(dir.path().join("ca.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], cas[0]);
    assert_eq!(pki::fingerprint(&chain[0]), issued.fingerprint);
    assert!(crate::presents(&chain, &agent("site1-agent")));
    assert_eq!(
        crate::role_of(&chain, "site1-agent"),
        Some(crate::Role::Agent)
    );

    let status = pki::status(dir.path()).unwrap();
    let [leaf] = status.leaves.as_slice() else {
        panic!("{status:?}");
    };
    assert_eq!(leaf.identity, Some(agent("site1-agent")));
    assert_eq!(leaf.issuer, Ok(status.cas[0].fingerprint.clone()));
    let days = leaf
        .not_after
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86400;
    assert_eq!(days, 6);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn without_a_ca_nothing_is_issued_or_rotated() {
    let dir = tempfile::tempdir().unwrap();
    for e in [
        pki::issue(dir.path(), &agent("a"), 1).unwrap_err(),
        pki::init_rotate(dir.path()).unwrap_err(),
        pki::retire(dir.path(), false).unwrap_err(),
    ] {
        assert!(matches!(e, Error::NoCa { .. }), "{e}");
        assert!(e.to_string().starts_with("no CA key at"), "{e}");
    }
    let e = pki::issue(
        dir.path(),
        &Identity {
            role: crate::Role::Agent,
            name: "a.b".into(),
        },
        1,
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadName { .. }), "{e}");
}

#[test]
fn a_rotation_appends_and_retire_keeps_only_the_current_ca() {
    let dir = pki_with(&[&agent("a")]);
    let first = pki::status(dir.path()).unwrap().cas[0].fingerprint.clone();
    let second = pki::init_rotate(dir.path()).unwrap();
    let status = pki::status(dir.path()).unwrap();
    let cas: Vec<_> = status
        .cas
        .iter()
        .map(|c| (c.fingerprint.clone(), c.current))
        .collect();
    assert_eq!(
        cas,
        vec![(first.clone(), false), (second.fingerprint.clone(), true)]
    );
    // The old leaf still chains to the old CA.
    assert_eq!(status.leaves[0].issuer, Ok(first.clone()));

    let e = pki::retire(dir.path(), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not retiring: agent-a.pem not issued by the current CA (reissue first)"
    );
    pki::issue(dir.path(), &agent("a"), 1).unwrap();
    let retired = pki::retire(dir.path(), false).unwrap();
    assert_eq!(
        (retired.kept, retired.removed),
        (second.fingerprint.clone(), vec![first])
    );
    let status = pki::status(dir.path()).unwrap();
    assert_eq!(status.cas.len(), 1);
    assert!(status.cas[0].current);
    assert_eq!(status.leaves[0].issuer, Ok(second.fingerprint));
}

#[test]
fn status_tells_a_leaf_of_a_retired_ca() {
    let dir = pki_with(&[&agent("a"), &peer("a")]);
    pki::init_rotate(dir.path()).unwrap();
    pki::issue(dir.path(), &agent("a"), 1).unwrap();
    pki::retire(dir.path(), true).unwrap();
    let status = pki::status(dir.path()).unwrap();
    let issuers: Vec<_> = status
        .leaves
        .iter()
        .map(|l| (l.identity.clone().unwrap(), l.issuer.is_ok()))
        .collect();
    assert_eq!(issuers, vec![(agent("a"), true), (peer("a"), false)]);
    assert_eq!(
        status.leaves[1].issuer,
        Err("issued by no CA of the bundle".to_string())
    );
}
