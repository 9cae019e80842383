//! [`ServiceRepo`] on SQL (SQLite or PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;

use super::SqlRepo;
use super::rows::{get, not_found, opt_time, ts};
use crate::error::query;
use crate::{DbError, ServiceRecord, ServiceRepo};

const COLUMNS: &str = "name, active_site, switched_at";

fn row(r: &AnyRow) -> Result<ServiceRecord, DbError> {
    Ok(ServiceRecord {
        name: get(r, "name")?,
        active_site: get(r, "active_site")?,
        switched_at: opt_time(r, "switched_at")?,
    })
}

#[async_trait::async_trait]
impl ServiceRepo for SqlRepo {
    async fn init_service(&self, name: &str, site: &str) -> Result<ServiceRecord, DbError> {
        let what = format!("record service '{name}'");
        self.write_one(
            &what,
            sqlx::query(
                "INSERT INTO services (name, active_site, switched_at) VALUES ($1, $2, NULL) \
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(site),
        )
        .await?;
        self.service(name).await
    }

    async fn service(&self, name: &str) -> Result<ServiceRecord, DbError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM services WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(format!("read service '{name}'")))?;
        match r {
            Some(r) => row(&r),
            None => Err(not_found("service", name)),
        }
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>, DbError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM services ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(query("list services"))?
            .iter()
            .map(row)
            .collect()
    }

    async fn switch_service(
        &self,
        name: &str,
        site: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ServiceRecord>, DbError> {
        let what = format!("switch service '{name}' to site '{site}'");
        let mut tx = self.write_tx(&what).await?;
        let before = sqlx::query(&format!("SELECT {COLUMNS} FROM services WHERE name = $1"))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query(&what))?
            .map(|r| row(&r))
            .transpose()?;
        sqlx::query(
            "INSERT INTO services (name, active_site, switched_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET active_site = excluded.active_site, \
             switched_at = excluded.switched_at",
        )
        .bind(name)
        .bind(site)
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(query(&what))?;
        tx.commit().await.map_err(query(&what))?;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::testing::TestDb;

    async fn a_service_keeps_its_site_until_switched(db: TestDb) {
        let repo = db.open().await;
        assert!(matches!(
            repo.service("sip").await,
            Err(DbError::NotFound {
                kind: "service",
                ..
            })
        ));
        let r = repo.init_service("sip", "site1").await.unwrap();
        assert_eq!((r.active_site.as_str(), r.switched_at), ("site1", None));
        // A second init does not overwrite.
        let r = repo.init_service("sip", "site2").await.unwrap();
        assert_eq!(r.active_site, "site1");
        let at = Utc::now();
        let before = repo.switch_service("sip", "site2", at).await.unwrap();
        assert_eq!(before.unwrap().active_site, "site1");
        drop(repo);
        // Reopened: the switch is on disk.
        let repo = db.open().await;
        let r = repo.init_service("sip", "site1").await.unwrap();
        assert_eq!(r.active_site, "site2");
        assert_eq!(
            r.switched_at.map(|t| t.timestamp_micros()),
            Some(at.timestamp_micros())
        );
        assert_eq!(repo.services().await.unwrap(), vec![r]);
    }

    on_both! {
        repo: [],
        db: [a_service_keeps_its_site_until_switched],
    }
}
