//! Who is calling, and what they may see and do.
//!
//! Every request under `/api/v1` (but health) and every portal page runs
//! as a [`Principal`]: a user or API token with a [`Role`] and, for a
//! customer, a tenant. Handlers take the principal as an extractor and
//! narrow what they return with [`Principal::sees`]; an object of another
//! tenant is answered as not found (404), never as forbidden, so its
//! existence does not leak.
//!
//! # Credentials
//! - API tokens: `Authorization: Bearer sbt_<64 hex>`. The secret is 256
//!   random bits, shown once when created; the database keeps its SHA-256
//!   and finds the token by it (a guess cannot be timed against a stored
//!   secret, as none is stored).
//! - Portal sessions: `POST /login` checks the user's Argon2id password and
//!   sets the `standby_session` cookie (`HttpOnly; SameSite=Strict;
//!   Path=/`, `Secure` with TLS), again a random secret whose SHA-256 is
//!   the session's key. A cookie-authenticated request that is not GET or
//!   HEAD must carry the session's CSRF token in `X-CSRF-Token` (the
//!   portal finds it as the [`Csrf`] extension of its page requests).
//! - Agents: `[agents.NAME] token`/`token_file`, a shared secret the agent
//!   sends on heartbeats and results and the controller sends on calls to
//!   the agent's `/agent/v1` (`standby_agent::daemon::exec_routes`).
//! - Bootstrap: a controller whose database has no operators'-side admin
//!   (user or valid token) mints an admin token at start and writes it to
//!   `<data_dir>/admin.token` (mode 0600); the CLI reads that file when
//!   given no token.
//!
//! # The layer
//! [`layer`] runs inside the router (so `MatchedPath` names the route
//! template) and decides by [`RoleTable::access`]: public routes pass,
//! agent routes need their agent's secret, everything else a principal
//! whose role is at least its route's in the [`RoleTable`] (read from the
//! OpenAPI document and handed to the layer when the router is built) —
//! 401 (with `WWW-Authenticate: Bearer`) for no, bad, expired or revoked credentials, 403 for a role too low or a
//! missing CSRF token. Secrets are compared in constant time and never
//! logged.

pub mod api;
pub mod limit;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use standby_db::{AuthRepo, TokenRecord};
use standby_types::config::Config;
use subtle::ConstantTimeEq;

use crate::error::ServerError;

/// What a principal may do, each role including the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in its scope.
    Viewer,
    /// Also acts: points, restores, drills, moves, failovers, acks.
    Operator,
    /// Also manages users, tokens and fences.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected viewer, operator or admin)"
            )),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Principal {
    /// User name, or `token:<id>` for an API token.
    pub name: String,
    pub role: Role,
    /// `Some(t)`: a tenant's user, who sees tenant `t`'s objects only.
    /// `None`: the operators' side, who see everything.
    pub tenant: Option<String>,
}

impl Principal {
    /// Whether an object owned by `owner` (None: not a tenant's) is
    /// visible to this principal.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match &self.tenant {
            None => true,
            Some(t) => owner == Some(t.as_str()),
        }
    }

    /// 403 unless the principal has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ServerError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ServerError::Forbidden(format!(
                "{} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// An object of another tenant: reported as not found.
    pub fn check(
        &self,
        owner: Option<&str>,
        kind: &'static str,
        name: &str,
    ) -> Result<(), ServerError> {
        if self.sees(owner) {
            Ok(())
        } else {
            Err(ServerError::not_found(kind, name))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ServerError::Unauthorized("authentication required".into()))
    }
}

/// The CSRF token of a cookie session, in the request's extensions of
/// every request authenticated by the session cookie. The portal renders
/// it (`<meta name="csrf-token">`) and sends it back as `X-CSRF-Token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csrf(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Csrf>()
            .cloned()
            .ok_or_else(|| ServerError::Unauthorized("no portal session".into()))
    }
}

/// Name of the portal's session cookie.
pub const SESSION_COOKIE: &str = "standby_session";
/// Header carrying a cookie session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// File under the data directory holding the bootstrap admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// How long a portal login lasts.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);
/// `last_used` of a token is written at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// How a route is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (health, login, static assets, the signed webhook,
    /// whose HMAC is its authentication).
    Public,
    /// The agent named by the route's `{name}` with its own secret.
    Agent,
    /// A user or API token with at least this role.
    Role(Role),
}

