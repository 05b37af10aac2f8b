//! Throw-away PostgreSQL databases for tests and benches: each [`TempPostgres`] is a fresh
//! database on the server named by `REACTOR_TEST_POSTGRES` (an admin URL; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped (connections and all) when the
//! value is dropped. Tests running in parallel each get their own.

use sqlx::{Connection, PgConnection};

/// The admin URL used when `REACTOR_TEST_POSTGRES` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test, dropped on drop.
#[derive(Debug)]
pub struct TempPostgres {
    admin: String,
    name: String,
    url: String,
}

impl TempPostgres {
    /// Creates an empty database named `reactor_<prefix>_<random>`.
    pub async fn create(prefix: &str) -> Result<TempPostgres, sqlx::Error> {
        let admin = std::env::var("REACTOR_TEST_POSTGRES")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        let suffix = ulid::Ulid::new().to_string().to_lowercase();
        let prefix: String = prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(20)
            .collect::<String>()
            .to_lowercase();
        let name = format!("reactor_{prefix}_{suffix}");
        let mut conn = PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Ok(TempPostgres { admin, name, url })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The new database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime: do the work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(database = %self.name, %error, "dropping a test database failed")
            }
            Err(_) => tracing::warn!(database = %self.name, "dropping a test database panicked"),
        }
    }
}
