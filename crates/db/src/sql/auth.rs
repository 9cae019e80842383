//! [`AuthRepo`] on SQL (SQLite or PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;

use super::SqlRepo;
use super::rows::{found, get, not_found, opt_time, time, ts};
use crate::DbError;
use crate::auth::{AuthRepo, SessionRecord, TokenRecord, UserRecord};
use crate::error::query;

const USER_COLUMNS: &str = "name, password_hash, role, tenant, created";
const TOKEN_COLUMNS: &str =
    "id, secret_hash, name, role, tenant, created, expires, revoked, last_used";

fn user_row(r: &AnyRow) -> Result<UserRecord, DbError> {
    Ok(UserRecord {
        name: get(r, "name")?,
        password_hash: get(r, "password_hash")?,
        role: get(r, "role")?,
        tenant: get(r, "tenant")?,
        created: time(r, "created")?,
    })
}

fn token_row(r: &AnyRow) -> Result<TokenRecord, DbError> {
    Ok(TokenRecord {
        id: get(r, "id")?,
        secret_hash: get(r, "secret_hash")?,
        name: get(r, "name")?,
        role: get(r, "role")?,
        tenant: get(r, "tenant")?,
        created: time(r, "created")?,
        expires: opt_time(r, "expires")?,
        revoked: opt_time(r, "revoked")?,
        last_used: opt_time(r, "last_used")?,
    })
}

#[async_trait::async_trait]
impl AuthRepo for SqlRepo {
    async fn add_user(&self, u: &UserRecord) -> Result<bool, DbError> {
        let r = self
            .write_one(
                format!("add user '{}'", u.name),
                sqlx::query(
                    "INSERT INTO users (name, password_hash, role, tenant, created) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&u.name)
                .bind(&u.password_hash)
                .bind(&u.role)
                .bind(&u.tenant)
                .bind(ts(u.created)),
            )
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn user(&self, name: &str) -> Result<UserRecord, DbError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(format!("read user '{name}'")))?
            .map(|r| user_row(&r))
            .unwrap_or_else(|| Err(not_found("user", name)))
    }

