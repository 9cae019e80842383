//! Routes of authentication: API tokens, users, `whoami`, and the
//! portal's `POST /login` / `POST /logout`.
//!
//! The `/api/v1` ones are registered through [`OpenApiRouter`] like every
//! other API route ([`routes`], merged by `crate::api::routes`), so they
//! are in the OpenAPI document with their roles: `whoami` for any
//! authenticated caller, tokens and users for an admin. `/login` and
//! `/logout` are the portal's form posts, outside the API
//! ([`session_routes`]).
//!
//! A tenant's admin manages its own tenant's tokens and users only;
//! another tenant's are answered as not found.

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_db::{DbError, SessionRecord, TokenRecord, UserRecord};
use standby_types::api::ApiError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Auth, RoleTable};
use super::{Principal, Role, SESSION_COOKIE, SESSION_TTL, cookie_value, random_secret, sha256};
use crate::api::common::{ApiQuery, ListParams, ListResult, Page};
use crate::error::ServerError;

type Ctl = State<Arc<Auth>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

/// The `/api/v1` routes of this module, each documented; behind
/// [`super::layer`] with the rest of the API. Generic over the router's
/// state, which only has to hold the [`Auth`].
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(tokens, token_create))
        .routes(routes!(token_revoke))
        .routes(routes!(users, user_add))
        .routes(routes!(user_remove))
}

/// The portal's `POST /login` and `POST /logout` (public: see
/// [`RoleTable::access`]), behind [`super::layer`] with the role table.
pub fn session_routes(auth: Arc<Auth>, table: Arc<RoleTable>) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(table, super::layer))
        .with_state(auth)
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreate {
    /// A label: 1 to 64 letters, digits, '-', '_', '.', '@' or spaces.
    pub name: String,
    pub role: Role,
    /// Defaults to the caller's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Lifetime, e.g. `30d` (none: until revoked).
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// An API token as listed: never its secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The tenant whose objects it sees; none: the operators' side.
    pub tenant: Option<String>,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub revoked: Option<DateTime<Utc>>,
    /// Written at most once a minute.
    pub last_used: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for Token {
    fn from(t: TokenRecord) -> Token {
        Token {
            id: t.id,
            name: t.name,
            role: t.role,
            tenant: t.tenant,
            created: t.created,
            expires: t.expires,
            revoked: t.revoked,
            last_used: t.last_used,
        }
    }
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: Token,
    /// `sbt_<64 hex>`, for `Authorization: Bearer`; shown this once.
    pub secret: String,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserAdd {
    /// 1 to 64 letters, digits, '-', '_', '.', '@' or spaces.
    pub name: String,
    /// At least 8 characters; stored as an Argon2id hash only.
    pub password: String,
    pub role: Role,
    /// Defaults to the caller's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A user as listed: never the password's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The tenant whose objects the user sees; none: the operators' side.
    pub tenant: Option<String>,
    pub created: DateTime<Utc>,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> User {
        User {
            name: u.name,
            role: u.role,
            tenant: u.tenant,
            created: u.created,
        }
    }
}

/// `GET /api/v1/whoami`: the caller, and for a portal session the CSRF
/// token its writes must send as `X-CSRF-Token`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    #[serde(flatten)]
    pub principal: Principal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

/// The caller: name, role, tenant, and for a portal session its CSRF token.
#[utoipa::path(get, path = "/api/v1/whoami", operation_id = "whoami", tag = "auth",
    responses((status = 200, description = "The caller", body = WhoAmI)))]
async fn whoami(p: Principal, csrf: Option<axum::Extension<super::Csrf>>) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: p,
        csrf: csrf.map(|c| c.0.0),
    })
}

/// The tenant a new token or user of `p` gets.
fn tenant_for(
    auth: &Auth,
    p: &Principal,
    asked: Option<String>,
) -> Result<Option<String>, ServerError> {
    match (&p.tenant, asked) {
        (Some(t), None) => Ok(Some(t.clone())),
        (Some(t), Some(a)) if a == *t => Ok(Some(a)),
        (Some(t), Some(a)) => Err(ServerError::Forbidden(format!(
            "{} is an admin of tenant {t}, not of tenant {a}",
            p.name
        ))),
        (None, Some(a)) if !auth.tenants.contains(&a) => Err(ServerError::BadRequest(format!(
            "unknown tenant '{a}' (declare it under [tenants] in standby.toml)"
        ))),
        (None, a) => Ok(a),
    }
}

fn check_name(kind: &str, n: &str) -> Result<(), ServerError> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ' '));
    if ok {
        Ok(())
    } else {
        Err(ServerError::BadRequest(format!(
            "bad {kind} name '{n}': 1 to 64 letters, digits, '-', '_', '.', '@' or spaces"
        )))
    }
}

