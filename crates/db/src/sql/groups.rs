//! [`GroupRepo`] on SQL (SQLite or PostgreSQL).

use super::SqlRepo;
use super::rows::{get, parse_ts, ts};
use crate::error::query;
use crate::{DbError, GroupRepo, ManagedGroup};

#[async_trait::async_trait]
impl GroupRepo for SqlRepo {
    async fn managed_groups(&self) -> Result<Vec<ManagedGroup>, DbError> {
        sqlx::query(
            "SELECT name, spec, tenant, updated_by, updated_at FROM managed_groups ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("list groups made through the API"))?
        .iter()
        .map(|r| {
            let at: String = get(r, "updated_at")?;
            Ok(ManagedGroup {
                name: get(r, "name")?,
                spec: get(r, "spec")?,
                tenant: get(r, "tenant")?,
                updated_by: get(r, "updated_by")?,
                updated_at: parse_ts(&at, "updated_at")?,
            })
        })
        .collect()
    }

    async fn put_managed_group(&self, g: &ManagedGroup) -> Result<(), DbError> {
        self.write_one(
            format!("store group '{}'", g.name),
            sqlx::query(
                "INSERT INTO managed_groups (name, spec, tenant, updated_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
                 spec = excluded.spec, tenant = excluded.tenant, \
                 updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            )
            .bind(&g.name)
            .bind(&g.spec)
            .bind(&g.tenant)
            .bind(&g.updated_by)
            .bind(ts(g.updated_at)),
        )
        .await?;
        Ok(())
    }

    async fn delete_managed_group(&self, name: &str) -> Result<bool, DbError> {
        let done = self
            .write_one(
                format!("delete group '{name}'"),
                sqlx::query("DELETE FROM managed_groups WHERE name = $1").bind(name),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::{GroupRepo, ManagedGroup, SqlRepo};

    #[tokio::test]
    async fn groups_made_through_the_api_are_kept_replaced_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqlRepo::open(&dir.path().join("state.db")).await.unwrap();
        assert!(repo.managed_groups().await.unwrap().is_empty());
        let mut g = ManagedGroup {
            name: "silver".into(),
            spec: r#"{"members":["a"]}"#.into(),
            tenant: Some("acme".into()),
            updated_by: "alice".into(),
            updated_at: Utc::now(),
        };
        repo.put_managed_group(&g).await.unwrap();
        g.spec = r#"{"members":["a","b"]}"#.into();
        repo.put_managed_group(&g).await.unwrap();
        let all = repo.managed_groups().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].spec, g.spec);
        assert_eq!(all[0].tenant.as_deref(), Some("acme"));
        assert!(repo.delete_managed_group("silver").await.unwrap());
        assert!(!repo.delete_managed_group("silver").await.unwrap());
        assert!(repo.managed_groups().await.unwrap().is_empty());
    }
}
