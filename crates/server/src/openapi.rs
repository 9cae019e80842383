//! The OpenAPI 3 document of the API, served at `GET /api/v1/openapi.json`
//! and printed offline by `standby api spec`.
//!
//! It is built from the handlers' own `#[utoipa::path]` annotations by the
//! router that serves them ([`routes`]): a route is registered
//! and documented in one `routes!` call, so the two cannot drift (the tests
//! below send every documented operation to the router, and fail on a
//! `.route(` that bypasses the documentation).
//!
//! # Roles
//! Each operation carries the role it needs as a security requirement:
//! `bearer` (an API token) or `cookie` (a portal session), with the role as
//! the only scope. The policy: GET needs `viewer`, every other method
//! `operator`; a handler that needs `admin` says so in its annotation
//! (`sites/{name}/fence|unfence`, `rules/reload`, `users` and `tokens`;
//! `whoami` is for any authenticated caller). An
//! operation authenticated otherwise carries `x-standby-auth` instead
//! (`none` for health, `signature` for HMAC-signed runbook webhooks,
//! `agent` for agents' heartbeats and results) and no requirement.
//! [`role_table`] reads the roles back from the document; the router is
//! built with that table as the authentication layer's state, so the layer
//! enforces exactly what the document says.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Access, OWN_ROUTES, Principal, Role, RoleTable, default_role};
use crate::state::AppState;
use standby_engine::Controller;

/// Name of the portal's session cookie, as documented in the spec.
pub const SESSION_COOKIE: &str = "standby_session";
/// The extension that marks an operation authenticated otherwise.
pub const AUTH_EXTENSION: &str = "x-standby-auth";

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "standby",
        description = "Disaster recovery for VMs and VNFs: the controller's API. \
            Errors are JSON `ApiError`; lists take `limit` and `offset` and \
            answer `X-Total-Count`; see docs/api.md."
    ),
    components(schemas(standby_types::api::ApiError))
)]
struct ApiDoc;

/// The document's frame (info, shared schemas) before the routes add
/// their operations.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Every route under `/api/v1` (and `/metrics`, and ETSI NFV's under
/// `/vnflcm/v1` and `/vnffm/v1`) with its documentation:
/// the document's frame, this document's own route and the API's
/// (`crate::api::routes`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(base())
        .routes(routes!(openapi_json))
        .merge(crate::api::routes())
}

/// The complete document: every route's operation with its role.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = routes().split_for_parts();
    finish(&mut api);
    api
}

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> =
        LazyLock::new(|| serde_json::to_value(openapi()).unwrap_or(Value::Null));
    &DOC
}

/// The role `method path_template` needs (`path_template` as in the
/// document, e.g. `/api/v1/vms/{name}`). `None` for an operation
/// authenticated otherwise (see [`auth_kind`]) and for one not in the
/// document.
pub fn required_role(method: &Method, path_template: &str) -> Option<Role> {
    let op = operation(document(), method, path_template)?;
    role_of(op)
}

/// For an operation authenticated otherwise than by a role: `none`,
/// `signature` or `agent` (its `x-standby-auth`).
pub fn auth_kind(method: &Method, path_template: &str) -> Option<&'static str> {
    let op = operation(document(), method, path_template)?;
    op.get(AUTH_EXTENSION)?.as_str()
}

/// One operation of the document and how it is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationAuth {
    pub method: Method,
    /// The path template, e.g. `/api/v1/vms/{name}`.
    pub path: String,
    /// The role it needs (None: authenticated otherwise).
    pub role: Option<Role>,
    /// `x-standby-auth`, when authenticated otherwise.
    pub auth: Option<String>,
}

