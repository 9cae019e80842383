//! Authentication and authorization, against a running controller: every
//! route of the route table without credentials and with a role one too
//! low; tokens that expired or were revoked; the portal's password login,
//! its cookie and CSRF; agents' secrets; HTTPS; `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use standby_server::auth::{Access, Role};
use standby_server::openapi::{access, route_table};

use crate::harness::{Lab, LabOptions, STANDBY, free_port};

const TENANTS: &str = r#"
[tenants.acme]
[tenants.globex]
"#;

/// The tenants and a second protected VM at site 1 with a DR site,
/// globex's, which a drill of acme's pbx1 must leave alone.
pub(crate) const TENANTS_AND_ANOTHER_VM: &str = r#"
[tenants.acme]
[tenants.globex]
[vms.other]
host = "site1-host1"
dr_site = "site2"
command = "sleep"
args = ["600"]
tenant = "globex"
[groups.silver]
members = ["other"]
schedule = "0 0 1 1 *"
datastores = ["site1-store"]
tenant = "globex"
"#;

pub(crate) struct Http {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) c: reqwest::Client,
    pub(crate) base: String,
}

impl Http {
    pub(crate) fn new(base: String) -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            c: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base,
        }
    }

    /// (status, headers, body) of `method path` with optional bearer
    /// token, extra headers and JSON body.
    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        self.rt.block_on(async {
            let mut r = self.c.request(method, format!("{}{path}", self.base));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await.expect("controller answers");
            let status = resp.status().as_u16();
            let h = resp.headers().clone();
            // An event stream never ends: the status is enough.
            let text = if h
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or("").contains("event-stream"))
            {
                String::new()
            } else {
                resp.text().await.unwrap_or_default()
            };
            (status, h, text)
        })
    }

    fn status(&self, method: Method, path: &str, token: Option<&str>) -> u16 {
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        self.call(method, path, token, &[], body).0
    }
}

pub(crate) fn tenant_lab(watch: String, controller: String) -> Lab {
    Lab::new(LabOptions {
        // pbx1 belongs to tenant acme.
        vm: Some("command = \"sleep\"\nargs = [\"600\"]\ntenant = \"acme\"".into()),
        extra: TENANTS,
        watch,
        controller,
        ..LabOptions::default()
    })
}

/// A new token's secret.
fn token(lab: &Lab, role: &str, tenant: Option<&str>, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", "e2e", "--role", role];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    args.extend_from_slice(extra);
    let t = lab.json(&args);
    t["secret"].as_str().unwrap().to_string()
}

pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

/// An urlencoded form (letters, digits, spaces and '/' only).
pub(crate) fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "+").replace('/', "%2F")))
        .collect::<Vec<_>>()
        .join("&")
}

