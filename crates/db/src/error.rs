use std::path::PathBuf;

/// Everything that can go wrong in the control-plane database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unable to create database directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unable to open database {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },

    #[error("unable to migrate database schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),

    /// A statement failed; `what` says what it was doing, e.g.
    /// `update job 7`.
    #[error("unable to {what}")]
    Query {
        what: String,
        #[source]
        source: sqlx::Error,
    },

    /// `kind` is `site`, `host`, `vm`, `group`, `point` or `job`.
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },

    #[error("host '{host}' is not at site '{site}'")]
    HostNotAtSite { host: String, site: String },

    /// A value could not be stored or a stored value could not be read
    /// back (a size beyond i64, a malformed timestamp).
    #[error("bad value for {what}: {message}")]
    Value { what: String, message: String },
}

impl DbError {
    /// Whether trying the same call again may succeed: the database was
    /// busy or unreachable, not wrong.
    pub fn is_temporary(&self) -> bool {
        let source = match self {
            DbError::Open { source, .. } | DbError::Query { source, .. } => source,
            _ => return false,
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their
            // extended codes.
            sqlx::Error::Database(e) => e
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
            _ => false,
        }
    }
}

/// `map_err` adapter naming what a statement was doing.
pub(crate) fn query(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DbError {
    let what = what.into();
    move |source| DbError::Query { what, source }
}
