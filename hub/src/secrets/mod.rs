//! Secrets: named values that workflows read as `secrets.NAME`, encrypted at rest.
//!
//! - [`key`]: the 32-byte key, from `REACTOR_SECRET_KEY` or the 0600 file `DATA/secret.key`;
//! - [`cipher`]: XChaCha20-Poly1305 with a random nonce per value and the name as associated
//!   data;
//! - this file: [`SecretStore`], the `secrets` table (migration `0004_secrets.sql`), and
//!   [`SecretStore::sync_runtime`], which hands the decrypted values to the engine
//!   (`Runtime::set_secrets`) — the only reader of plaintext;
//! - [`api`]: `PUT/GET/DELETE /api/v1/secrets…` (admin; values are write-only);
//! - [`cli`]: `reactor-hub secret set NAME` (value from stdin) / `list` / `delete`.
//!
//! Values never leave through the API, logs or errors: the engine masks them in everything it
//! records (reactor-core `engine::redact`), and errors here name the secret, never its value.
//! Changes made through the API reach the runtime at once; changes made by the CLI or by
//! another hub on the same PostgreSQL are picked up by [`SecretStore::watch`] within its period.

pub mod api;
pub mod cipher;
pub mod cli;
pub mod key;

use std::time::Duration;

use reactor_core::engine::{Runtime, Timestamp};
use reactor_core::{Map, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use self::cipher::{Cipher, CipherError, Sealed};
use self::key::{KeyError, SecretKey};
use crate::db::Database;
use crate::db::on_pool;

/// Longest secret name (as `secrets.NAME` in expressions).
pub const MAX_NAME_LEN: usize = 64;
/// Largest secret value, bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most secrets kept.
pub const MAX_SECRETS: i64 = 1000;
/// How often [`SecretStore::watch`] looks for changes made elsewhere.
pub const WATCH_PERIOD: Duration = Duration::from_secs(5);

/// A stored secret, without its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// What went wrong with a secret. Never holds a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error(
        "{0:?} is not a valid secret name: use letters, digits and _, starting with a letter or _, at most {MAX_NAME_LEN} characters"
    )]
    BadName(String),
    #[error("the value of secret {name:?} is {len} bytes; the limit is {MAX_VALUE_LEN}")]
    TooLarge { name: String, len: usize },
    #[error("the value of secret {0:?} is empty")]
    Empty(String),
    #[error("there are already {MAX_SECRETS} secrets; delete some first")]
    TooMany,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Checks a secret name: `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let mut chars = name.chars();
    let good = name.len() <= MAX_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if good {
        Ok(())
    } else {
        let mut shown: String = name.chars().take(MAX_NAME_LEN).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        Err(SecretError::BadName(shown))
    }
}

/// The `secrets` table, sealing and opening with one key.
#[derive(Clone)]
pub struct SecretStore {
    db: Database,
    cipher: std::sync::Arc<Cipher>,
    /// Secrets given to the process (`REACTOR_SECRET_*`), under the stored ones.
    process: std::sync::Arc<Map>,
}

impl std::fmt::Debug for SecretStore {
    /// Never shows a value: only how many process secrets there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("process_secrets", &self.process.len())
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    pub fn new(db: Database, key: &SecretKey) -> SecretStore {
        SecretStore {
            db,
            cipher: std::sync::Arc::new(Cipher::new(key)),
            process: std::sync::Arc::default(),
        }
    }

    /// Adds the secrets the process was started with (`REACTOR_SECRET_*`): the engine sees
    /// them beside the stored ones; a stored secret of the same name wins.
    pub fn with_process_secrets(mut self, secrets: Map) -> SecretStore {
        self.process = std::sync::Arc::new(secrets);
        self
    }

    /// Opens the store with the key from the environment or the data folder (see [`key`]).
    pub fn open(db: Database, data_dir: &std::path::Path) -> Result<SecretStore, SecretError> {
        Ok(SecretStore::new(db, &SecretKey::load(data_dir)?))
    }

    /// Creates or replaces a secret. Returns whether it existed.
    pub async fn set(&self, name: &str, value: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        if value.is_empty() {
            return Err(SecretError::Empty(name.to_string()));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(SecretError::TooLarge {
                name: name.to_string(),
                len: value.len(),
            });
        }
        let sealed = self.cipher.seal(name, value)?;
        let now = Timestamp::now().millis();
        on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let existed = sqlx::query("SELECT 1 FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if existed {
                sqlx::query(
                    "UPDATE secrets SET nonce = $1, ciphertext = $2, updated_at = $3 WHERE name = $4",
                )
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            } else {
                let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM secrets")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                if count >= MAX_SECRETS {
                    return Err(SecretError::TooMany);
                }
                sqlx::query(
                    "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(name)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(existed)
        })
    }

    /// Deletes a secret. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        on_pool!(&self.db, pool => {
            let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Every secret's name and times, by name.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT name, created_at, updated_at FROM secrets ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(SecretInfo {
                        name: row.try_get("name")?,
                        created_at: Timestamp(row.try_get("created_at")?).to_rfc3339(),
                        updated_at: Timestamp(row.try_get("updated_at")?).to_rfc3339(),
                    })
                })
                .collect()
        })
    }

    /// Every secret decrypted, name → value: what the engine sees as `secrets`.
    pub async fn decrypt_all(&self) -> Result<Map, SecretError> {
        let rows: Vec<(String, Sealed)> = on_pool!(&self.db, pool => {
            sqlx::query("SELECT name, nonce, ciphertext FROM secrets ORDER BY name")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok::<_, sqlx::Error>((
                        row.try_get("name")?,
                        Sealed {
                            nonce: row.try_get("nonce")?,
                            ciphertext: row.try_get("ciphertext")?,
                        },
                    ))
                })
                .collect::<Result<_, _>>()?
        });
        let mut secrets = Map::new();
        for (name, sealed) in rows {
            let value = self.cipher.open(&name, &sealed)?;
            secrets.insert(name, Value::String(value));
        }
        Ok(secrets)
    }

    /// A cheap fingerprint of the table (count and last change) to notice changes.
    async fn fingerprint(&self) -> Result<(i64, i64), SecretError> {
        on_pool!(&self.db, pool => {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, COALESCE(MAX(updated_at), 0) AS at FROM secrets",
            )
            .fetch_one(pool)
            .await?;
            Ok((row.try_get("n")?, row.try_get("at")?))
        })
    }

    /// Decrypts every secret into `runtime` (`secrets.NAME`, and the values it redacts),
    /// over the process' own secrets.
    pub async fn sync_runtime(&self, runtime: &Runtime) -> Result<(), SecretError> {
        let mut secrets = (*self.process).clone();
        secrets.extend(self.decrypt_all().await?);
        runtime.set_secrets(secrets);
        Ok(())
    }

    /// Keeps `runtime`'s secrets in step with the table (changes by the CLI or another hub)
    /// until `stop` fires: checks a fingerprint every `period`, decrypts again on change.
    /// A failed check is logged and tried again next period; the runtime keeps what it had.
    pub async fn watch(self, runtime: Runtime, period: Duration, stop: CancellationToken) {
        let mut seen = self.fingerprint().await.ok();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = match self.fingerprint().await {
                Ok(now) => now,
                Err(error) => {
                    tracing::warn!(%error, "checking the secrets table failed");
                    continue;
                }
            };
            if seen == Some(now) {
                continue;
            }
            match self.sync_runtime(&runtime).await {
                Ok(()) => seen = Some(now),
                Err(error) => tracing::warn!(%error, "reloading secrets failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["A", "_x", "SLACK_WEBHOOK", "a1_b2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "1A", "a-b", "a.b", "é", &"A".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