/// `standby user add` with the password on standard input.
pub(crate) fn add_user(lab: &Lab, name: &str, role: &str, password: &str, env: &[(&str, String)]) {
    let mut add = Command::new(STANDBY)
        .args(["--config", lab.cfg.to_str().unwrap()])
        .args(["user", "add", name, "--role", role, "--password-stdin"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A concrete path for a route template (every parameter filled in).
fn fill(template: &str, value: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { value } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn lower(role: Role) -> Option<Role> {
    match role {
        Role::Viewer => None,
        Role::Operator => Some(Role::Viewer),
        Role::Admin => Some(Role::Operator),
    }
}

/// `HEAD` of a route is authorised exactly as its `GET`: a role too low
/// for the `GET` is refused the `HEAD` too (its headers, such as
/// `x-total-count`, would tell what the body may not), and a public `GET`
/// is a public `HEAD`.
#[test]
fn hardening_head_is_authorised_exactly_as_get() {
    let lab = tenant_lab(String::new(), String::new());
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let tokens = [
        (Role::Viewer, token(&lab, "viewer", None, &[])),
        (Role::Operator, token(&lab, "operator", None, &[])),
        (Role::Admin, lab.token()),
    ];
    let of = |r: Role| tokens.iter().find(|(x, _)| *x == r).unwrap().1.as_str();
    let mut above_viewer = 0;
    for (m, template) in route_table().iter().filter(|(m, _)| m == "GET") {
        let path = fill(template, "no-such-object");
        let (get, head) = (Method::GET, Method::HEAD);
        assert_eq!(
            access(&head, Some(template), &path),
            access(&get, Some(template), &path),
            "{m} {template}"
        );
        match access(&get, Some(template), &path) {
            Access::Public => assert_ne!(http.status(head, &path, None), 401, "HEAD {template}"),
            Access::Agent => {}
            Access::Role(role) => {
                assert_eq!(
                    http.status(head.clone(), &path, None),
                    401,
                    "HEAD {template}"
                );
                if let Some(low) = lower(role) {
                    above_viewer += 1;
                    let s = http.status(head.clone(), &path, Some(of(low)));
                    assert_eq!(s, 403, "HEAD {template} as {low:?}");
                }
                let s = http.status(head, &path, Some(of(role)));
                assert!(s != 401 && s != 403, "HEAD {template} as {role:?}: {s}");
            }
        }
    }
    // /config, /tokens and /users (admin) at least.
    assert!(
        above_viewer >= 3,
        "{above_viewer} GET routes above viewer checked"
    );
}

#[test]
fn every_route_refuses_no_token_and_a_role_one_too_low() {
    let lab = tenant_lab(
        "[agents.probe-agent]\nsite = \"site1\"\n".into(),
        String::new(),
    );
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let tokens = [
        (Role::Viewer, token(&lab, "viewer", None, &[])),
        (Role::Operator, token(&lab, "operator", None, &[])),
        (Role::Admin, lab.token()),
    ];
    let of = |r: Role| tokens.iter().find(|(x, _)| *x == r).unwrap().1.as_str();
    let table = route_table();
    assert!(table.len() > 50, "the route table lists every operation");
    let mut checked = 0;
    for (m, template) in &table {
        let method: Method = m.parse().unwrap();
        let path = fill(template, "no-such-object");
        match access(&method, Some(template.as_str()), &path) {
            Access::Public => {
                // Public routes answer without a token (whatever the
                // handler thinks of the request).
                let s = http.status(method.clone(), &path, None);
                assert_ne!(s, 401, "{m} {template} is public");
            }
            Access::Agent => {
                let (s, h, _) = http.call(method.clone(), &path, None, &[], Some(json!({})));
                assert_eq!(s, 401, "{m} {template} without the agent's token");
                assert_eq!(h["www-authenticate"], "Bearer");
                // An admin's token is not the agent's.
                let s = http.status(method.clone(), &path, Some(of(Role::Admin)));
                assert_eq!(s, 401, "{m} {template} with a user token");
            }
            Access::Role(role) => {
                let (s, h, body) = http.call(method.clone(), &path, None, &[], None);
                assert_eq!(s, 401, "{m} {template} without a token: {body}");
                assert_eq!(h["www-authenticate"], "Bearer", "{m} {template}");
                let v: Value = serde_json::from_str(&body).expect("a JSON error");
                assert_eq!(v["code"], "unauthorized");
                let s = http.status(method.clone(), &path, Some("sbt_not-a-token"));
                assert_eq!(s, 401, "{m} {template} with a bad token");
                if let Some(low) = lower(role) {
                    let (s, _, body) =
                        http.call(method.clone(), &path, Some(of(low)), &[], Some(json!({})));
                    assert_eq!(s, 403, "{m} {template} as {low:?}: {body}");
                    assert!(body.contains("forbidden"), "{body}");
                }
                // The role it needs gets past authorization (the object
                // does not exist, or the body is empty: 4xx, not 401/403).
                let s = http.status(method.clone(), &path, Some(of(role)));
                assert!(
                    s != 401 && s != 403,
                    "{m} {template} as {role:?} is allowed, got {s}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "{checked} authenticated routes checked");
    // The policy itself, pinned on a few routes.
    for (m, t, role) in [
        ("GET", "/api/v1/vms", Role::Viewer),
        ("POST", "/api/v1/vms/{name}/start", Role::Operator),
        ("POST", "/api/v1/sites/{name}/fence", Role::Admin),
        ("POST", "/api/v1/tokens", Role::Admin),
        ("GET", "/metrics", Role::Viewer),
    ] {
        assert_eq!(
            access(&m.parse().unwrap(), Some(t), t),
            Access::Role(role),
            "{m} {t}"
        );
    }
    // An unknown path does not tell whether it exists.
    assert_eq!(http.status(Method::GET, "/api/v1/nothing", None), 401);
    assert_eq!(
        http.status(Method::GET, "/api/v1/nothing", Some(of(Role::Viewer))),
        404
    );
}

#[test]
fn expired_and_revoked_tokens_are_refused_and_no_secret_is_stored() {
    let metrics_port = free_port();
    let mut lab = tenant_lab(
        String::new(),
        format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    // The bootstrap token is the CLI's default and an operators' admin.
    let me = lab.json(&["whoami"]);
    assert_eq!(me["role"], "admin");
    assert!(me["tenant"].is_null());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(lab.path("controller/admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin.token is readable by root only");

    let short = token(&lab, "viewer", None, &["--expires-in", "1s"]);
    assert_eq!(http.status(Method::GET, "/api/v1/vms", Some(&short)), 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http.status(Method::GET, "/api/v1/vms", Some(&short)), 401);

    let created = lab.json(&["token", "create", "--name", "ci", "--role", "operator"]);
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap();
    assert_eq!(http.status(Method::GET, "/api/v1/vms", Some(&secret)), 200);
    lab.json(&["token", "revoke", id]);
    assert_eq!(http.status(Method::GET, "/api/v1/vms", Some(&secret)), 401);
    let list = lab.json(&["token", "list"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert!(row["revoked"].is_string());
    assert!(row["last_used"].is_string());
    assert!(
        !list.to_string().contains("sbt_"),
        "a listing shows no secret: {list}"
    );

    // A tenant's admin mints for its own tenant only.
    let acme_admin = token(&lab, "admin", Some("acme"), &[]);
    let (s, _, _) = http.call(
        Method::POST,
        "/api/v1/tokens",
        Some(&acme_admin),
        &[],
        Some(json!({"name": "x", "role": "viewer", "tenant": "globex"})),
    );
    assert_eq!(s, 403);
    let (s, _, body) = http.call(
        Method::POST,
        "/api/v1/tokens",
        Some(&acme_admin),
        &[],
        Some(json!({"name": "x", "role": "viewer"})),
    );
    assert_eq!(s, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["tenant"], "acme");
    // ... and sees no other tenant's tokens.
    let (_, _, body) = http.call(Method::GET, "/api/v1/tokens", Some(&acme_admin), &[], None);
    let seen: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(seen.iter().all(|t| t["tenant"] == "acme"), "{body}");

    // The list comes a page at a time, with the number of matches.
    let all = lab.json(&["token", "list"]).as_array().unwrap().len();
    assert!(all >= 3, "{all}");
    let page = |q: &str| {
        let (s, h, body) = http.call(
            Method::GET,
            &format!("/api/v1/tokens?{q}"),
            Some(&lab.token()),
            &[],
            None,
        );
        assert_eq!(s, 200, "{body}");
        let items: Vec<Value> = serde_json::from_str(&body).unwrap();
        (
            items,
            h["x-total-count"]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        )
    };
    let (first, total) = page("limit=2");
    assert_eq!((first.len(), total), (2, all));
    let (rest, _) = page(&format!("limit=2&offset={}", all - 1));
    assert_eq!(rest.len(), 1);
    assert_ne!(first[0]["id"], rest[0]["id"]);
    let (s, _, body) = http.call(
        Method::GET,
        "/api/v1/users?limit=100000",
        Some(&lab.token()),
        &[],
        None,
    );
    assert!(s == 400 && body.contains("out of range"), "{s} {body}");

    // No secret reaches the database files.
    lab.stop_server();
    let mut db = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        db.extend(std::fs::read(lab.path(&format!("controller/{f}"))).unwrap_or_default());
    }
    assert!(db.len() > 4096);
    let contains = |s: &str| db.windows(s.len()).any(|w| w == s.as_bytes());
    for s in [&secret, &short, &acme_admin, &lab.token()] {
        assert!(!contains(s), "a token secret is in the database");
    }
    lab.start_server();
    // A new client: the old one's pooled connection went with the server.
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));

    // /metrics: a viewer token on the API address, nothing on its own.
    let viewer = token(&lab, "viewer", None, &[]);
    assert_eq!(http.status(Method::GET, "/metrics", None), 401);
    assert_eq!(http.status(Method::GET, "/metrics", Some(&viewer)), 200);
    let open = Http::new(format!("http://127.0.0.1:{metrics_port}"));
    let (s, _, body) = open.call(Method::GET, "/metrics", None, &[], None);
    assert_eq!(s, 200);
    assert!(body.contains("# EOF"), "{body}");
}

#[test]
fn a_password_login_sets_a_cookie_that_works_and_writes_need_its_csrf_token() {
    let lab = tenant_lab(String::new(), String::new());
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    add_user(&lab, "ann", "operator", "correct horse battery", &[]);
    let users = lab.json(&["user", "list"]);
    assert_eq!(users[0]["name"], "ann");
    assert!(users[0].get("password_hash").is_none(), "{users}");

    let form = |user: &str, pw: &str| {
        http.rt.block_on(async {
            http.c
                .post(format!("{}/login", http.base))
                .header("content-type", FORM)
                .body(form_body(&[
                    ("username", user),
                    ("password", pw),
                    ("next", "/vms"),
                ]))
                .send()
                .await
                .unwrap()
        })
    };
    // A wrong password goes back to the login page.
    let r = form("ann", "wrong password");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?error=1&next=%2Fvms");
    assert!(r.headers().get("set-cookie").is_none());
    let r = form("nobody", "correct horse battery");
    assert_eq!(r.status(), 303);
    assert!(r.headers().get("set-cookie").is_none());

    let r = form("ann", "correct horse battery");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/vms");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["standby_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "no TLS: no Secure: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let (s, _, body) = http.call(
        Method::GET,
        "/api/v1/whoami",
        None,
        &[("cookie", &cookie)],
        None,
    );
    assert_eq!(s, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("ann"), Some("operator"))
    );
    let csrf = me["csrf"].as_str().unwrap().to_string();
    // A write with the cookie but without the CSRF token is refused...
    let body = Some(json!({"reason": "e2e"}));
    let path = "/api/v1/incidents";
    let (s, _, _) = http.call(
        Method::POST,
        path,
        None,
        &[("cookie", &cookie)],
        body.clone(),
    );
    assert_eq!(s, 403);
    let (s, _, _) = http.call(
        Method::POST,
        path,
        None,
        &[("cookie", &cookie), ("x-csrf-token", "0000")],
        body.clone(),
    );
    assert_eq!(s, 403);
    // ... and passes with it.
    let (s, _, _) = http.call(
        Method::POST,
        path,
        None,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        body,
    );
    assert!(s != 401 && s != 403, "{s}");
    // A browser without a session is sent to the login page.
    let (s, h, _) = http.call(Method::GET, "/vms", None, &[("accept", "text/html")], None);
    assert_eq!(s, 303);
    assert_eq!(h["location"], "/login?next=%2Fvms");
    // After logout the cookie is dead.
    let (s, h, _) = http.call(Method::POST, "/logout", None, &[("cookie", &cookie)], None);
    assert_eq!(s, 303);
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (s, _, _) = http.call(
        Method::GET,
        "/api/v1/whoami",
        None,
        &[("cookie", &cookie)],
        None,
    );
    assert_eq!(s, 401);
}

#[test]
fn an_agent_needs_its_own_token() {
    let lab = tenant_lab(
        "[agents.probe-agent]\nsite = \"site1\"\n[agents.other-agent]\nsite = \"site2\"\n".into(),
        String::new(),
    );
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let path = "/api/v1/agents/probe-agent/heartbeat";
    let hb = Some(json!({"version": "e2e"}));
    let (s, _, _) = http.call(Method::POST, path, None, &[], hb.clone());
    assert_eq!(s, 401);
    let other = lab.agent_token("other-agent");
    let (s, _, _) = http.call(Method::POST, path, Some(&other), &[], hb.clone());
    assert_eq!(s, 401, "another agent's token");
    let mine = lab.agent_token("probe-agent");
    let (s, _, body) = http.call(Method::POST, path, Some(&mine), &[], hb);
    assert_eq!(s, 200, "{body}");
    // A real agent process, with the configuration, gets its heartbeat in.
    let mut agent = Command::new(STANDBY)
        .args(["--config", lab.cfg.to_str().unwrap()])
        .args(["agent", "--name", "other-agent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let seen = loop {
        let (_, body) = lab.get("/api/v1/agents");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let up = v
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["name"] == "other-agent" && a["seen"]["version"] == "0.1.0");
        if up || std::time::Instant::now() > deadline {
            break up;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        seen,
        "the agent's heartbeats were accepted: {}",
        lab.get("/api/v1/agents").1
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, by `openssl`.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=standby e2e CA",
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn the_controller_serves_https_with_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let read = |f: &str| std::fs::read_to_string(certs.path().join(f)).unwrap();
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        controller: "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"".into(),
        files: vec![("cert.pem", read("cert.pem")), ("key.pem", read("key.pem"))],
        env: vec![(
            "STANDBY_CA_CERT".into(),
            certs.path().join("ca.pem").to_string_lossy().into_owned(),
        )],
        ..LabOptions::default()
    });
    // The CLI speaks HTTPS to it (trusting the CA from STANDBY_CA_CERT).
    let vms = lab.json(&["vm", "list"]);
    assert_eq!(vms[0]["name"], "pbx1");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(read("ca.pem").as_bytes()).unwrap();
    let (tls, plain, untrusted) = rt.block_on(async {
        let url = format!("https://127.0.0.1:{}/api/v1/health", lab.api);
        let tls = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16());
        // Plain HTTP to the TLS port gets no answer.
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/api/v1/health", lab.api))
            .send()
            .await
            .map(|r| r.status().as_u16());
        // A client that does not trust the CA refuses the certificate.
        let untrusted = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        (tls, plain, untrusted.is_err())
    });
    assert_eq!(tls.unwrap(), 200);
    assert!(plain.is_err(), "{plain:?}");
    assert!(untrusted);
    // Over TLS the session cookie is Secure.
    let ca_env = [(
        "STANDBY_CA_CERT",
        certs.path().join("ca.pem").to_string_lossy().into_owned(),
    )];
    add_user(&lab, "ann", "viewer", "correct horse battery", &ca_env);
    let set = rt.block_on(async {
        let ca = reqwest::Certificate::from_pem(read("ca.pem").as_bytes()).unwrap();
        let r = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("https://127.0.0.1:{}/login", lab.api))
            .header("content-type", FORM)
            .body(form_body(&[
                ("username", "ann"),
                ("password", "correct horse battery"),
            ]))
            .send()
            .await
            .unwrap();
        r.headers()["set-cookie"].to_str().unwrap().to_string()
    });
    assert!(set.contains("; Secure"), "{set}");
}

#[test]
fn another_tenants_object_is_not_found() {
    let lab = tenant_lab(String::new(), String::new());
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let acme = token(&lab, "operator", Some("acme"), &[]);
    let globex = token(&lab, "operator", Some("globex"), &[]);
    let mut checked = 0;
    // Every operation on one VM, from the route table: another tenant's
    // operator is told it does not exist (reads and actions alike).
    for (m, template) in route_table() {
        if !template.starts_with("/api/v1/vms/{name}") {
            continue;
        }
        let path = fill(&template, "pbx1");
        let method: Method = m.parse().unwrap();
        let (s, _, body) = http.call(method.clone(), &path, Some(&globex), &[], Some(json!({})));
        assert_eq!(s, 404, "{m} {template} as another tenant: {body}");
        if m == "GET" {
            let s = http.status(method, &path, Some(&acme));
            assert!(![401, 403, 404].contains(&s), "{m} {template}: {s}");
        }
        checked += 1;
    }
    assert!(checked >= 4, "{checked} VM operations checked");
    // Lists narrow to the caller's tenant.
    let names = |tok: &str| -> Vec<String> {
        let (s, _, body) = http.call(Method::GET, "/api/v1/vms", Some(tok), &[], None);
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&acme), vec!["pbx1".to_string()]);
    assert!(names(&globex).is_empty(), "{:?}", names(&globex));
}

/// A protection run requested through the API (a job of the `protect`
/// runbook) is its group's tenant's: they start it and see the job and
/// its steps; another tenant is told neither the group nor the job exists.
#[test]
fn a_tenants_protection_run_is_theirs_alone() {
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]\ntenant = \"acme\"".into()),
        extra: TENANTS_AND_ANOTHER_VM,
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "other"]);
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let acme = token(&lab, "operator", Some("acme"), &[]);
    let globex = token(&lab, "operator", Some("globex"), &[]);
    let run = "/api/v1/groups/silver/run";
    let (s, _, body) = http.call(Method::POST, run, Some(&acme), &[], Some(json!({})));
    assert_eq!(s, 404, "{body}");
    let (s, _, body) = http.call(Method::POST, run, Some(&globex), &[], Some(json!({})));
    assert_eq!(s, 200, "{body}");
    let job = serde_json::from_str::<Value>(&body).unwrap()["job"]
        .as_i64()
        .expect("a job id");
    for path in [
        format!("/api/v1/jobs/{job}"),
        format!("/api/v1/jobs/{job}/steps"),
    ] {
        assert_eq!(
            http.status(Method::GET, &path, Some(&globex)),
            200,
            "{path}"
        );
        assert_eq!(http.status(Method::GET, &path, Some(&acme)), 404, "{path}");
    }
    let listed = |tok: &str| -> bool {
        let (s, _, body) = http.call(Method::GET, "/api/v1/jobs", Some(tok), &[], None);
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array().unwrap().iter().any(|j| j["id"] == job)
    };
    assert!(listed(&globex), "globex does not see its run");
    assert!(!listed(&acme), "acme sees globex's run");
}

