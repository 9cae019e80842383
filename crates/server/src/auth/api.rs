//! Routes of authentication: API tokens, users, `whoami`, and the
//! portal's `POST /login` / `POST /logout`.
//!
//! A tenant's admin manages its own tenant's tokens and users only;
//! another tenant's are answered as not found.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use standby_db::{DbError, SessionRecord, TokenRecord, UserRecord};

use super::{Principal, Role, SESSION_COOKIE, SESSION_TTL, cookie_value, random_secret, sha256};
use crate::controller::Controller;
use crate::error::ServerError;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

/// The routes, behind [`super::layer`].
pub fn routes(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/tokens", get(tokens).post(token_create))
        .route("/api/v1/tokens/{id}", delete(token_revoke))
        .route("/api/v1/users", get(users).post(user_add))
        .route("/api/v1/users/{name}", delete(user_remove))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(axum::middleware::from_fn(super::layer))
        .with_state(ctl)
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreate {
    pub name: String,
    pub role: Role,
    /// Defaults to the caller's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Lifetime, e.g. `30d` (none: until revoked).
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: TokenRecord,
    pub secret: String,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserAdd {
    pub name: String,
    pub password: String,
    pub role: Role,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `GET /api/v1/whoami`: the caller, and for a portal session the CSRF
/// token its writes must send as `X-CSRF-Token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    #[serde(flatten)]
    pub principal: Principal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

async fn whoami(p: Principal, csrf: Option<axum::Extension<super::Csrf>>) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: p,
        csrf: csrf.map(|c| c.0.0),
    })
}

/// The tenant a new token or user of `p` gets.
fn tenant_for(
    ctl: &Controller,
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
        (None, Some(a)) if !ctl.auth.tenants.contains(&a) => Err(ServerError::BadRequest(format!(
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

async fn tokens(State(ctl): Ctl, p: Principal) -> ApiResult<Vec<TokenRecord>> {
    let all = ctl.auth.repo.tokens().await?;
    Ok(Json(
        all.into_iter()
            .filter(|t| p.sees(t.tenant.as_deref()))
            .collect(),
    ))
}

async fn token_create(
    State(ctl): Ctl,
    p: Principal,
    Json(req): Json<TokenCreate>,
) -> ApiResult<TokenCreated> {
    check_name("token", &req.name)?;
    let tenant = tenant_for(&ctl, &p, req.tenant)?;
    let expires = match &req.expires_in {
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                ServerError::BadRequest(format!("bad expires_in '{s}': {e} (e.g. 30d, 12h)"))
            })?;
            let d = chrono::Duration::from_std(d)
                .map_err(|_| ServerError::BadRequest(format!("expires_in '{s}' is too long")))?;
            Some(Utc::now() + d)
        }
        None => None,
    };
    let (secret, rec) = super::new_token(&req.name, req.role, tenant, expires);
    ctl.auth.repo.add_token(&rec).await?;
    tracing::info!(by = %p.name, token = %rec.id, role = %rec.role, "token created");
    Ok(Json(TokenCreated { token: rec, secret }))
}

async fn token_revoke(
    State(ctl): Ctl,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<TokenRecord> {
    let t = ctl.auth.repo.token(&id).await?;
    p.check(t.tenant.as_deref(), "token", &id)?;
    ctl.auth.repo.revoke_token(&id, Utc::now()).await?;
    tracing::info!(by = %p.name, token = %id, "token revoked");
    Ok(Json(ctl.auth.repo.token(&id).await?))
}

async fn users(State(ctl): Ctl, p: Principal) -> ApiResult<Vec<UserRecord>> {
    let all = ctl.auth.repo.users().await?;
    Ok(Json(
        all.into_iter()
            .filter(|u| p.sees(u.tenant.as_deref()))
            .collect(),
    ))
}

async fn user_add(
    State(ctl): Ctl,
    p: Principal,
    Json(req): Json<UserAdd>,
) -> ApiResult<UserRecord> {
    check_name("user", &req.name)?;
    if req.password.chars().count() < 8 {
        return Err(ServerError::BadRequest(
            "a password needs at least 8 characters".into(),
        ));
    }
    let tenant = tenant_for(&ctl, &p, req.tenant)?;
    let pw = req.password;
    let hash = tokio::task::spawn_blocking(move || super::hash_password(&pw)).await??;
    let rec = UserRecord {
        name: req.name,
        password_hash: hash,
        role: req.role.as_str().to_string(),
        tenant,
        created: Utc::now(),
    };
    if !ctl.auth.repo.add_user(&rec).await? {
        return Err(ServerError::Conflict(format!(
            "user '{}' exists already",
            rec.name
        )));
    }
    tracing::info!(by = %p.name, user = %rec.name, role = %rec.role, "user added");
    Ok(Json(rec))
}

async fn user_remove(
    State(ctl): Ctl,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<UserRecord> {
    let u = match ctl.auth.repo.user(&name).await {
        Ok(u) => u,
        Err(DbError::NotFound { .. }) => return Err(ServerError::not_found("user", name)),
        Err(e) => return Err(e.into()),
    };
    p.check(u.tenant.as_deref(), "user", &name)?;
    ctl.auth.repo.remove_user(&name).await?;
    tracing::info!(by = %p.name, user = %name, "user removed");
    Ok(Json(u))
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

async fn login(State(ctl): Ctl, Form(f): Form<LoginForm>) -> Response {
    let next = local_next(f.next.as_deref());
    let user = ctl.auth.repo.user(&f.username).await.ok();
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_string());
    let pw = f.password;
    let ok = tokio::task::spawn_blocking(move || super::verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(user = %f.username, "login refused");
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
    if let Err(e) = ctl.auth.repo.add_session(&session).await {
        return ServerError::from(e).into_response();
    }
    let _ = ctl.auth.repo.purge_sessions(now).await;
    tracing::info!(user = %user.name, "logged in");
    (
        [(
            header::SET_COOKIE,
            ctl.auth.cookie(&secret, SESSION_TTL.num_seconds()),
        )],
        Redirect::to(&next),
    )
        .into_response()
}

async fn logout(State(ctl): Ctl, headers: HeaderMap) -> Response {
    if let Some(secret) = cookie_value(&headers, SESSION_COOKIE) {
        let _ = ctl
            .auth
            .repo
            .remove_session(&hex::encode(sha256(secret.as_bytes())))
            .await;
    }
    (
        [(header::SET_COOKIE, ctl.auth.cookie("", 0))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
