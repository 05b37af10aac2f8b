//! The fleet's bundle-signing key (table `fleet_signing_keys`, migration 0006).
//!
//! Generated at the first start, stored as its PKCS#8 document sealed with the hub's secrets
//! key (XChaCha20-Poly1305, [`crate::secrets::cipher`]) under the name
//! `fleet-signing-key/{key id}`, so a sealed key copied to another row does not open. Only
//! the public key is stored in the clear; enrollment hands it to devices, which pin it.
//!
//! Several hubs on one PostgreSQL database may start together: each may insert a key, and
//! every hub then uses the oldest unretired one (ties broken by key id), so they agree.

use std::sync::Arc;

use base64::Engine as _;
use reactor_core::engine::Timestamp;
use reactor_core::sync::bundle::{BundleSigner, PublicKey};
use sqlx::Row;

use super::registry::on_pool;
use crate::db::Database;
use crate::secrets::cipher::{Cipher, Sealed};

/// Failures loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Cipher(#[from] crate::secrets::cipher::CipherError),
    #[error("the stored bundle-signing key is unusable: {0}")]
    Corrupt(String),
}

fn sealed_name(key_id: &str) -> String {
    format!("fleet-signing-key/{key_id}")
}

/// The active signing key, created (and stored sealed) when there is none.
pub async fn load_or_create(db: &Database, cipher: &Cipher) -> Result<Arc<BundleSigner>, KeyError> {
    if let Some(signer) = load(db, cipher).await? {
        return Ok(signer);
    }
    let (signer, pkcs8) = BundleSigner::generate().map_err(|e| KeyError::Corrupt(e.to_string()))?;
    let public = signer.public_key();
    let key_id = public.id().to_string();
    let sealed = cipher.seal(
        &sealed_name(&key_id),
        &base64::engine::general_purpose::STANDARD.encode(&pkcs8),
    )?;
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO fleet_signing_keys (key_id, public_key, nonce, ciphertext, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&key_id)
        .bind(public.0.to_vec())
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now)
        .execute(pool)
        .await?;
    });
    tracing::info!(key_id, "generated the fleet's bundle-signing key");
    load(db, cipher)
        .await?
        .ok_or_else(|| KeyError::Corrupt("the new key was not stored".into()))
}

/// The oldest unretired key, opened, if any.
async fn load(db: &Database, cipher: &Cipher) -> Result<Option<Arc<BundleSigner>>, KeyError> {
    let row = on_pool!(db, pool => {
        sqlx::query(
            "SELECT key_id, public_key, nonce, ciphertext FROM fleet_signing_keys \
             WHERE retired_at IS NULL ORDER BY created_at, key_id LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|row| -> Result<(String, Vec<u8>, Sealed), sqlx::Error> {
            Ok((
                row.try_get("key_id")?,
                row.try_get("public_key")?,
                Sealed { nonce: row.try_get("nonce")?, ciphertext: row.try_get("ciphertext")? },
            ))
        })
        .transpose()?
    });
    let Some((key_id, public, sealed)) = row else {
        return Ok(None);
    };
    let text = cipher.open(&sealed_name(&key_id), &sealed)?;
    let pkcs8 = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| KeyError::Corrupt(e.to_string()))?;
    let signer = BundleSigner::from_pkcs8(&pkcs8).map_err(|e| KeyError::Corrupt(e.to_string()))?;
    if signer.public_key().0.as_slice() != public.as_slice()
        || signer.public_key().id().to_string() != key_id
    {
        return Err(KeyError::Corrupt(format!(
            "key {key_id} does not match its public key"
        )));
    }
    Ok(Some(Arc::new(signer)))
}

/// The public key as enrollment hands it out: base64 (standard) and the hex key id.
pub fn describe(public: PublicKey) -> serde_json::Value {
    serde_json::json!({
        "algorithm": "ed25519",
        "key_id": public.id().to_string(),
        "public_key": base64::engine::general_purpose::STANDARD.encode(public.0),
    })
}
