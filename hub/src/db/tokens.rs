//! API tokens (table `api_tokens`, migration 0003): only hashes are stored; see
//! [`crate::auth`].

use reactor_core::engine::Timestamp;
use sqlx::Row;

use super::Database;
use super::on_pool;
use crate::auth::{NewToken, Principal, Role, generate_token};

/// A stored token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Creates a token with `role`; returns its id and the token (to show once).
pub async fn create(
    db: &Database,
    role: Role,
    name: Option<&str>,
) -> Result<(String, NewToken), TokenError> {
    let token = generate_token()?;
    let id = ulid::Ulid::new().to_string();
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO api_tokens (id, hash, role, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(&token.hash)
        .bind(role.as_str())
        .bind(name)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok((id, token))
}

/// The caller a token hash belongs to, unless unknown or revoked.
pub async fn find(db: &Database, hash: &str) -> Result<Option<Principal>, sqlx::Error> {
    on_pool!(db, pool => {
        let row = sqlx::query(
            "SELECT id, role FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        Ok(role.parse::<Role>().ok().map(|role| Principal {
            token_id: row.try_get("id").unwrap_or_default(),
            role,
        }))
    })
}

/// Every token, oldest first.
pub async fn list(db: &Database) -> Result<Vec<TokenInfo>, sqlx::Error> {
    on_pool!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, role, name, created_at, revoked_at FROM api_tokens ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        let mut tokens = Vec::with_capacity(rows.len());
        for row in rows {
            let role: String = row.try_get("role")?;
            let Ok(role) = role.parse::<Role>() else { continue };
            tokens.push(TokenInfo {
                id: row.try_get("id")?,
                role,
                name: row.try_get("name")?,
                created_at: Timestamp(row.try_get("created_at")?),
                revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
            });
        }
        Ok(tokens)
    })
}

/// Revokes token `id`. Returns whether a live token was revoked.
pub async fn revoke(db: &Database, id: &str) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() > 0)
    })
}