/// API tokens, revoked and expired ones included (a tenant's admin: its
/// tenant's), a page at a time.
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "tokens", tag = "auth", params(ListParams),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The tokens", body = Vec<Token>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn tokens(
    State(auth): Ctl,
    p: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<Token> {
    let page = Page::new(q.limit, q.offset)?;
    let all = auth.repo.tokens().await?;
    Ok(page.of(all
        .into_iter()
        .filter(|t| p.sees(t.tenant.as_deref()))
        .map(Token::from)
        .collect()))
}

/// Create an API token; the answer is the only time its secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens", operation_id = "token_create", tag = "auth",
    request_body = TokenCreate,
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The token and its secret", body = TokenCreated),
        (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn token_create(
    State(auth): Ctl,
    p: Principal,
    Json(req): Json<TokenCreate>,
) -> ApiResult<TokenCreated> {
    check_name("token", &req.name)?;
    let tenant = tenant_for(&auth, &p, req.tenant)?;
    let expires = match &req.expires_in {
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                ServerError::BadRequest(format!("bad expires_in '{s}': {e} (e.g. 30d, 12h)"))
            })?;
            let too_long = || ServerError::BadRequest(format!("expires_in '{s}' is too long"));
            let d = chrono::Duration::from_std(d).map_err(|_| too_long())?;
            Some(Utc::now().checked_add_signed(d).ok_or_else(too_long)?)
        }
        None => None,
    };
    let (secret, rec) = super::new_token(&req.name, req.role, tenant, expires);
    auth.repo.add_token(&rec).await?;
    tracing::info!(by = %p.name, token = %rec.id, role = %rec.role, "token created");
    Ok(Json(TokenCreated {
        token: rec.into(),
        secret,
    }))
}

/// Revoke an API token (it stays listed, with `revoked` set).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", operation_id = "token_revoke", tag = "auth",
    params(("id" = String, Path, description = "Token id")),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The revoked token", body = Token),
        (status = 404, body = ApiError)))]
async fn token_revoke(State(auth): Ctl, p: Principal, Path(id): Path<String>) -> ApiResult<Token> {
    let t = auth.repo.token(&id).await?;
    p.check(t.tenant.as_deref(), "token", &id)?;
    auth.repo.revoke_token(&id, Utc::now()).await?;
    tracing::info!(by = %p.name, token = %id, "token revoked");
    Ok(Json(auth.repo.token(&id).await?.into()))
}

/// Users (a tenant's admin: its tenant's), a page at a time.
#[utoipa::path(get, path = "/api/v1/users", operation_id = "users", tag = "auth", params(ListParams),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The users", body = Vec<User>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn users(
    State(auth): Ctl,
    p: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<User> {
    let page = Page::new(q.limit, q.offset)?;
    let all = auth.repo.users().await?;
    Ok(page.of(all
        .into_iter()
        .filter(|u| p.sees(u.tenant.as_deref()))
        .map(User::from)
        .collect()))
}

/// Add a user who logs in to the portal with a password.
#[utoipa::path(post, path = "/api/v1/users", operation_id = "user_add", tag = "auth",
    request_body = UserAdd,
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The user", body = User),
        (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 409, description = "The user exists already", body = ApiError)))]
async fn user_add(State(auth): Ctl, p: Principal, Json(req): Json<UserAdd>) -> ApiResult<User> {
    check_name("user", &req.name)?;
    if req.password.chars().count() < 8 {
        return Err(ServerError::BadRequest(
            "a password needs at least 8 characters".into(),
        ));
    }
    let tenant = tenant_for(&auth, &p, req.tenant)?;
    let pw = req.password;
    let slot = auth.login.argon2.enter().await.ok_or_else(|| {
        ServerError::Busy("too many password hashes at once: try again in a second".into())
    })?;
    let hash = tokio::task::spawn_blocking(move || super::hash_password(&pw)).await??;
    drop(slot);
    let rec = UserRecord {
        name: req.name,
        password_hash: hash,
        role: req.role.as_str().to_string(),
        tenant,
        created: Utc::now(),
    };
    if !auth.repo.add_user(&rec).await? {
        return Err(ServerError::Conflict(format!(
            "user '{}' exists already",
            rec.name
        )));
    }
    tracing::info!(by = %p.name, user = %rec.name, role = %rec.role, "user added");
    Ok(Json(rec.into()))
}

/// Remove a user (and so end their portal sessions).
#[utoipa::path(delete, path = "/api/v1/users/{name}", operation_id = "user_remove", tag = "auth",
    params(("name" = String, Path, description = "User name")),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The removed user", body = User),
        (status = 404, body = ApiError)))]
async fn user_remove(State(auth): Ctl, p: Principal, Path(name): Path<String>) -> ApiResult<User> {
    let u = match auth.repo.user(&name).await {
        Ok(u) => u,
        Err(DbError::NotFound { .. }) => return Err(ServerError::not_found("user", name)),
        Err(e) => return Err(e.into()),
    };
    p.check(u.tenant.as_deref(), "user", &name)?;
    auth.repo.remove_user(&name).await?;
    tracing::info!(by = %p.name, user = %name, "user removed");
    Ok(Json(u.into()))
}

