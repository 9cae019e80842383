//! Schema versions: a database of an older layout or schema opens (and is
//! migrated in place), one a newer standby migrated is refused untouched.

use standby_types::config::{Config, EXAMPLE};

use super::SqlRepo;
use crate::{DbError, Repo};

fn config(src: &str) -> Config {
    Config::parse(src, std::path::Path::new("standby.toml")).expect("test config is valid")
}

/// A database written before PostgreSQL existed (sqlx's SQLite driver,
/// migrations in `migrations/`) opens: sqlx checks each migration's
/// version and checksum, not its directory, and the files moved unchanged.
#[tokio::test]
async fn a_database_of_the_sqlite_only_layout_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO fences (site, since, reason) \
         VALUES ('site1', '2026-01-01T00:00:00.000000000Z', 'old')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let repo = SqlRepo::open(&path).await.unwrap();
    let fences = repo.fences().await.unwrap();
    assert_eq!(
        (fences[0].site.as_str(), fences[0].reason.as_str()),
        ("site1", "old")
    );
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
}

/// A database a newer standby migrated (a migration this one does not
/// know) is refused with the versions, untouched; closing a file database
/// leaves everything in the database file (no WAL, or an empty one).
#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let repo = SqlRepo::open(&path).await.unwrap();
    let known: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&repo.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&repo.pool)
    .await
    .unwrap();
    repo.close().await;
    let wal = std::fs::metadata(dir.path().join("state.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "close left a WAL with frames in it");

    let err = SqlRepo::open(&path).await.err().unwrap();
    assert!(
        matches!(err, DbError::SchemaTooNew { found: 999, known: k } if k == known),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "database schema version 999 is newer than this standby's ({known}): run the newer standby, or restore the database saved before the upgrade"
        )
    );
    assert!(!err.is_temporary());
    // Nothing was migrated or removed: the unknown migration is still there.
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(newest, 999);
}

/// A database an older standby made (every migration but the newest
/// applied, rows in it) is migrated in place at open and keeps its rows.
#[tokio::test]
async fn a_database_of_an_older_schema_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let mut older = sqlx::migrate!("./migrations/sqlite");
    let newest = older.iter().map(|m| m.version).max().unwrap();
    older.migrations = older
        .iter()
        .filter(|m| m.version < newest)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    older.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO fences (site, since, reason) \
         VALUES ('site1', '2026-01-01T00:00:00.000000000Z', 'old')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let repo = SqlRepo::open(&path).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&repo.pool)
        .await
        .unwrap();
    assert_eq!(applied, newest);
    assert_eq!(repo.fences().await.unwrap()[0].reason, "old");
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
}