/// Routes that take no bearer credentials: (method, template).
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/api/v1/health"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("POST", "/api/v1/runbooks/{name}/webhook"),
];
/// Routes an agent calls with its own secret.
const AGENT: &[(&str, &str)] = &[
    ("POST", "/api/v1/agents/{name}/heartbeat"),
    ("POST", "/api/v1/agents/{name}/results"),
];
/// The role an operation needs when its handler does not say: GET reads,
/// anything else acts (the portal's pages, and the OpenAPI document's
/// default).
pub fn default_role(method: &str) -> Role {
    if method.eq_ignore_ascii_case("get") || method.eq_ignore_ascii_case("head") {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The method whose authorisation applies: `HEAD` is a `GET`.
fn as_get(method: &Method) -> &str {
    if *method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    }
}

/// The role each route needs, by method and route template. A route of
/// the API (this module's tokens, users and `whoami` included) takes the
/// role its OpenAPI operation declares (one source of truth: the table is
/// read from the document when the router is built, and handed to
/// [`layer`] as its state); the portal's pages, outside the document,
/// follow the default policy ([`default_role`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleTable {
    roles: HashMap<(String, String), Role>,
}

impl RoleTable {
    /// From each operation's method, route template and declared role
    /// (None: authenticated otherwise).
    pub fn new(ops: impl IntoIterator<Item = (Method, String, Option<Role>)>) -> RoleTable {
        let roles = ops
            .into_iter()
            .filter_map(|(m, path, role)| Some(((m.as_str().to_string(), path), role?)))
            .collect();
        RoleTable { roles }
    }

    /// The role a route needs, by method and route template; None for
    /// routes without bearer authentication (see [`RoleTable::access`]).
    /// `HEAD` is authorised exactly as `GET` (it runs the `GET` handler;
    /// its headers tell what the body would).
    pub fn required_role(&self, method: &Method, path: &str) -> Option<Role> {
        let m = as_get(method);
        if PUBLIC
            .iter()
            .chain(AGENT)
            .any(|(pm, pp)| *pm == m && *pp == path)
        {
            return None;
        }
        Some(
            self.roles
                .get(&(m.to_string(), path.to_string()))
                .copied()
                .unwrap_or_else(|| default_role(m)),
        )
    }

    /// How a request to `path` (its route template when it matched one,
    /// else the raw path) is authenticated.
    pub fn access(&self, method: &Method, template: Option<&str>, raw_path: &str) -> Access {
        let m = as_get(method);
        if raw_path.starts_with("/static/") && (*method == Method::GET || *method == Method::HEAD) {
            return Access::Public;
        }
        let Some(t) = template else {
            // No route: authenticate anyway, so unknown paths leak nothing.
            return Access::Role(Role::Viewer);
        };
        if AGENT.iter().any(|(am, ap)| *am == m && *ap == t) {
            return Access::Agent;
        }
        match self.required_role(method, t) {
            Some(r) => Access::Role(r),
            None => Access::Public,
        }
    }
}

/// Routes outside `/api/v1`, which the OpenAPI document does not list:
/// the portal's form posts ([`api::session_routes`]).
pub const OWN_ROUTES: &[(&str, &str)] = &[("POST", "/login"), ("POST", "/logout")];

/// The controller's authentication state.
pub struct Auth {
    pub repo: Arc<dyn AuthRepo>,
    /// SHA-256 of each agent's secret (None: no secret configured).
    agents: BTreeMap<String, Option<[u8; 32]>>,
    /// Cookies get `Secure` (the controller serves HTTPS).
    secure: bool,
    /// The configured tenants.
    pub tenants: Vec<String>,
    /// Tokens' last use is recorded (not by a replica that does not lead:
    /// it writes nothing).
    touch: bool,
    /// Failed logins per account and address, and the Argon2 gate.
    pub login: limit::LoginGuard,
}

impl Auth {
    /// Read the agents' secrets and, if no operators'-side admin exists,
    /// mint the bootstrap admin token into `<data_dir>/admin.token`.
    pub async fn open(cfg: &Config, repo: Arc<dyn AuthRepo>) -> Result<Auth, ServerError> {
        let mut agents = BTreeMap::new();
        for (name, a) in &cfg.agents {
            let secret = a.secret().map_err(|e| {
                ServerError::BadRequest(format!("unable to read the token of agent {name}: {e}"))
            })?;
            if secret.is_none() {
                tracing::warn!(
                    agent = %name,
                    "agent has no token or token_file: its heartbeats and results are refused"
                );
            }
            agents.insert(name.clone(), secret.map(|s| sha256(s.as_bytes())));
        }
        let auth = Auth {
            repo,
            agents,
            secure: cfg.controller.tls_cert.is_some(),
            tenants: cfg.tenants.keys().cloned().collect(),
            touch: true,
            login: limit::LoginGuard::new(limit::Policy::default()),
        };
        auth.bootstrap(&cfg.controller.data_dir).await?;
        Ok(auth)
    }

