//! The repository tests run on both backends: [`on_both!`] makes a
//! `sqlite` and a `postgres` test of each test body, on a fresh database
//! (SQLite in memory or in a file, a new database on the test binary's
//! PostgreSQL cluster from `standby-testkit`).

use std::path::PathBuf;

use super::SqlRepo;

/// A database a test can open again, as a restarted controller does.
pub(super) enum TestDb {
    /// A SQLite file in a directory removed with the value.
    File {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    /// A database on the test cluster.
    Postgres(String),
}

impl TestDb {
    pub(super) fn sqlite_file() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb::File {
            path: dir.path().join("data/state.db"),
            _dir: dir,
        }
    }

    pub(super) fn postgres() -> TestDb {
        TestDb::Postgres(standby_testkit::postgres::database())
    }

    /// Open (or connect to) the database.
    pub(super) async fn open(&self) -> SqlRepo {
        match self {
            TestDb::File { path, .. } => SqlRepo::open(path).await.unwrap(),
            TestDb::Postgres(url) => SqlRepo::connect(url).await.unwrap(),
        }
    }
}

/// A fresh PostgreSQL database, migrated.
pub(super) async fn postgres_repo() -> SqlRepo {
    TestDb::postgres().open().await
}

/// `on_both! { repo: [a, b], db: [c] }` defines `mod sqlite` and `mod
/// postgres`, each with a `#[tokio::test]` per name calling the test body
/// of that name in the parent module: `async fn a(repo: SqlRepo)` on a
/// fresh database (SQLite in memory), `async fn c(db: TestDb)` on a fresh
/// database the body may open several times (SQLite in a file).
macro_rules! on_both {
    (repo: [$($repo:ident),* $(,)?] $(, db: [$($db:ident),* $(,)?])? $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $repo() {
                    super::$repo(crate::sql::SqlRepo::open_in_memory().await.unwrap()).await
                }
            )*
            $($(
                #[tokio::test]
                async fn $db() {
                    super::$db(crate::sql::testing::TestDb::sqlite_file()).await
                }
            )*)?
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $repo() {
                    super::$repo(crate::sql::testing::postgres_repo().await).await
                }
            )*
            $($(
                #[tokio::test]
                async fn $db() {
                    super::$db(crate::sql::testing::TestDb::postgres()).await
                }
            )*)?
        }
    };
}
