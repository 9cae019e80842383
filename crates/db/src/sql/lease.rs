//! [`LeaseRepo`] on SQL (SQLite or PostgreSQL). The database's clock is
//! read in milliseconds since the Unix epoch by a per-backend expression.

use std::time::Duration;

use sqlx::any::AnyRow;

use super::rows::get;
use super::{Backend, SqlRepo};
use crate::error::query;
use crate::{DbError, Lease, LeaseRepo};

impl SqlRepo {
    /// The database's clock, in milliseconds since the Unix epoch.
    pub(super) fn now_ms_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// The lease row with the database's `now_ms`.
    fn lease_sql(&self) -> String {
        format!(
            "SELECT holder, url, epoch, expires_ms, {} AS now_ms FROM leader WHERE id = 1",
            self.now_ms_sql()
        )
    }
}

fn lease_row(r: &AnyRow, me: &str) -> Result<Lease, DbError> {
    let holder: String = get(r, "holder")?;
    let left = get::<i64>(r, "expires_ms")? - get::<i64>(r, "now_ms")?;
    Ok(Lease {
        held: holder == me && left > 0,
        holder,
        url: get(r, "url")?,
        epoch: u64::try_from(get::<i64>(r, "epoch")?).unwrap_or(0),
        remaining: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl LeaseRepo for SqlRepo {
    async fn acquire_lease(
        &self,
        holder: &str,
        url: &str,
        ttl: Duration,
        min_epoch: u64,
        take_over: bool,
    ) -> Result<Lease, DbError> {
        let what = format!("take the leader lease for '{holder}'");
        // SQLite: the write lock. PostgreSQL: the lease row's own lock, not
        // the writers' advisory lock, so a queue of writers cannot hold up
        // the renewal. Replicas take turns on the row FOR NO KEY UPDATE;
        // a fenced write holds it FOR KEY SHARE, which only a change of
        // the epoch (a key: a takeover) waits for, so a takeover waits for
        // the writes the old holder has under way and a renewal does not.
        let mut tx = match self.backend {
            Backend::Sqlite => self.begin_write(&self.lease_pool, &what, false).await?,
            Backend::Postgres => self.lease_pool.begin().await.map_err(query(&what))?,
        };
        let now = self.now_ms_sql();
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR NO KEY UPDATE",
        };
        let current = sqlx::query(&format!("{}{lock}", self.lease_sql()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query(&what))?;
        let min_epoch = i64::try_from(min_epoch).unwrap_or(i64::MAX);
        let epoch = match &current {
            None => Some(min_epoch.max(1)),
            Some(r) => {
                let (h, epoch): (String, i64) = (get(r, "holder")?, get(r, "epoch")?);
                let lapsed = get::<i64>(r, "expires_ms")? <= get::<i64>(r, "now_ms")?;
                if lapsed || take_over {
                    // Nobody holds it (or it is ours to take): a new epoch.
                    Some((epoch + 1).max(min_epoch))
                } else if h == holder {
                    Some(epoch.max(min_epoch))
                } else {
                    None
                }
            }
        };
        let same = current.as_ref().and_then(|r| {
            let (h, e): (String, i64) = (get(r, "holder").ok()?, get(r, "epoch").ok()?);
            (h == holder).then_some(e)
        });
        if let Some(epoch) = epoch.filter(|e| Some(*e) == same) {
            // A renewal: the epoch (a key) is not touched, so the update
            // does not wait for the fenced writes under way.
            sqlx::query(&format!(
                "UPDATE leader SET url = $2, expires_ms = {now} + $3 WHERE id = 1 AND holder = $1 \
                 AND epoch = $4"
            ))
            .bind(holder)
            .bind(url)
            .bind(ms(ttl))
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(query(&what))?;
        } else if let Some(epoch) = epoch {
            sqlx::query(&format!(
                "INSERT INTO leader (id, holder, url, epoch, expires_ms) \
                 VALUES (1, $1, $2, $3, {now} + $4) \
                 ON CONFLICT (id) DO UPDATE SET holder = $1, url = $2, epoch = $3, \
                 expires_ms = {now} + $4"
            ))
            .bind(holder)
            .bind(url)
            .bind(epoch)
            .bind(ms(ttl))
            .execute(&mut *tx)
            .await
            .map_err(query(&what))?;
        }
        let r = sqlx::query(&self.lease_sql())
            .fetch_one(&mut *tx)
            .await
            .map_err(query(&what))?;
        let lease = lease_row(&r, holder)?;
        tx.commit().await.map_err(query(&what))?;
        if lease.held {
            self.lead_writes(holder);
        }
        Ok(lease)
    }

    async fn release_lease(&self, holder: &str) -> Result<(), DbError> {
        let what = format!("release the leader lease of '{holder}'");
        sqlx::query(&format!(
            "UPDATE leader SET expires_ms = {} WHERE id = 1 AND holder = $1",
            self.now_ms_sql()
        ))
        .bind(holder)
        .execute(&self.lease_pool)
        .await
        .map_err(query(&what))?;
        Ok(())
    }

    async fn lease(&self, holder: &str) -> Result<Option<Lease>, DbError> {
        sqlx::query(&self.lease_sql())
            .fetch_optional(&self.lease_pool)
            .await
            .map_err(query("read the leader lease"))?
            .map(|r| lease_row(&r, holder))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::LeaseRepo;
    use crate::sql::SqlRepo;

    const TTL: Duration = Duration::from_millis(400);

    async fn replicas_take_turns_and_epochs_only_grow(repo: SqlRepo) {
        assert_eq!(repo.lease("a").await.unwrap(), None);
        let a = repo
            .acquire_lease("a", "http://a", TTL, 0, false)
            .await
            .unwrap();
        assert!(a.held && a.epoch == 1, "{a:?}");
        // b waits while a holds it; a's renewal keeps the epoch.
        let b = repo
            .acquire_lease("b", "http://b", TTL, 0, false)
            .await
            .unwrap();
        assert!(!b.held && b.holder == "a" && b.url == "http://a", "{b:?}");
        assert!(b.remaining > Duration::ZERO && b.remaining <= TTL);
        let a = repo
            .acquire_lease("a", "http://a", TTL, 0, false)
            .await
            .unwrap();
        assert_eq!((a.held, a.epoch), (true, 1));
        // a stops renewing: once it lapsed, b takes it with a new epoch.
        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
        assert!(!repo.lease("a").await.unwrap().unwrap().held);
        let b = repo
            .acquire_lease("b", "http://b", TTL, 0, false)
            .await
            .unwrap();
        assert_eq!((b.held, b.epoch), (true, 2));
        // a, back, cannot renew what it lost.
        let a = repo
            .acquire_lease("a", "http://a", TTL, 0, false)
            .await
            .unwrap();
        assert!(!a.held && a.holder == "b");
        // Agents have seen epoch 7 (a database that was lost): the holder
        // raises its epoch above it.
        let b = repo
            .acquire_lease("b", "http://b", TTL, 8, false)
            .await
            .unwrap();
        assert_eq!((b.held, b.epoch), (true, 8));
        // A clean stop lets the next replica in at once, one epoch on.
        repo.release_lease("b").await.unwrap();
        let a = repo
            .acquire_lease("a", "http://a", TTL, 0, false)
            .await
            .unwrap();
        assert_eq!((a.held, a.epoch), (true, 9));
        // A single controller owning its database takes over regardless.
        let c = repo
            .acquire_lease("c", "http://c", TTL, 0, true)
            .await
            .unwrap();
        assert_eq!((c.held, c.epoch), (true, 10));
    }

    on_both! {
        repo: [replicas_take_turns_and_epochs_only_grow],
    }
}
