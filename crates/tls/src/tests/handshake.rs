//! Who may connect, and who is accepted by a route.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::{Material, pki};

#[tokio::test]
async fn a_controller_reaches_an_agent_by_address_and_is_known_by_name() {
    let dir = pki_with(&[&agent("site1-agent"), &controller("ctl1")]);
    let server = serve(material(dir.path(), &agent("site1-agent"))).await;
    let me = material(dir.path(), &controller("ctl1"));
    let c = client(me.clone(), vec![agent("site1-agent")]);

    let (status, server_fp, body) = get_text(&c, &server.url("/whoami")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(server_fp, server.material.fingerprint());
    assert_eq!(
        body,
        format!("ctl1.controller.standby {}", me.fingerprint())
    );

    let (status, _, body) = get_text(&c, &server.url("/controller")).await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "ctl1.controller.standby")
    );
}

#[tokio::test]
async fn a_client_of_another_ca_or_without_a_certificate_is_refused_in_the_handshake() {
    let dir = pki_with(&[&agent("a"), &controller("ctl1")]);
    let other = pki_with(&[&controller("ctl1")]);
    let server = serve(material(dir.path(), &agent("a"))).await;

    // Trusts the server, presents a certificate of another CA.
    let stranger = Material::load(
        pki::bundle_path(dir.path()),
        pki::cert_path(other.path(), &controller("ctl1")),
        pki::key_path(other.path(), &controller("ctl1")),
    )
    .unwrap();
    let c = client(stranger, vec![agent("a")]);
    let e = get_text(&c, &server.url("/whoami")).await.unwrap_err();
    assert!(e.contains("UnknownCA") || e.contains("unknown CA"), "{e}");

    // Trusts the server, presents nothing.
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki::bundle_path(dir.path())).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let anonymous = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(cfg)
        .resolve("a.agent.standby", server.addr)
        .build()
        .unwrap();
    let url = format!("https://a.agent.standby:{}/whoami", server.addr.port());
    let e = get_text(&anonymous, &url).await.unwrap_err();
    assert!(e.contains("CertificateRequired"), "{e}");

    // The same client with the right certificate gets in.
    let c = client(material(dir.path(), &controller("ctl1")), vec![agent("a")]);
    get_text(&c, &server.url("/whoami")).await.unwrap();
}

#[tokio::test]
async fn a_certificate_of_the_wrong_role_is_refused_by_the_route() {
    let dir = pki_with(&[&agent("a"), &peer("x"), &agent("x"), &controller("ctl2")]);
    let server = serve(material(dir.path(), &agent("a"))).await;

    for (who, refusal) in [
        (
            peer("x"),
            "client certificate is a peer certificate of agent 'x', this route needs a controller certificate",
        ),
        (
            agent("x"),
            "client certificate is an agent certificate of 'x', this route needs a controller certificate",
        ),
        (
            controller("ctl2"),
            "client certificate is a controller certificate of 'ctl2', it is not valid for any of: ctl1.controller.standby",
        ),
    ] {
        let c = client(material(dir.path(), &who), vec![agent("a")]);
        // The handshake succeeds: the route says no.
        let (status, _, body) = get_text(&c, &server.url("/whoami")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(&who.dns_name()), "{body}");
        let (status, _, body) = get_text(&c, &server.url("/controller")).await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (403, refusal));
    }
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_the_one_it_expects() {
    let dir = pki_with(&[&agent("a"), &agent("b"), &peer("a"), &controller("ctl1")]);
    let me = material(dir.path(), &controller("ctl1"));
    let c = client(me, vec![agent("a")]);

    let b = serve(material(dir.path(), &agent("b"))).await;
    let e = get_text(&c, &b.url("/whoami")).await.unwrap_err();
    assert!(
        e.contains(
            "server certificate is an agent certificate of 'b', expected one of: a.agent.standby"
        ),
        "{e}"
    );
    // The peer certificate of the right agent is not its agent certificate.
    let pa = serve(material(dir.path(), &peer("a"))).await;
    let e = get_text(&c, &pa.url("/whoami")).await.unwrap_err();
    assert!(e.contains("a peer certificate of agent 'a'"), "{e}");

    // Any of several expected identities will do.
    let c = client(
        material(dir.path(), &controller("ctl1")),
        vec![agent("a"), agent("b")],
    );
    get_text(&c, &b.url("/whoami")).await.unwrap();

    // A server of another CA, even with the expected name, is refused.
    let other = pki_with(&[&agent("a")]);
    let fake = serve(material(other.path(), &agent("a"))).await;
    let c = client(material(dir.path(), &controller("ctl1")), vec![agent("a")]);
    let e = get_text(&c, &fake.url("/whoami")).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_client_expects_someone() {
    let dir = pki_with(&[&controller("ctl1")]);
    let e = crate::client_config(material(dir.path(), &controller("ctl1")), vec![]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a client needs at least one expected server identity"
    );
}

#[tokio::test]
async fn plain_http_is_not_a_way_around_tls() {
    let dir = pki_with(&[&controller("ctl1")]);
    let c = client(material(dir.path(), &controller("ctl1")), vec![agent("a")]);
    let e = get_text(&c, "http://127.0.0.1:9/").await.unwrap_err();
    assert!(e.contains("URL scheme is not allowed"), "{e}");
}