/// Every operation of the document, in path order: the route table that
/// authentication tests are generated from.
pub fn operations() -> Vec<OperationAuth> {
    let mut out = Vec::new();
    let Some(paths) = document().get("paths").and_then(Value::as_object) else {
        return out;
    };
    for (path, item) in paths {
        for m in METHODS {
            let Some(op) = item.get(*m) else { continue };
            let Ok(method) = Method::from_bytes(m.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            out.push(OperationAuth {
                method,
                path: path.clone(),
                role: role_of(op),
                auth: op
                    .get(AUTH_EXTENSION)
                    .and_then(Value::as_str)
                    .map(String::from),
            });
        }
    }
    out
}

/// The role table the authentication layer enforces: each operation of
/// the document with the role it declares.
pub fn role_table() -> RoleTable {
    RoleTable::new(operations().into_iter().map(|o| (o.method, o.path, o.role)))
}

/// How a request is authenticated by the served router's role table
/// ([`RoleTable::access`] of [`role_table`]).
pub fn access(method: &Method, template: Option<&str>, raw_path: &str) -> Access {
    static TABLE: LazyLock<RoleTable> = LazyLock::new(role_table);
    TABLE.access(method, template, raw_path)
}

/// Every operation of the controller's API: (method, route template).
/// The document's operations (so a route added to the API is in it by
/// construction) and the portal's login and logout; the e2e tests
/// generate the 401/403/404 matrix from it.
pub fn route_table() -> Vec<(String, String)> {
    operations()
        .into_iter()
        .map(|o| (o.method.as_str().to_string(), o.path))
        .chain(
            OWN_ROUTES
                .iter()
                .map(|(m, p)| (m.to_string(), p.to_string())),
        )
        .collect()
}

fn operation<'a>(doc: &'a Value, method: &Method, path: &str) -> Option<&'a Value> {
    doc.get("paths")?
        .get(path)?
        .get(method.as_str().to_ascii_lowercase())
}

/// The role of an operation's first security requirement.
fn role_of(op: &Value) -> Option<Role> {
    op.get("security")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|req| req.values())
        .filter_map(|scopes| scopes.get(0)?.as_str()?.parse().ok())
        .next()
}