/// A tenant's operator drills a VM of theirs (the shipped `drill` with
/// `params.vm`) and gets a report of exactly that VM; another tenant is
/// told the VM does not exist; a drill of neither a site nor a VM, or of
/// both, is refused before anything runs, naming the parameters.
#[test]
fn a_tenant_drills_a_vm_of_theirs_and_no_other() {
    let (sip, http_port, front) = (free_port(), free_port(), free_port());
    let lab = Lab::new(LabOptions {
        vm: Some(format!(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}", "--http", "127.0.0.1:{http_port}"]
tenant = "acme""#
        )),
        extra: TENANTS_AND_ANOTHER_VM,
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
    lab.json(&["protect", "run", "gold"]);
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    let acme = token(&lab, "operator", Some("acme"), &[]);
    let globex = token(&lab, "operator", Some("globex"), &[]);
    let admin = lab.token();
    let run = |tok: &str, params: Value| {
        let (s, _, body) = http.call(
            Method::POST,
            "/api/v1/runbooks/drill/run",
            Some(tok),
            &[],
            Some(json!({ "params": params })),
        );
        (
            s,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };

    // The VM page offers the drill of that VM to the tenant's operator.
    let (s, _, page) = http.call(
        Method::GET,
        "/portal/fragments/vms/pbx1",
        Some(&acme),
        &[],
        None,
    );
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains(
            r#"data-post="/api/v1/runbooks/drill/run" data-body='{"params":{"vm":"pbx1"}}'"#
        ),
        "{page}"
    );
    assert!(!page.contains("Drill site"), "{page}");

    // Refused before anything runs, naming what is missing.
    let (s, v) = run(&acme, json!({}));
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("params.vm"), "{v}");
    for (params, why) in [
        (json!({}), "neither"),
        (json!({"site": "site1", "vm": "pbx1"}), "both"),
    ] {
        let (s, v) = run(&admin, params);
        assert_eq!(s, 400, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("exactly one of params.site")
                && msg.contains("params.vm")
                && msg.ends_with(&format!("not {why}")),
            "{msg}"
        );
    }
    // Another tenant's VM does not exist for them.
    let (s, v) = run(&globex, json!({"vm": "pbx1"}));
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "not_found", "{v}");

    let (s, v) = run(&acme, json!({"vm": "pbx1"}));
    assert_eq!(s, 200, "{v}");
    let job = v["job"].as_i64().expect("a job id");
    let steps_path = format!("/api/v1/jobs/{job}/steps");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let done = loop {
        let (s, _, body) = http.call(Method::GET, &steps_path, Some(&acme), &[], None);
        assert_eq!(s, 200, "the tenant sees the job of its drill: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drill did not finish: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(done["job"]["status"], "succeeded", "{done:#}");
    assert_eq!(done["lock"], "drill:vm:pbx1", "{done:#}");
    let report = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "report" && s["item"] == -1)
        .map(|s| s["output"].clone())
        .expect("a report step");
    // Only pbx1 was listed and drilled, not the other protected VM of
    // its site.
    let listed = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "vms" && s["item"] == -1)
        .map(|s| s["output"]["vms"].clone())
        .expect("a vms step");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed[0]["name"], "pbx1", "{listed:#}");
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "{report:#}");
    assert_eq!(vms[0]["vm"], "pbx1", "{report:#}");
    assert_eq!(vms[0]["site"], "site2", "{report:#}");
    assert!(vms[0]["rto_seconds"].is_number(), "{report:#}");
    assert_eq!(vms[0]["verified"], true, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    // Another tenant cannot see the job either.
    let (s, _, _) = http.call(Method::GET, &steps_path, Some(&globex), &[], None);
    assert_eq!(s, 404);
    // The drill's incident is labelled with the VM: the tenant's, not
    // globex's.
    let incident = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "incident" && s["item"] == -1)
        .and_then(|s| s["output"]["incident"].as_i64())
        .expect("an incident step");
    let incident_path = format!("/api/v1/incidents/{incident}");
    let (s, _, body) = http.call(Method::GET, &incident_path, Some(&acme), &[], None);
    assert_eq!(s, 200, "the tenant sees its drill's incident: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let labels = if v["incident"].is_object() {
        &v["incident"]["labels"]
    } else {
        &v["labels"]
    };
    assert_eq!(labels["vm"], "pbx1", "{v:#}");
    assert!(
        labels.get("site").is_none(),
        "an empty label is left out: {v:#}"
    );
    let (s, _, _) = http.call(Method::GET, &incident_path, Some(&globex), &[], None);
    assert_eq!(s, 404);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&format!("sbd-{job}-")),
        "the drill's namespace is left behind"
    );
}