/// `POST /login`, form-urlencoded.
#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// A local path to go to after login: `/...` but not `//host`.
fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// A hash to verify against when the user does not exist, so a wrong
/// name takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| super::hash_password("not a password").unwrap_or_default())
}

/// The client's IP address (the TCP peer, over plain HTTP or TLS;
/// unspecified when the server runs without connection info, as in tests
/// through `oneshot`).
struct PeerIp(std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        let e = &parts.extensions;
        let ip = e
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .or_else(|| {
                e.get::<ConnectInfo<standby_tls::TlsPeer>>()
                    .map(|c| c.0.addr.ip())
            })
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        Ok(PeerIp(ip))
    }
}

async fn login(State(auth): Ctl, PeerIp(ip): PeerIp, Form(f): Form<LoginForm>) -> Response {
    let next = local_next(f.next.as_deref());
    let now = std::time::Instant::now();
    if let Err(r) = auth.login.check(&f.username, ip, now) {
        let secs = r.retry_after().as_secs_f64().ceil().max(1.0) as u64;
        let why = match r {
            super::limit::Refusal::Account(_) => "this account",
            super::limit::Refusal::Address(_) => "this address",
        };
        tracing::info!(user = %f.username, %ip, retry_after = secs, "login refused: too many failures of {why}");
        return ServerError::TooManyRequests {
            message: format!("too many failed logins from {why}: try again in {secs} s"),
            retry_after: secs,
        }
        .into_response();
    }
    let user = auth.repo.user(&f.username).await.ok();
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_string());
    let pw = f.password;
    let Some(_slot) = auth.login.argon2.enter().await else {
        tracing::warn!(user = %f.username, %ip, "login refused: every password check slot is busy");
        return ServerError::Busy("too many logins at once: try again in a second".into())
            .into_response();
    };
    let ok = tokio::task::spawn_blocking(move || super::verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
    drop(_slot);
    if user.is_some() && ok {
        auth.login.succeeded(&f.username, ip, now);
    } else {
        auth.login.failed(&f.username, ip, now);
    }
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(user = %f.username, %ip, "login refused");
        let q = serde_urlencoded::to_string([("error", "1"), ("next", next.as_str())])
            .unwrap_or_default();
        return Redirect::to(&format!("/login?{q}")).into_response();
    };
    let secret = random_secret();
    let now = Utc::now();
    let session = SessionRecord {
        id_hash: hex::encode(sha256(secret.as_bytes())),
        user: user.name.clone(),
        csrf: random_secret(),
        created: now,
        expires: now + SESSION_TTL,
    };
    if let Err(e) = auth.repo.add_session(&session).await {
        return ServerError::from(e).into_response();
    }
    let _ = auth.repo.purge_sessions(now).await;
    tracing::info!(user = %user.name, "logged in");
    (
        [(
            header::SET_COOKIE,
            auth.cookie(&secret, SESSION_TTL.num_seconds()),
        )],
        Redirect::to(&next),
    )
        .into_response()
}

async fn logout(State(auth): Ctl, headers: HeaderMap) -> Response {
    if let Some(secret) = cookie_value(&headers, SESSION_COOKIE) {
        let _ = auth
            .repo
            .remove_session(&hex::encode(sha256(secret.as_bytes())))
            .await;
    }
    (
        [(header::SET_COOKIE, auth.cookie("", 0))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the API answers for a token or a user is what the database
    /// record serializes to (no field lost or added), and never a secret.
    #[test]
    fn tokens_and_users_show_their_records_without_secrets() {
        let (secret, rec) = crate::auth::new_token("ci", Role::Operator, Some("acme".into()), None);
        let shown = serde_json::to_value(Token::from(rec.clone())).unwrap();
        assert_eq!(shown, serde_json::to_value(&rec).unwrap());
        let text = shown.to_string();
        assert!(!text.contains(&rec.secret_hash) && !text.contains(&secret[4..]));
        let created = serde_json::to_value(TokenCreated {
            token: rec.clone().into(),
            secret: secret.clone(),
        })
        .unwrap();
        assert_eq!(created["id"], rec.id.as_str());
        assert_eq!(created["secret"], secret.as_str());
        let u = UserRecord {
            name: "ann".into(),
            password_hash: "$argon2id$x".into(),
            role: "admin".into(),
            tenant: None,
            created: Utc::now(),
        };
        let shown = serde_json::to_value(User::from(u.clone())).unwrap();
        assert_eq!(shown, serde_json::to_value(&u).unwrap());
        assert!(!shown.to_string().contains("argon2"));
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_next(Some("/vms?x=1")), "/vms?x=1");
        assert_eq!(local_next(None), "/");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil",
            "vms",
            "",
        ] {
            assert_eq!(local_next(Some(bad)), "/", "{bad}");
        }
    }
}
