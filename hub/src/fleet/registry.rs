//! The device registry (tables `devices` and `enrollment_tokens`, migration 0006): devices
//! added by an operator, their one-time enrollment tokens, the credentials enrollment hands
//! out, and what their status frames report.
//!
//! Only SHA-256 hashes of tokens and credentials are stored (both are 256-bit random
//! strings, so a fast hash is enough — the same reasoning as API tokens in [`crate::auth`]).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use reactor_core::engine::Timestamp;
use reactor_core::sync::DeviceId;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sqlx::Row;

use crate::auth::hash_token;
use crate::db::Database;

pub(crate) use crate::db::on_pool;

/// Prefix of enrollment tokens (recognisable in logs and leaks).
pub const ENROLL_PREFIX: &str = "re_";
/// Prefix of device credentials (the MQTT password).
pub const CREDENTIAL_PREFIX: &str = "rd_";
/// Most labels a device may carry (the bundle manifest's bound).
pub const MAX_LABELS: usize = reactor_core::sync::bundle::MAX_LABELS;
/// Longest label key and value, bytes.
pub const MAX_LABEL_KEY: usize = 64;
pub const MAX_LABEL_VALUE: usize = 256;
/// Default lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Registry failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("invalid device name: {0}")]
    BadId(String),
    #[error("invalid label {0:?}: {1}")]
    BadLabel(String, &'static str),
    #[error("a device named {0:?} already exists")]
    Exists(String),
    /// Unknown, expired or already used: deliberately not told apart to the caller.
    #[error("the enrollment token is unknown, expired or already used")]
    BadToken,
    #[error("the system random number generator failed")]
    Random,
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Labels `k=v`, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Parses `k=v` items (each argument may hold several, comma-separated) into labels.
pub fn parse_labels<S: AsRef<str>>(items: &[S]) -> Result<Labels, RegistryError> {
    let mut labels = Labels::new();
    for item in items {
        for pair in item.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(RegistryError::BadLabel(pair.into(), "expected key=value"));
            };
            let (key, value) = (key.trim(), value.trim());
            check_label(key, value)?;
            if labels.insert(key.to_string(), value.to_string()).is_some() {
                return Err(RegistryError::BadLabel(key.into(), "given twice"));
            }
        }
    }
    if labels.len() > MAX_LABELS {
        return Err(RegistryError::BadLabel(
            format!("{} labels", labels.len()),
            "too many labels (at most 32)",
        ));
    }
    Ok(labels)
}

fn check_label(key: &str, value: &str) -> Result<(), RegistryError> {
    let bad = |why| Err(RegistryError::BadLabel(key.into(), why));
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return bad("keys are 1 to 64 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("keys use letters, digits, '.', '_' and '-' only");
    }
    if value.len() > MAX_LABEL_VALUE {
        return bad("values are at most 256 bytes");
    }
    if value.chars().any(char::is_control) {
        return bad("values may not contain control characters");
    }
    Ok(())
}

/// 32 random bytes, base64url, after `prefix`.
pub(crate) fn random_secret(prefix: &str) -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RegistryError::Random)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Adds device `id` with `labels` and returns its one-time enrollment token (valid `ttl`).
pub async fn add_device(
    db: &Database,
    id: &str,
    labels: &Labels,
    ttl: Duration,
) -> Result<String, RegistryError> {
    let id = DeviceId::parse(id).map_err(|e| RegistryError::BadId(e.to_string()))?;
    let token = random_secret(ENROLL_PREFIX)?;
    let now = Timestamp::now().millis();
    let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let labels_json = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        let inserted = sqlx::query(
            "INSERT INTO devices (id, labels, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(&labels_json)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::Exists(id.as_str().into()));
        }
        sqlx::query(
            "INSERT INTO enrollment_tokens (hash, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash_token(&token))
        .bind(id.as_str())
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(token)
}

/// What enrollment hands to a device.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub device: DeviceId,
    pub labels: Labels,
    /// The MQTT password. Shown once; only its hash is kept.
    pub credential: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("device", &self.device)
            .field("labels", &self.labels)
            .field("credential", &"***")
            .finish()
    }
}

/// Spends enrollment `token` (once, before it expires) and issues the device's credential.
/// A device enrolled again (with a new token from `device add`… after removal) gets a new
/// credential; the old one stops working.
pub async fn enroll(db: &Database, token: &str) -> Result<Enrolled, RegistryError> {
    enroll_with(db, token, new_credential()?).await
}

/// A new device credential (the MQTT password).
pub fn new_credential() -> Result<String, RegistryError> {
    random_secret(CREDENTIAL_PREFIX)
}