/// Security schemes, default roles and the error response of every
/// operation.
fn finish(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    let components = api
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components.add_security_scheme(
        "cookie",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
    );
    for item in api.paths.paths.values_mut() {
        let ops = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (m, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let other = op
                .extensions
                .as_ref()
                .is_some_and(|e| e.contains_key(AUTH_EXTENSION));
            if !other && op.security.is_none() {
                let role = default_role(m).as_str();
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", [role]),
                    SecurityRequirement::new("cookie", [role]),
                ]);
            }
            op.responses
                .responses
                .entry("default".to_string())
                .or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(
                                "An error: a stable code, a message and whether retrying \
                                 can help.",
                            )
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ApiError")))
                                    .build(),
                            )
                            .build(),
                    )
                });
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", body = Object)))]
pub(crate) async fn openapi_json(State(_): State<Arc<Controller>>, _who: Principal) -> Json<Value> {
    Json(document().clone())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc() -> Value {
        serde_json::to_value(openapi()).unwrap()
    }

    #[test]
    fn routes_need_viewer_to_read_operator_to_act_admin_to_administer() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            role_table().access(&get, Some("/api/v1/health"), "/api/v1/health"),
            Access::Public
        );
        assert_eq!(
            role_table().access(&get, Some("/api/v1/vms"), "/"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            role_table().access(&post, Some("/api/v1/vms/{name}/stop"), "/"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            role_table().access(&post, Some("/api/v1/sites/{name}/fence"), "/"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            role_table().access(&get, Some("/api/v1/tokens"), "/"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            role_table().access(&post, Some("/api/v1/agents/{name}/heartbeat"), "/"),
            Access::Agent
        );
        assert_eq!(
            role_table().access(&post, Some("/api/v1/runbooks/{name}/webhook"), "/"),
            Access::Public
        );
        // The GET of the same template as the webhook is not public.
        assert_eq!(
            role_table().access(&get, None, "/static/app.js"),
            Access::Public
        );
        assert_eq!(
            role_table().access(&post, None, "/static/app.js"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            role_table().access(&get, None, "/nothing"),
            Access::Role(Role::Viewer)
        );
    }

    #[test]
    fn the_document_is_openapi_3_with_both_security_schemes() {
        let v = doc();
        assert!(
            v["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            v["openapi"]
        );
        assert_eq!(v["info"]["title"], "standby");
        let schemes = &v["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["type"], "http");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["cookie"]["in"], "cookie");
        assert_eq!(schemes["cookie"]["name"], SESSION_COOKIE);
        // What `standby api spec` prints is the same document.
        let text = openapi().to_pretty_json().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    /// Every `$ref` names a schema of the document.
    fn refs(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.insert(x.as_str().unwrap().to_string());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_complete_and_every_reference_resolves() {
        let v = doc();
        let paths = v["paths"].as_object().unwrap();
        let mut ids = BTreeSet::new();
        let mut n = 0;
        for (path, item) in paths {
            // ETSI NFV's routes are at the API roots SOL 003 defines.
            assert!(
                path.starts_with("/api/v1/")
                    || path == "/metrics"
                    || crate::nfv::ROOTS.iter().any(|r| path.starts_with(r)),
                "{path} is outside /api/v1"
            );
            let params: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for m in METHODS {
                let Some(op) = item.get(*m) else { continue };
                n += 1;
                let what = format!("{} {path}", m.to_uppercase());
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no operationId"));
                assert!(ids.insert(id.to_string()), "{what}: operationId {id} twice");
                // SOL 003 answers a heal 202 and a notification 204.
                assert!(
                    op["responses"]
                        .as_object()
                        .is_some_and(|r| ["200", "202", "204"].iter().any(|s| r.contains_key(*s))),
                    "{what}: no 200 response"
                );
                assert!(
                    op["responses"].get("default").is_some(),
                    "{what}: no error response"
                );
                for p in &params {
                    let declared = op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|d| d["in"] == "path" && d["name"] == *p && d["required"] == true);
                    assert!(declared, "{what}: path parameter {p} is not declared");
                }
            }
        }
        assert!(n >= 50, "only {n} operations");
        let mut all = BTreeSet::new();
        refs(&v, &mut all);
        let schemas = v["components"]["schemas"].as_object().unwrap();
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("odd $ref {r}"));
            assert!(schemas.contains_key(name), "$ref {r} resolves to nothing");
        }
    }

    #[test]
    fn roles_follow_the_policy() {
        let ops = operations();
        let admin: BTreeSet<(String, String)> = ops
            .iter()
            .filter(|o| o.role == Some(Role::Admin))
            .map(|o| (o.method.to_string(), o.path.clone()))
            .collect();
        let expect: BTreeSet<(String, String)> = [
            ("POST", "/api/v1/sites/{name}/fence"),
            ("POST", "/api/v1/sites/{name}/unfence"),
            ("POST", "/api/v1/rules/reload"),
            ("GET", "/api/v1/tokens"),
            ("POST", "/api/v1/tokens"),
            ("DELETE", "/api/v1/tokens/{id}"),
            ("GET", "/api/v1/users"),
            ("POST", "/api/v1/users"),
            ("DELETE", "/api/v1/users/{name}"),
            // The running configuration: file paths and the shape of
            // the whole installation.
            ("GET", "/api/v1/config"),
            ("POST", "/api/v1/config/reload"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        assert_eq!(admin, expect);
        for o in &ops {
            match (&o.role, o.auth.as_deref()) {
                (Some(Role::Admin), None) => {}
                (Some(r), None) => assert_eq!(
                    *r,
                    default_role(o.method.as_str()),
                    "{} {}",
                    o.method,
                    o.path
                ),
                (None, Some(kind)) => {
                    let expected = match o.path.as_str() {
                        "/api/v1/health" => "none",
                        "/api/v1/runbooks/{name}/webhook" => "signature",
                        p if p.starts_with("/api/v1/agents/{name}/") => "agent",
                        p => panic!("{} {p} skips role-based authentication", o.method),
                    };
                    assert_eq!(kind, expected, "{} {}", o.method, o.path);
                }
                (r, a) => panic!("{} {}: role {r:?} and auth {a:?}", o.method, o.path),
            }
        }
        assert_eq!(
            required_role(&Method::GET, "/api/v1/vms"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/vms/{name}/start"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/sites/{name}/fence"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/openapi.json"),
            Some(Role::Viewer)
        );
        // Any authenticated caller may ask who they are.
        assert_eq!(
            required_role(&Method::GET, "/api/v1/whoami"),
            Some(Role::Viewer)
        );
        assert_eq!(required_role(&Method::GET, "/api/v1/health"), None);
        assert_eq!(auth_kind(&Method::GET, "/api/v1/health"), Some("none"));
        assert_eq!(
            required_role(&Method::POST, "/api/v1/runbooks/{name}/webhook"),
            None
        );
        assert_eq!(required_role(&Method::GET, "/api/v1/nothing"), None);
    }

    /// The API's source files, scanned for routes that bypass `routes!`.
    const SOURCES: &[(&str, &str)] = &[
        ("api/mod.rs", include_str!("api/mod.rs")),
        ("api/common.rs", include_str!("api/common.rs")),
        ("api/meta.rs", include_str!("api/meta.rs")),
        ("api/inventory.rs", include_str!("api/inventory.rs")),
        ("api/points.rs", include_str!("api/points.rs")),
        ("api/stores.rs", include_str!("api/stores.rs")),
        ("api/jobs.rs", include_str!("api/jobs.rs")),
        ("api_watch.rs", include_str!("api_watch.rs")),
        ("alertmanager.rs", include_str!("alertmanager.rs")),
        ("nfv.rs", include_str!("nfv.rs")),
        ("services.rs", include_str!("services.rs")),
        ("runbooks.rs", include_str!("runbooks.rs")),
        ("report/mod.rs", include_str!("report/mod.rs")),
        ("auth/api.rs", include_str!("auth/api.rs")),
    ];
    /// Routes outside `/api/v1`, rightly not in the document.
    const OUTSIDE: &[&str] = &["\"/login\"", "\"/logout\""];

    #[test]
    fn no_route_bypasses_the_documentation() {
        let needle = [".", "route("].concat();
        let mut bare = Vec::new();
        for (file, text) in SOURCES {
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains(&needle) && !OUTSIDE.iter().any(|o| code.contains(o)) {
                    bare.push(format!("{file}:{}: {}", i + 1, line.trim()));
                }
            }
        }
        assert!(
            bare.is_empty(),
            "routes registered without routes!(…) are missing from the OpenAPI document:\n{}",
            bare.join("\n")
        );
    }

    async fn controller(dir: &std::path::Path) -> Arc<Controller> {
        let text = r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "data"
builtin_rules = false
[sites.site1]
[hosts.h1]
site = "site1"
driver = "process"
disk_dir = "disks"
"#;
        std::fs::write(dir.join("standby.toml"), text).unwrap();
        let cfg = standby_types::config::Config::load(&dir.join("standby.toml")).unwrap();
        Controller::open(cfg).await.unwrap()
    }

    /// Every documented operation reaches a handler of the served router:
    /// sent with dummy parameters, it is answered by the handler (a JSON
    /// error such as not_found is fine), never by the router's fallback
    /// (404 or 405 without a body).
    #[tokio::test]
    async fn every_documented_operation_is_served() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path()).await;
        let auth = crate::auth::Auth::open(&ctl.cfg(), ctl.auth_repo.clone())
            .await
            .unwrap();
        let app = crate::router(
            crate::AppState::new(ctl.clone(), std::sync::Arc::new(auth)),
            Arc::new(role_table()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap();
        let ops = operations();
        assert!(!ops.is_empty());
        for o in &ops {
            let path: String = o
                .path
                .split('/')
                .map(|s| {
                    if s.starts_with('{') {
                        if s == "{id}" {
                            "987654"
                        } else {
                            "no-such-thing"
                        }
                    } else {
                        s
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let resp = http
                .request(o.method.clone(), format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{} {path}: {e}", o.method));
            let status = resp.status();
            let is_stream = resp
                .headers()
                .get("content-type")
                .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
            let body = if is_stream {
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            let what = format!("{} {} (sent as {path})", o.method, o.path);
            assert_ne!(
                status.as_u16(),
                405,
                "{what}: the router has no such method"
            );
            if status.as_u16() == 404 {
                let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| {
                    panic!("{what}: the router's own 404 (no route): {body:?}")
                });
                assert_eq!(v["code"], "not_found", "{what}: {body}");
            }
        }
        server.abort();
        ctl.shutdown().await;
    }
}
