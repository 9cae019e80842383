//! [`ManagedVmRepo`] on SQL (SQLite or PostgreSQL).

use super::SqlRepo;
use super::rows::{get, parse_ts, ts};
use crate::error::query;
use crate::{DbError, ManagedVm, ManagedVmRepo};

#[async_trait::async_trait]
impl ManagedVmRepo for SqlRepo {
    async fn managed_vms(&self) -> Result<Vec<ManagedVm>, DbError> {
        sqlx::query(
            "SELECT name, spec, template, tenant, created_by, created_at FROM managed_vms ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("list vms made from templates"))?
        .iter()
        .map(|r| {
            let at: String = get(r, "created_at")?;
            Ok(ManagedVm {
                name: get(r, "name")?,
                spec: get(r, "spec")?,
                template: get(r, "template")?,
                tenant: get(r, "tenant")?,
                created_by: get(r, "created_by")?,
                created_at: parse_ts(&at, "created_at")?,
            })
        })
        .collect()
    }

    async fn put_managed_vm(&self, v: &ManagedVm) -> Result<(), DbError> {
        self.write_one(
            format!("store vm '{}'", v.name),
            sqlx::query(
                "INSERT INTO managed_vms (name, spec, template, tenant, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
                 spec = excluded.spec, template = excluded.template, tenant = excluded.tenant, \
                 created_by = excluded.created_by, created_at = excluded.created_at",
            )
            .bind(&v.name)
            .bind(&v.spec)
            .bind(&v.template)
            .bind(&v.tenant)
            .bind(&v.created_by)
            .bind(ts(v.created_at)),
        )
        .await?;
        Ok(())
    }

    async fn delete_managed_vm(&self, name: &str) -> Result<bool, DbError> {
        let done = self
            .write_one(
                format!("delete vm '{name}'"),
                sqlx::query("DELETE FROM managed_vms WHERE name = $1").bind(name),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::{ManagedVm, ManagedVmRepo, SqlRepo};

    #[tokio::test]
    async fn vms_made_from_templates_are_kept_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqlRepo::open(&dir.path().join("state.db")).await.unwrap();
        assert!(repo.managed_vms().await.unwrap().is_empty());
        let v = ManagedVm {
            name: "pbx2".into(),
            spec: r#"{"host":"h2","command":"x"}"#.into(),
            template: "base".into(),
            tenant: Some("acme".into()),
            created_by: "alice".into(),
            created_at: Utc::now(),
        };
        repo.put_managed_vm(&v).await.unwrap();
        let all = repo.managed_vms().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].spec.as_str(), all[0].template.as_str()),
            (v.spec.as_str(), "base")
        );
        assert!(repo.delete_managed_vm("pbx2").await.unwrap());
        assert!(!repo.delete_managed_vm("pbx2").await.unwrap());
    }
}