    async fn users(&self) -> Result<Vec<UserRecord>, DbError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(query("list users"))?
            .iter()
            .map(user_row)
            .collect()
    }

    async fn remove_user(&self, name: &str) -> Result<(), DbError> {
        let r = self
            .write_one(
                format!("remove user '{name}'"),
                sqlx::query("DELETE FROM users WHERE name = $1").bind(name),
            )
            .await?;
        found(r.rows_affected(), "user", name)
    }

    async fn add_token(&self, t: &TokenRecord) -> Result<(), DbError> {
        self.write_one(format!("add token '{}'", t.id), sqlx::query(&format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.name)
        .bind(&t.role)
        .bind(&t.tenant)
        .bind(ts(t.created))
        .bind(t.expires.map(ts))
        .bind(t.revoked.map(ts))
        .bind(t.last_used.map(ts)))
            .await?;
        self.tokens_memo.invalidate();
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<TokenRecord, DbError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(format!("read token '{id}'")))?
        .map(|r| token_row(&r))
        .unwrap_or_else(|| Err(not_found("token", id)))
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, DbError> {
        if self.tokens_memo.is_enabled() {
            let by_hash = self
                .tokens_memo
                .get(|| async {
                    Ok(self
                        .tokens()
                        .await?
                        .into_iter()
                        .map(|t| (t.secret_hash.clone(), t))
                        .collect())
                })
                .await?;
            return Ok(by_hash.get(secret_hash).cloned());
        }
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(query("look up a token"))?
        .map(|r| token_row(&r))
        .transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list tokens"))?
        .iter()
        .map(token_row)
        .collect()
    }

    async fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        let r = self
            .write_one(
                format!("revoke token '{id}'"),
                sqlx::query("UPDATE api_tokens SET revoked = COALESCE(revoked, $2) WHERE id = $1")
                    .bind(id)
                    .bind(ts(at)),
            )
            .await?;
        self.tokens_memo.invalidate();
        found(r.rows_affected(), "token", id)
    }

    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        self.write_one(
            format!("record use of token '{id}'"),
            sqlx::query("UPDATE api_tokens SET last_used = $2 WHERE id = $1")
                .bind(id)
                .bind(ts(at)),
        )
        .await?;
        self.tokens_memo.invalidate();
        Ok(())
    }

    async fn has_admin(&self, now: DateTime<Utc>) -> Result<bool, DbError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM users WHERE role = 'admin' AND tenant IS NULL) + \
             (SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND tenant IS NULL \
              AND revoked IS NULL AND (expires IS NULL OR expires > $1))",
        )
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await
        .map_err(query("count admins"))?;
        Ok(n > 0)
    }

    async fn add_session(&self, s: &SessionRecord) -> Result<(), DbError> {
        self.write_one(
            format!("add a session of user '{}'", s.user),
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_name, csrf, created, expires) \
             VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&s.id_hash)
            .bind(&s.user)
            .bind(&s.csrf)
            .bind(ts(s.created))
            .bind(ts(s.expires)),
        )
        .await?;
        Ok(())
    }

    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>, DbError> {
        sqlx::query(
            "SELECT id_hash, user_name, csrf, created, expires FROM sessions \
             WHERE id_hash = $1 AND expires > $2",
        )
        .bind(id_hash)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(query("look up a session"))?
        .map(|r| {
            Ok(SessionRecord {
                id_hash: get(&r, "id_hash")?,
                user: get(&r, "user_name")?,
                csrf: get(&r, "csrf")?,
                created: time(&r, "created")?,
                expires: time(&r, "expires")?,
            })
        })
        .transpose()
    }

    async fn remove_session(&self, id_hash: &str) -> Result<(), DbError> {
        self.write_one(
            "remove a session",
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash),
        )
        .await?;
        Ok(())
    }

    async fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64, DbError> {
        let r = self
            .write_one(
                "purge expired sessions",
                sqlx::query("DELETE FROM sessions WHERE expires <= $1").bind(ts(now)),
            )
            .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::sql::testing::TestDb;

    fn token(id: &str, role: &str, tenant: Option<&str>) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: format!("hash-{id}"),
            name: format!("{id} token"),
            role: role.into(),
            tenant: tenant.map(String::from),
            created: Utc::now(),
            expires: None,
            revoked: None,
            last_used: None,
        }
    }

    async fn tokens_users_and_sessions_round_trip_and_an_admin_is_counted_while_valid(db: TestDb) {
        let repo = db.open().await;
        let now = Utc::now();
        assert!(!repo.has_admin(now).await.unwrap());
        // A tenant's admin is not the operators' admin.
        repo.add_token(&token("t1", "admin", Some("acme")))
            .await
            .unwrap();
        assert!(!repo.has_admin(now).await.unwrap());
        repo.add_token(&token("t2", "admin", None)).await.unwrap();
        assert!(repo.has_admin(now).await.unwrap());
        let t = repo.token_by_hash("hash-t2").await.unwrap().unwrap();
        assert_eq!((t.id.as_str(), t.tenant), ("t2", None));
        assert!(repo.token_by_hash("nope").await.unwrap().is_none());
        repo.touch_token("t2", now).await.unwrap();
        let t = repo.token_by_hash("hash-t2").await.unwrap().unwrap();
        assert_eq!(t.last_used.map(|t| t.timestamp()), Some(now.timestamp()));
        repo.revoke_token("t2", now).await.unwrap();
        assert!(!repo.has_admin(now).await.unwrap());
        assert!(!repo.token("t2").await.unwrap().is_valid(now));
        // Looked up by its secret (as every API call does), revoked at once.
        let t = repo.token_by_hash("hash-t2").await.unwrap().unwrap();
        assert!(!t.is_valid(now), "{t:?}");
        assert!(matches!(
            repo.revoke_token("zz", now).await,
            Err(DbError::NotFound { kind: "token", .. })
        ));
        // An expired admin token does not count either.
        let mut t3 = token("t3", "admin", None);
        t3.expires = Some(now - Duration::seconds(1));
        repo.add_token(&t3).await.unwrap();
        assert!(!repo.has_admin(now).await.unwrap());

        let u = UserRecord {
            name: "ann".into(),
            password_hash: "$argon2id$x".into(),
            role: "operator".into(),
            tenant: Some("acme".into()),
            created: now,
        };
        assert!(repo.add_user(&u).await.unwrap());
        assert!(!repo.add_user(&u).await.unwrap(), "a second add is refused");
        repo.add_session(&SessionRecord {
            id_hash: "s1".into(),
            user: "ann".into(),
            csrf: "c".into(),
            created: now,
            expires: now + Duration::hours(1),
        })
        .await
        .unwrap();
        assert!(repo.session("s1", now).await.unwrap().is_some());
        assert!(
            repo.session("s1", now + Duration::hours(2))
                .await
                .unwrap()
                .is_none(),
            "an expired session is not found"
        );
        drop(repo);
        // Reopened: all of it is on disk; removing the user ends its session.
        let repo = db.open().await;
        assert_eq!(repo.users().await.unwrap(), vec![u]);
        assert_eq!(repo.tokens().await.unwrap().len(), 3);
        repo.remove_user("ann").await.unwrap();
        assert!(repo.session("s1", now).await.unwrap().is_none());
        assert!(matches!(
            repo.user("ann").await,
            Err(DbError::NotFound { kind: "user", .. })
        ));
    }

    on_both! {
        repo: [],
        db: [tokens_users_and_sessions_round_trip_and_an_admin_is_counted_while_valid],
    }
}
