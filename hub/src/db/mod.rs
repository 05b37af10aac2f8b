//! The hub's SQL layer: one [`Database`] handle over SQLite (the zero-configuration default)
//! or PostgreSQL (several hubs sharing one database).
//!
//! Queries are built at run time (`sqlx::query` with binds): nothing here needs a live
//! database to compile. Migrations are embedded in the binary, one folder per backend
//! (`hub/migrations/sqlite`, `hub/migrations/postgres`), numbered `0001_…`, `0002_…`; the two
//! folders hold the same numbers so both backends go through the same schema versions.
//!
//! SQLite durability: the file runs in WAL mode with `synchronous = FULL`. With `NORMAL` a
//! commit is safe from a process crash but the last commits can be lost on power failure —
//! and the hub acknowledges events once they are journaled, so an acknowledged event must
//! survive a power cut, as on the agent (redb `Durability::Immediate`). The cost is one fsync
//! of the WAL per commit, which the journal's group commit shares between many writers.

pub mod cancels;
mod instance;
mod journal;
mod leader;
pub mod nodelay;
pub mod testing;
pub mod tokens;
pub mod workflows;

pub use self::instance::HubInstance;
pub use self::journal::marks::{MARK_MAX_AGE, MARK_PRUNE_EVERY};
pub use self::journal::{ExecutionFilter, MAX_GROUP, PRUNE_CHUNK, SqlStore};
pub use self::leader::{LEADER_LOCK, Leader, Leadership};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

/// The SQLite file's name inside the data folder.
pub const SQLITE_FILE: &str = "hub.db";

/// How long a SQLite connection waits for the write lock before failing with "busy".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections kept open to SQLite (readers run in parallel in WAL mode; one writes at a time).
const SQLITE_CONNECTIONS: u32 = 8;

/// Connections kept open to PostgreSQL by one hub process.
const POSTGRES_CONNECTIONS: u32 = 16;

/// How long a caller waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `$body` with `$pool` bound to the SQLite or the PostgreSQL pool: for queries whose
/// text is the same on both backends (`$1` binds work on both).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Starts a transaction that will write. On SQLite that is `BEGIN IMMEDIATE`: a deferred
/// transaction that reads, then writes, fails at once with "database is locked" (the busy
/// timeout does not apply to the upgrade) when another connection committed in between —
/// seen as a rare 500 on `POST /api/v1/workflows` while the hub's own writers ran.
pub(crate) async fn begin_write<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> sqlx::Result<sqlx::Transaction<'static, DB>> {
    let statement = if DB::NAME == "SQLite" {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    pool.begin_with(statement).await
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The hub's database: a connection pool to SQLite or to PostgreSQL.
///
/// Cloning is cheap (the pools are shared handles). Code that needs backend-specific SQL
/// matches on the variant; placeholders differ (`?` for SQLite, `$1` for PostgreSQL).
#[derive(Clone, Debug)]
pub enum Database {
    /// A SQLite file (WAL, `synchronous = FULL`, incremental auto-vacuum).
    Sqlite(SqlitePool),
    /// A PostgreSQL database, possibly shared by several hub processes.
    Postgres(PgPool),
}

/// Which backend a [`Database`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Failures opening or migrating the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The `--database` URL is not one the hub understands.
    #[error(
        "unsupported database URL {0:?}: use postgres://… (or postgresql://…), sqlite://PATH, or none for the data folder's SQLite file"
    )]
    UnsupportedUrl(String),
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database {target}: {source}")]
    Open {
        /// The file or the URL with its password hidden.
        target: String,
        source: sqlx::Error,
    },
    /// Another process holds the SQLite database (one hub per data folder).
    #[error("another hub is already using {0}")]
    Busy(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl Database {
    /// Opens the hub's database.
    ///
    /// - `None`: the SQLite file `DATA/hub.db` (the folder is created if needed);
    /// - `sqlite://PATH` or `sqlite:PATH`: that SQLite file;
    /// - `postgres://…` / `postgresql://…`: PostgreSQL.
    ///
    /// Migrations are not run here: call [`Database::migrate`].
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Database, DbError> {
        match url.map(str::trim).filter(|url| !url.is_empty()) {
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
                    path: data_dir.to_path_buf(),
                    source,
                })?;
                Database::open_sqlite(&data_dir.join(SQLITE_FILE)).await
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Database::open_postgres(url).await
            }
            Some(url) => match url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                Some(path) if !path.is_empty() => Database::open_sqlite(Path::new(path)).await,
                _ => Err(DbError::UnsupportedUrl(redact_url(url))),
            },
        }
    }

    /// Opens (creating if needed) the SQLite file at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Database, DbError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // Must be set before the first table exists; harmless on an existing file.
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            // Truncate the WAL back to this size after checkpoints: the files stay bounded.
            .pragma("journal_size_limit", "67108864")
            // The journal checkpoints the log off its writer's path; this is the backstop.
            .pragma(
                "wal_autocheckpoint",
                journal::checkpoint::AUTOCHECKPOINT_PAGES.to_string(),
            )
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| DbError::Open {
                target: path.display().to_string(),
                source,
            })?;
        Ok(Database::Sqlite(pool))
    }

    /// Connects to PostgreSQL at `url`.
    pub async fn open_postgres(url: &str) -> Result<Database, DbError> {
        let open_error = |source| DbError::Open {
            target: redact_url(url),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(open_error)?;
        let port = options.get_port();
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Each new connection: see `nodelay` (sqlx 0.9.0 leaves Nagle on; 40 ms stalls).
            .after_connect(move |_, _| {
                Box::pin(async move {
                    nodelay::set_on_connections_to(port);
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        Ok(Database::Postgres(pool))
    }

    /// Runs every embedded migration not applied yet (idempotent; safe when several hubs
    /// start together on PostgreSQL: sqlx serialises them with an advisory lock).
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Database::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Database::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// The backend behind this handle.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes every pooled connection (waits for those in use to come back).
    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// `url` with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://hub:s3cret@db:5432/hub"),
            "postgres://hub:***@db:5432/hub"
        );
        assert_eq!(
            redact_url("postgres://db:5432/hub"),
            "postgres://db:5432/hub"
        );
        assert_eq!(redact_url("nonsense"), "nonsense");
    }
}