    /// Authentication for a replica that does not lead
    /// ([`crate::follower`]): tokens and sessions as the leader checks
    /// them, read from the database; nothing written (no bootstrap token,
    /// no last use). Agents are never served there.
    pub fn follower(cfg: &Config, repo: Arc<dyn AuthRepo>) -> Auth {
        Auth {
            repo,
            agents: BTreeMap::new(),
            secure: cfg.controller.tls_cert.is_some(),
            tenants: cfg.tenants.keys().cloned().collect(),
            touch: false,
            login: limit::LoginGuard::new(limit::Policy::default()),
        }
    }

    async fn bootstrap(&self, data_dir: &Path) -> Result<(), ServerError> {
        let now = Utc::now();
        if self.repo.has_admin(now).await? {
            return Ok(());
        }
        let (secret, rec) = new_token("bootstrap admin", Role::Admin, None, None);
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        // The file first: a failed insert leaves a useless file that the
        // next start replaces, never an admin token nobody can read.
        write_private(&path, format!("{secret}\n").as_bytes())?;
        self.repo.add_token(&rec).await?;
        tracing::warn!(
            path = %path.display(),
            token = %rec.id,
            "no admin yet: created an admin token, readable by root only, in this file"
        );
        Ok(())
    }

    /// The principal of a bearer token, or 401.
    pub async fn token_principal(&self, secret: &str) -> Result<Principal, ServerError> {
        let now = Utc::now();
        let bad = || ServerError::Unauthorized("invalid, expired or revoked token".into());
        let rec = self
            .repo
            .token_by_hash(&hex::encode(sha256(secret.as_bytes())))
            .await?
            .ok_or_else(bad)?;
        if !rec.is_valid(now) {
            return Err(bad());
        }
        if self.touch && rec.last_used.is_none_or(|t| now - t > TOUCH_EVERY) {
            self.repo.touch_token(&rec.id, now).await?;
        }
        Ok(Principal {
            name: format!("token:{}", rec.id),
            role: rec.role.parse().map_err(ServerError::Internal)?,
            tenant: rec.tenant,
        })
    }

    /// The principal and CSRF token of a session cookie, or 401.
    pub async fn session_principal(&self, secret: &str) -> Result<(Principal, Csrf), ServerError> {
        let bad = || ServerError::Unauthorized("no valid session: log in again".into());
        let s = self
            .repo
            .session(&hex::encode(sha256(secret.as_bytes())), Utc::now())
            .await?
            .ok_or_else(bad)?;
        let u = self.repo.user(&s.user).await.map_err(|_| bad())?;
        Ok((
            Principal {
                name: u.name,
                role: u.role.parse().map_err(ServerError::Internal)?,
                tenant: u.tenant,
            },
            Csrf(s.csrf),
        ))
    }

    /// Whether `secret` is agent `name`'s.
    pub fn agent_ok(&self, name: &str, secret: &str) -> bool {
        match self.agents.get(name) {
            Some(Some(h)) => bool::from(h.ct_eq(&sha256(secret.as_bytes()))),
            _ => false,
        }
    }

