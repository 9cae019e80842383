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

    /// `url` is shown without its password.
    #[error("unable to connect to database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("unable to migrate database schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),

    /// The database was migrated by a newer standby (`found`, the newest
    /// migration applied; `known`, this standby's newest): refused, never
    /// touched.
    #[error(
        "database schema version {found} is newer than this standby's ({known}): run the newer standby, or restore the database saved before the upgrade"
    )]
    SchemaTooNew { found: i64, known: i64 },

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

    /// A write of a controller that no longer holds the leader lease
    /// (another replica took it, or it lapsed): refused, so a deposed
    /// leader changes nothing.
    #[error("unable to {what}: controller {holder} no longer holds the leader lease")]
    NotLeader { holder: String, what: String },

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
            DbError::Open { source, .. }
            | DbError::Connect { source, .. }
            | DbError::Query { source, .. } => source,
            _ => return false,
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // PostgreSQL: a lost connection (class 08), a serialization
            // failure or deadlock (40001, 40P01), a lock wait that timed
            // out (55P03), a server shutting down or starting (57P01-03),
            // too many connections (53300).
            sqlx::Error::Database(e)
                if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                e.code().is_some_and(|c| {
                    c.starts_with("08")
                        || matches!(
                            c.as_ref(),
                            "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300"
                        )
                })
            }
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), including
            // their extended codes.
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
