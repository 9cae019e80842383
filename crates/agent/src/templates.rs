//! Templates in the datastores as the controller reaches them
//! ([`StoreHandle`]): list, make, copy, delete. A template is a point's
//! manifest kept under a name (`standby_store::Template`): making or
//! copying one moves no chunk a store already has.
//!
//! A store the controller opens is worked on here; one an agent serves
//! by that agent (`/agent/v1/store/templates`, `template-create`,
//! `template-delete`), where the data is. A template is made in every
//! store that holds its point (no data moves); a copy into a store that
//! lacks the point is made between stores the controller opens only.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use standby_store::{Datastore, PointId, StoreError, SyncStats, Template};

use crate::access::{StoreCall, StoreHandle};
use crate::error::AgentError;
use crate::progress::Progress;

const QUICK: std::time::Duration = std::time::Duration::from_secs(60);

/// `/agent/v1/store/template-create` and `template-delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TemplateCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub name: String,
    /// The point to make it from (create only).
    #[serde(default)]
    pub point: Option<String>,
}

/// `/agent/v1/store/templates`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TemplatesDone {
    pub templates: Vec<Template>,
    /// Templates that do not read, each with why.
    #[serde(default)]
    pub unreadable: Vec<String>,
}

async fn blocking<T: Send + 'static>(
    store: &Datastore,
    f: impl FnOnce(Datastore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AgentError> {
    let s = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(s)).await??)
}

/// The template work on an open store: the controller's for its own
/// stores, an agent's for the stores it serves.
pub async fn scan_open(store: &Datastore) -> Result<TemplatesDone, AgentError> {
    let (templates, bad) = blocking(store, |s| s.scan_templates()).await?;
    Ok(TemplatesDone {
        templates,
        unreadable: bad.iter().map(|e| e.to_string()).collect(),
    })
}

pub async fn create_open(
    store: &Datastore,
    name: &str,
    point: &PointId,
) -> Result<Template, AgentError> {
    let (n, p) = (name.to_string(), point.clone());
    blocking(store, move |s| s.create_template(&n, &p)).await
}

pub async fn delete_open(store: &Datastore, name: &str) -> Result<bool, AgentError> {
    let n = name.to_string();
    blocking(store, move |s| s.delete_template(&n)).await
}

impl StoreHandle {
    fn template_call(&self, name: &str, point: Option<&PointId>) -> TemplateCall {
        TemplateCall {
            store: StoreCall {
                datastore: self.name().to_string(),
                config: self.config().clone(),
            },
            name: name.to_string(),
            point: point.map(ToString::to_string),
        }
    }

    /// Every template that reads, by name; the unreadable are logged.
    pub async fn templates(&self) -> Result<Vec<Template>, AgentError> {
        let done = match self {
            StoreHandle::Here { store, .. } => scan_open(store).await?,
            StoreHandle::Agent { server, .. } => {
                let call = StoreCall {
                    datastore: self.name().to_string(),
                    config: self.config().clone(),
                };
                server.client.call("store/templates", &call, QUICK).await?
            }
        };
        for e in &done.unreadable {
            tracing::warn!(datastore = %self.name(), "template left out: {e}");
        }
        Ok(done.templates)
    }

    /// Make template `name` here from point `point`, which this store
    /// holds: no data moves.
    pub async fn create_template(
        &self,
        name: &str,
        point: &PointId,
    ) -> Result<Template, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => create_open(store, name, point).await,
            StoreHandle::Agent { server, .. } => {
                let call = self.template_call(name, Some(point));
                server
                    .client
                    .call("store/template-create", &call, QUICK)
                    .await
            }
        }
    }

    /// False when it held none of that name.
    pub async fn delete_template(&self, name: &str) -> Result<bool, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => delete_open(store, name).await,
            StoreHandle::Agent { server, .. } => {
                let call = self.template_call(name, None);
                server
                    .client
                    .call("store/template-delete", &call, QUICK)
                    .await
            }
        }
    }
}

/// Copy template `name` from `from` to `to`: only the chunks `to` lacks.
/// Between stores the controller opens; a store an agent serves gets a
/// template only where its point is (see [`StoreHandle::create_template`]).
pub async fn copy_template(
    from: &StoreHandle,
    to: &StoreHandle,
    name: &str,
    progress: Arc<dyn Progress>,
) -> Result<SyncStats, AgentError> {
    let (Some(src), Some(dst)) = (from.here().cloned(), to.here().cloned()) else {
        return Err(AgentError::Conflict(format!(
            "template {name} cannot be copied from datastore {} to {}: a store an agent serves gets a template only where its point is (copy the point there first: a protection run of its group)",
            from.name(),
            to.name()
        )));
    };
    let n = name.to_string();
    Ok(
        tokio::task::spawn_blocking(move || src.sync_template(&n, &dst, progress.as_ref()))
            .await??,
    )
}