    /// The `Set-Cookie` value of a session (empty secret: removal).
    pub fn cookie(&self, secret: &str, max_age: i64) -> String {
        format!(
            "{SESSION_COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// 32 random bytes, hex.
pub(crate) fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A new token: its secret (shown once) and its record (hash only).
pub fn new_token(
    name: &str,
    role: Role,
    tenant: Option<String>,
    expires: Option<DateTime<Utc>>,
) -> (String, TokenRecord) {
    let secret = format!("sbt_{}", random_secret());
    let rec = TokenRecord {
        id: hex::encode(rand::random::<[u8; 6]>()),
        secret_hash: hex::encode(sha256(secret.as_bytes())),
        name: name.to_string(),
        role: role.as_str().to_string(),
        tenant,
        created: Utc::now(),
        expires,
        revoked: None,
        last_used: None,
    };
    (secret, rec)
}

/// Argon2id PHC string of `password` (slow on purpose: run it blocking).
pub fn hash_password(password: &str) -> Result<String, ServerError> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ServerError::Internal(format!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::Internal(format!("password hash: {e}")))
}

/// Whether `password` matches the PHC string `hash` (constant time).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Write `bytes` to `path` readable by its owner only, whole or not at all.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let err = |e: std::io::Error| {
        ServerError::Internal(format!("unable to write {}: {e}", path.display()))
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name`.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn unauthorized(msg: impl Into<String>) -> Response {
    let mut r = ServerError::Unauthorized(msg.into()).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Authenticates a request and puts its [`Principal`] (and, for a cookie
/// session, its [`Csrf`]) in the request's extensions. Needs the
/// authentication state as an `Arc<Auth>` extension (set by
/// [`crate::app`]).
pub async fn layer(State(table): State<Arc<RoleTable>>, mut req: Request, next: Next) -> Response {
    let Some(auth) = req.extensions().get::<Arc<Auth>>().cloned() else {
        return ServerError::Internal("authentication is not set up".into()).into_response();
    };
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().clone();
    let role = match table.access(&method, template.as_deref(), req.uri().path()) {
        Access::Public => return next.run(req).await,
        Access::Agent => {
            let name = req.uri().path().split('/').nth(4).unwrap_or_default();
            return match bearer(req.headers()) {
                Some(s) if auth.agent_ok(name, s) => next.run(req).await,
                Some(_) => unauthorized(format!("wrong token for agent '{name}'")),
                None => unauthorized(format!(
                    "agent '{name}' must send its token (Authorization: Bearer)"
                )),
            };
        }
        Access::Role(r) => r,
    };
    let found = if let Some(secret) = bearer(req.headers()) {
        auth.token_principal(secret).await.map(|p| (p, None))
    } else if let Some(secret) = cookie_value(req.headers(), SESSION_COOKIE) {
        auth.session_principal(secret)
            .await
            .map(|(p, c)| (p, Some(c)))
    } else {
        // A browser asking for a page goes to the login page instead.
        let wants_html = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let path = req.uri().path();
        if method == Method::GET && wants_html && !path.starts_with("/api/") {
            let next_path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let q = serde_urlencoded::to_string([("next", next_path)]).unwrap_or_default();
            return Redirect::to(&format!("/login?{q}")).into_response();
        }
        return unauthorized("authentication required: send Authorization: Bearer <token>");
    };
    let (principal, csrf) = match found {
        Ok(x) => x,
        Err(ServerError::Unauthorized(m)) => return unauthorized(m),
        Err(e) => return e.into_response(),
    };
    if let Some(Csrf(expected)) = &csrf
        && !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(expected.as_bytes())) {
            return ServerError::Forbidden(
                "missing or wrong X-CSRF-Token for a session request".into(),
            )
            .into_response();
        }
    }
    if let Err(e) = principal.require(role) {
        return e.into_response();
    }
    if let Some(c) = csrf {
        req.extensions_mut().insert(c);
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use standby_db::SqlRepo;

    use super::*;

    #[test]
    fn cookies_and_bearer_headers_are_read_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; standby_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "standby"), None);
        h.insert(header::AUTHORIZATION, "bearer  sbt_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("sbt_x"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[tokio::test]
    async fn the_first_start_mints_one_admin_token_into_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let repo = Arc::new(SqlRepo::open(&dir.path().join("state.db")).await.unwrap());
        let mut cfg = Config::parse("", Path::new("standby.toml")).unwrap();
        cfg.controller.data_dir = dir.path().to_path_buf();
        let auth = Auth::open(&cfg, repo.clone()).await.unwrap();
        let file = dir.path().join(ADMIN_TOKEN_FILE);
        let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let p = auth.token_principal(&secret).await.unwrap();
        assert_eq!((p.role, p.tenant), (Role::Admin, None));
        assert!(matches!(
            auth.token_principal("sbt_wrong").await,
            Err(ServerError::Unauthorized(_))
        ));
        // A second start keeps the admin it has.
        Auth::open(&cfg, repo.clone()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), secret);
        assert_eq!(repo.tokens().await.unwrap().len(), 1);
        // Once revoked, no admin is left: the next start mints a new one.
        let id = p.name.strip_prefix("token:").unwrap();
        repo.revoke_token(id, Utc::now()).await.unwrap();
        assert!(matches!(
            auth.token_principal(&secret).await,
            Err(ServerError::Unauthorized(_))
        ));
        Auth::open(&cfg, repo.clone()).await.unwrap();
        assert_ne!(std::fs::read_to_string(&file).unwrap().trim(), secret);
    }
}