/// The device enrollment `token` would enroll, without spending it (unknown, expired or
/// used: [`RegistryError::BadToken`]). Lets the broker learn the credential first.
pub async fn token_device(db: &Database, token: &str) -> Result<DeviceId, RegistryError> {
    if !token.starts_with(ENROLL_PREFIX) || token.len() > 128 {
        return Err(RegistryError::BadToken);
    }
    let now = Timestamp::now().millis();
    let device: Option<String> = on_pool!(db, pool => {
        sqlx::query(
            "SELECT device_id FROM enrollment_tokens \
             WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash_token(token))
        .bind(now)
        .fetch_optional(pool)
        .await?
        .map(|row| row.try_get::<String, _>(0))
        .transpose()?
    });
    let device = device.ok_or(RegistryError::BadToken)?;
    DeviceId::parse(&device).map_err(|e| RegistryError::BadId(e.to_string()))
}

/// [`enroll`] with a given `credential` (already provisioned on the broker).
pub async fn enroll_with(
    db: &Database,
    token: &str,
    credential: String,
) -> Result<Enrolled, RegistryError> {
    if !token.starts_with(ENROLL_PREFIX) || token.len() > 128 {
        return Err(RegistryError::BadToken);
    }
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $1 \
             WHERE hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING device_id",
        )
        .bind(now)
        .bind(hash_token(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Err(RegistryError::BadToken) };
        let device: String = row.try_get("device_id")?;
        let row = sqlx::query(
            "UPDATE devices SET credential_hash = $1, enrolled_at = $2 WHERE id = $3 RETURNING labels",
        )
        .bind(hash_token(&credential))
        .bind(now)
        .bind(&device)
        .fetch_one(&mut *tx)
        .await?;
        let labels: String = row.try_get("labels")?;
        tx.commit().await?;
        Ok(Enrolled {
            device: DeviceId::parse(&device).map_err(|e| RegistryError::BadId(e.to_string()))?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            credential,
        })
    })
}

/// Whether `credential` is device `id`'s current credential.
pub async fn authenticate(db: &Database, id: &str, credential: &str) -> Result<bool, sqlx::Error> {
    if !credential.starts_with(CREDENTIAL_PREFIX) || credential.len() > 128 {
        return Ok(false);
    }
    let hash = hash_token(credential);
    on_pool!(db, pool => {
        let row = sqlx::query("SELECT credential_hash FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        let stored: Option<String> = match row {
            Some(row) => row.try_get("credential_hash")?,
            None => None,
        };
        Ok(stored.is_some_and(|stored| {
            ring::digest::digest(&ring::digest::SHA256, stored.as_bytes()).as_ref()
                == ring::digest::digest(&ring::digest::SHA256, hash.as_bytes()).as_ref()
        }))
    })
}

/// Whether device `id` exists (added, enrolled or not).
pub async fn exists(db: &Database, id: &str) -> Result<bool, sqlx::Error> {
    on_pool!(db, pool => {
        Ok(sqlx::query("SELECT 1 FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .is_some())
    })
}

/// Health a device reported: failed / total executions over `window_secs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthInfo {
    pub failed: i64,
    pub total: i64,
    pub window_secs: i64,
}

/// A device as `GET /api/v1/devices` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub labels: Labels,
    pub enrolled: bool,
    pub online: bool,
    pub created_at: i64,
    pub enrolled_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub agent_version: Option<String>,
    pub bundle_version: Option<i64>,
    pub health: Option<HealthInfo>,
    /// Highest seq such that every record up to it is stored (the last ack sent).
    pub acked_seq: i64,
}

/// Every device, by id.
pub async fn list(db: &Database) -> Result<Vec<DeviceInfo>, sqlx::Error> {
    on_pool!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, labels, credential_hash, created_at, enrolled_at, last_seen, online, \
             agent_version, bundle_version, health_failed, health_total, health_window, acked_seq \
             FROM devices ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in rows {
            let labels: String = row.try_get("labels")?;
            let failed: Option<i64> = row.try_get("health_failed")?;
            let total: Option<i64> = row.try_get("health_total")?;
            let window: Option<i64> = row.try_get("health_window")?;
            devices.push(DeviceInfo {
                id: row.try_get("id")?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                enrolled: row.try_get::<Option<String>, _>("credential_hash")?.is_some(),
                online: row.try_get::<i64, _>("online")? != 0,
                created_at: row.try_get("created_at")?,
                enrolled_at: row.try_get("enrolled_at")?,
                last_seen: row.try_get("last_seen")?,
                agent_version: row.try_get("agent_version")?,
                bundle_version: row.try_get("bundle_version")?,
                health: match (failed, total, window) {
                    (Some(failed), Some(total), Some(window_secs)) => Some(HealthInfo {
                        failed,
                        total,
                        window_secs,
                    }),
                    _ => None,
                },
                acked_seq: row.try_get("acked_seq")?,
            });
        }
        Ok(devices)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refuse() {
        let labels = parse_labels(&["site=north,role=pump", "tier=1"]).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["site"], "north");
        for bad in ["nokey", "=v", "a b=c", "k=v,k=w", "k=\u{7}"] {
            assert!(parse_labels(&[bad]).is_err(), "{bad}");
        }
    }
}
