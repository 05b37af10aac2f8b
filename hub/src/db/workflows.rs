//! Workflows stored by the hub (tables `workflows` and `workflow_versions`, migration 0002).
//!
//! Every version submitted is kept with its text, SHA-256, time and author (the API token's
//! id). Versions: a submission gets the `version` its YAML declares when that is higher than
//! the stored latest, otherwise latest + 1 — the agent's rule, so a version number always
//! names one text. Submitting the latest text again changes nothing. Deleting a workflow marks
//! it inactive; its versions stay (executions started on them still recover and show them),
//! and submitting the name again continues its version numbers.
//!
//! SQL is written once with `$N` placeholders, which SQLite and PostgreSQL both accept.

use reactor_core::engine::Timestamp;
use sqlx::Row;

use super::Database;
use super::on_pool;

/// A stored workflow: its name, newest version and whether it is offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWorkflow {
    pub name: String,
    pub latest_version: u32,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One stored version of a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    pub name: String,
    pub version: u32,
    /// The YAML text as submitted.
    pub source: String,
    /// Lowercase hex SHA-256 of `source`.
    pub hash: String,
    pub created_at: Timestamp,
    /// The API token id that submitted it.
    pub author: Option<String>,
}

/// What [`save_version`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The name was new (or had been deleted): this version is now active.
    Created(u32),
    /// A new version of an active workflow.
    Updated(u32),
    /// The text equals the active latest version: nothing was written.
    Unchanged(u32),
}

impl Saved {
    /// The version that is now the latest.
    pub fn version(self) -> u32 {
        match self {
            Saved::Created(v) | Saved::Updated(v) | Saved::Unchanged(v) => v,
        }
    }
}

/// Lowercase hex SHA-256 of a workflow's text.
pub fn source_hash(source: &str) -> String {
    crate::auth::hash_token(source)
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Stores `source` as the newest version of `name` (see the module docs for the version
/// rule) and makes the workflow active. `declared` is the `version` the YAML declares.
pub async fn save_version(
    db: &Database,
    name: &str,
    declared: u32,
    source: &str,
    author: Option<&str>,
) -> Result<Saved, sqlx::Error> {
    let hash = source_hash(source);
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let mut tx = super::begin_write(pool).await?;
        let current = sqlx::query(
            "SELECT w.latest_version, w.active, v.hash FROM workflows w \
             JOIN workflow_versions v ON v.name = w.name AND v.version = w.latest_version \
             WHERE w.name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let current = match current {
            Some(row) => Some((
                to_u32(i64::from(row.try_get::<i32, _>(0)?)),
                row.try_get::<bool, _>(1)?,
                row.try_get::<String, _>(2)?,
            )),
            None => None,
        };
        if let Some((version, true, old_hash)) = &current
            && *old_hash == hash
        {
            return Ok(Saved::Unchanged(*version));
        }
        let version = match &current {
            Some((latest, _, _)) if declared > *latest => declared,
            Some((latest, _, _)) => latest.saturating_add(1),
            None => declared.max(1),
        };
        let version_i32 = i32::try_from(version).unwrap_or(i32::MAX);
        if current.is_some() {
            sqlx::query(
                "UPDATE workflows SET latest_version = $1, active = $2, updated_at = $3 \
                 WHERE name = $4",
            )
            .bind(version_i32)
            .bind(true)
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO workflows (name, latest_version, active, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(name)
            .bind(version_i32)
            .bind(true)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO workflow_versions (name, version, source, hash, created_at, author) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(version_i32)
        .bind(source)
        .bind(&hash)
        .bind(now)
        .bind(author)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match current {
            Some((_, true, _)) => Saved::Updated(version),
            _ => Saved::Created(version),
        })
    })
}

macro_rules! workflow_from_row {
    ($row:expr) => {
        StoredWorkflow {
            name: $row.try_get("name")?,
            latest_version: to_u32(i64::from($row.try_get::<i32, _>("latest_version")?)),
            active: $row.try_get("active")?,
            created_at: Timestamp($row.try_get("created_at")?),
            updated_at: Timestamp($row.try_get("updated_at")?),
        }
    };
}

macro_rules! version_from_row {
    ($row:expr) => {
        StoredVersion {
            name: $row.try_get("name")?,
            version: to_u32(i64::from($row.try_get::<i32, _>("version")?)),
            source: $row.try_get("source")?,
            hash: $row.try_get("hash")?,
            created_at: Timestamp($row.try_get("created_at")?),
            author: $row.try_get("author")?,
        }
    };
}

/// Active workflows, by name.
pub async fn list_active(db: &Database) -> Result<Vec<StoredWorkflow>, sqlx::Error> {
    let sql = "SELECT name, latest_version, active, created_at, updated_at FROM workflows \
               WHERE active = $1 ORDER BY name";
    on_pool!(db, pool => {
        let rows = sqlx::query(sql).bind(true).fetch_all(pool).await?;
        rows.iter().map(|row| Ok(workflow_from_row!(row))).collect()
    })
}

/// The workflow `name`, active or not.
pub async fn get(db: &Database, name: &str) -> Result<Option<StoredWorkflow>, sqlx::Error> {
    let sql = "SELECT name, latest_version, active, created_at, updated_at FROM workflows \
               WHERE name = $1";
    on_pool!(db, pool => {
        match sqlx::query(sql).bind(name).fetch_optional(pool).await? {
            Some(row) => Ok(Some(workflow_from_row!(row))),
            None => Ok(None),
        }
    })
}

/// One version of `name`.
pub async fn version(
    db: &Database,
    name: &str,
    version: u32,
) -> Result<Option<StoredVersion>, sqlx::Error> {
    let sql = "SELECT name, version, source, hash, created_at, author FROM workflow_versions \
               WHERE name = $1 AND version = $2";
    let version = i32::try_from(version).unwrap_or(i32::MAX);
    on_pool!(db, pool => {
        match sqlx::query(sql).bind(name).bind(version).fetch_optional(pool).await? {
            Some(row) => Ok(Some(version_from_row!(row))),
            None => Ok(None),
        }
    })
}

/// Every version of `name`, oldest first.
pub async fn versions(db: &Database, name: &str) -> Result<Vec<StoredVersion>, sqlx::Error> {
    let sql = "SELECT name, version, source, hash, created_at, author FROM workflow_versions \
               WHERE name = $1 ORDER BY version";
    on_pool!(db, pool => {
        let rows = sqlx::query(sql).bind(name).fetch_all(pool).await?;
        rows.iter().map(|row| Ok(version_from_row!(row))).collect()
    })
}

/// The latest version of every active workflow: what the hub loads at start.
pub async fn active_sources(db: &Database) -> Result<Vec<StoredVersion>, sqlx::Error> {
    let sql = "SELECT v.name, v.version, v.source, v.hash, v.created_at, v.author \
               FROM workflows w JOIN workflow_versions v \
               ON v.name = w.name AND v.version = w.latest_version \
               WHERE w.active = $1 ORDER BY w.name";
    on_pool!(db, pool => {
        let rows = sqlx::query(sql).bind(true).fetch_all(pool).await?;
        rows.iter().map(|row| Ok(version_from_row!(row))).collect()
    })
}

/// Marks `name` inactive. Returns whether it was active.
pub async fn deactivate(db: &Database, name: &str) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let done = sqlx::query(
            "UPDATE workflows SET active = $1, updated_at = $2 WHERE name = $3 AND active = $4",
        )
        .bind(false)
        .bind(now)
        .bind(name)
        .bind(true)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() > 0)
    })
}
