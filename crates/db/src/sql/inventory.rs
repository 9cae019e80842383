//! The inventory: `standby.toml` copied into the sites, hosts, VMs, disks
//! and groups tables, and the group reads.

use std::collections::{BTreeSet, HashMap};

use standby_types::config::Config;
use standby_types::model::GroupRecord;

use crate::DbError;
use crate::error::query;

use super::SqlRepo;
use super::rows::{get, int, lists, opt_time, with_key};

impl SqlRepo {
    /// [`Repo::apply_config`](crate::Repo::apply_config): write the configuration's inventory in one
    /// transaction.
    pub(super) async fn write_config(&self, cfg: &Config) -> Result<(), DbError> {
        let mut tx = self.write_tx("begin applying the configuration").await?;

        for (name, site) in &cfg.sites {
            sqlx::query(
                "INSERT INTO sites (name, description) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description",
            )
            .bind(name)
            .bind(&site.description)
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store site '{name}'")))?;
        }

        for (name, host) in &cfg.hosts {
            sqlx::query(
                "INSERT INTO hosts (name, site, driver) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET site = excluded.site, driver = excluded.driver",
            )
            .bind(name)
            .bind(&host.site)
            .bind(host.driver.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store host '{name}'")))?;
        }

        let active: HashMap<String, String> = sqlx::query("SELECT name, active_host FROM vms")
            .fetch_all(&mut *tx)
            .await
            .map_err(query("list vms"))?
            .iter()
            .map(|r| Ok((get(r, "name")?, get(r, "active_host")?)))
            .collect::<Result<_, DbError>>()?;
        for (name, vm) in &cfg.vms {
            let home_site = cfg
                .site_of_host(&vm.host)
                .ok_or_else(|| DbError::NotFound {
                    kind: "host",
                    name: vm.host.clone(),
                })?;
            // Keep the VM where it runs unless that host is gone from the
            // configuration; the host's site may have been edited.
            let (active_site, active_host) = match active.get(name) {
                Some(h) if cfg.hosts.contains_key(h) => (cfg.hosts[h].site.as_str(), h.as_str()),
                _ => (home_site, vm.host.as_str()),
            };
            sqlx::query(
                "INSERT INTO vms (name, home_site, home_host, dr_site, active_site, active_host) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO UPDATE SET home_site = excluded.home_site, \
                 home_host = excluded.home_host, dr_site = excluded.dr_site, \
                 active_site = excluded.active_site, active_host = excluded.active_host",
            )
            .bind(name)
            .bind(home_site)
            .bind(&vm.host)
            .bind(vm.dr_sites().first().copied())
            .bind(active_site)
            .bind(active_host)
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store vm '{name}'")))?;

            sqlx::query("DELETE FROM disks WHERE vm = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("replace disks of vm '{name}'")))?;
            for (pos, disk) in vm.disks.iter().enumerate() {
                sqlx::query("INSERT INTO disks (vm, name, position, size) VALUES ($1, $2, $3, $4)")
                    .bind(name)
                    .bind(&disk.name)
                    .bind(pos as i64)
                    .bind(int(disk.size.0, "disk size")?)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("store disk '{}' of vm '{name}'", disk.name)))?;
            }
        }

        for (name, group) in &cfg.groups {
            // Right-hand sides see the old row: next_run survives only an
            // unchanged schedule.
            sqlx::query(
                "INSERT INTO groups (name, schedule) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule, \
                 next_run = CASE WHEN groups.schedule = excluded.schedule \
                 THEN groups.next_run ELSE NULL END",
            )
            .bind(name)
            .bind(group.schedule.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store group '{name}'")))?;
            for table in ["group_members", "group_datastores"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE group_name = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("replace {table} of group '{name}'")))?;
            }
            for (pos, vm) in group.members.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO group_members (group_name, position, vm) VALUES ($1, $2, $3)",
                )
                .bind(name)
                .bind(pos as i64)
                .bind(vm)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("store member '{vm}' of group '{name}'")))?;
            }
            for (pos, ds) in group.datastores.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO group_datastores (group_name, position, datastore) \
                     VALUES ($1, $2, $3)",
                )
                .bind(name)
                .bind(pos as i64)
                .bind(ds)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("store datastore '{ds}' of group '{name}'")))?;
            }
        }

        // Delete what is no longer configured, dependents first. Points and
        // jobs have no foreign keys and stay.
        let keep: [(&str, &str, BTreeSet<&str>); 4] = [
            (
                "groups",
                "group",
                cfg.groups.keys().map(String::as_str).collect(),
            ),
            ("vms", "vm", cfg.vms.keys().map(String::as_str).collect()),
            (
                "hosts",
                "host",
                cfg.hosts.keys().map(String::as_str).collect(),
            ),
            (
                "sites",
                "site",
                cfg.sites.keys().map(String::as_str).collect(),
            ),
        ];
        for (table, kind, keep) in keep {
            let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {table}"))
                .fetch_all(&mut *tx)
                .await
                .map_err(query(format!("list {table}")))?;
            for name in names.iter().filter(|n| !keep.contains(n.as_str())) {
                sqlx::query(&format!("DELETE FROM {table} WHERE name = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("delete {kind} '{name}'")))?;
                tracing::info!("{kind} '{name}' is no longer configured; removed it");
            }
        }

        tx.commit()
            .await
            .map_err(query("commit the configuration"))?;
        self.vms_memo.invalidate();
        Ok(())
    }

    pub(super) async fn load_groups(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<GroupRecord>, DbError> {
        let filter = if name.is_some() {
            "WHERE g.name = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT g.name, g.schedule, g.next_run, g.last_run, g.last_status \
             FROM groups g {filter} ORDER BY g.name"
        );
        let rows = with_key(&sql, name)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list groups"))?;
        let sql = format!(
            "SELECT m.group_name, m.vm FROM group_members m \
             JOIN groups g ON g.name = m.group_name {filter} \
             ORDER BY m.group_name, m.position"
        );
        let mut members = lists(
            with_key(&sql, name)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list group members"))?,
        )?;
        let sql = format!(
            "SELECT d.group_name, d.datastore FROM group_datastores d \
             JOIN groups g ON g.name = d.group_name {filter} \
             ORDER BY d.group_name, d.position"
        );
        let mut datastores = lists(
            with_key(&sql, name)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list group datastores"))?,
        )?;
        rows.iter()
            .map(|r| {
                let name: String = get(r, "name")?;
                Ok(GroupRecord {
                    schedule: get(r, "schedule")?,
                    members: members.remove(&name).unwrap_or_default(),
                    datastores: datastores.remove(&name).unwrap_or_default(),
                    next_run: opt_time(r, "next_run")?,
                    last_run: opt_time(r, "last_run")?,
                    last_status: get(r, "last_status")?,
                    managed: false,
                    name,
                })
            })
            .collect()
    }
}
