//! What every handler can reach: the engine and the authentication state.

use std::sync::Arc;

use axum::extract::FromRef;
use standby_engine::Controller;

use crate::auth::Auth;

/// The server's state. Handlers take the part they need
/// (`State<Arc<Controller>>` or `State<Arc<Auth>>`).
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Controller>,
    pub auth: Arc<Auth>,
}

impl FromRef<AppState> for Arc<Controller> {
    fn from_ref(s: &AppState) -> Self {
        s.engine.clone()
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}
