//! Templates in the datastores as the controller reaches them
//! ([`StoreHandle`]): list, make, copy, delete. A template is a point's
//! manifest kept under a name (`standby_store::Template`): making or
//! copying one moves no chunk a store already has.
//!
//! Only stores the controller opens itself hold templates for now; a
//! store an agent serves answers with an error saying so.

use std::sync::Arc;

use standby_store::{Datastore, PointId, StoreError, SyncStats, Template};

use crate::access::StoreHandle;
use crate::error::AgentError;
use crate::progress::Progress;

async fn blocking<T: Send + 'static>(
    store: &Datastore,
    f: impl FnOnce(Datastore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AgentError> {
    let s = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(s)).await??)
}

impl StoreHandle {
    /// The store itself, for a template operation.
    fn for_templates(&self) -> Result<&Datastore, AgentError> {
        self.here().ok_or_else(|| {
            AgentError::Conflict(format!(
                "datastore {} is served by agent {}: templates are kept only in datastores the controller opens (not supported yet at agents)",
                self.name(),
                self.agent().unwrap_or("?")
            ))
        })
    }

    /// True when templates can be kept in this store.
    pub fn holds_templates(&self) -> bool {
        self.here().is_some()
    }

    /// Every template that reads, by name; the unreadable are logged.
    pub async fn templates(&self) -> Result<Vec<Template>, AgentError> {
        let store = self.for_templates()?;
        let (found, bad) = blocking(store, |s| s.scan_templates()).await?;
        for e in &bad {
            tracing::warn!(datastore = %self.name(), "template left out: {e}");
        }
        Ok(found)
    }

    pub async fn template(&self, name: &str) -> Result<Option<Template>, AgentError> {
        let store = self.for_templates()?;
        let n = name.to_string();
        blocking(store, move |s| match s.load_template(&n) {
            Ok(t) => Ok(Some(t)),
            Err(StoreError::TemplateNotFound(..)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    pub async fn create_template(
        &self,
        name: &str,
        point: &PointId,
    ) -> Result<Template, AgentError> {
        let store = self.for_templates()?;
        let (n, p) = (name.to_string(), point.clone());
        blocking(store, move |s| s.create_template(&n, &p)).await
    }

    /// False when it held none of that name.
    pub async fn delete_template(&self, name: &str) -> Result<bool, AgentError> {
        let store = self.for_templates()?;
        let n = name.to_string();
        blocking(store, move |s| s.delete_template(&n)).await
    }
}

/// Copy template `name` from `from` to `to`: only the chunks `to` lacks
/// (none when the point it was made from is there already).
pub async fn copy_template(
    from: &StoreHandle,
    to: &StoreHandle,
    name: &str,
    progress: Arc<dyn Progress>,
) -> Result<SyncStats, AgentError> {
    let (src, dst) = (from.for_templates()?.clone(), to.for_templates()?.clone());
    let n = name.to_string();
    Ok(
        tokio::task::spawn_blocking(move || src.sync_template(&n, &dst, progress.as_ref()))
            .await??,
    )
}
