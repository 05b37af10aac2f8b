//! The auth layer: bearer token → [`Principal`] in the request's extensions, and the
//! per-route role check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, HubState};
use crate::auth::{Principal, Role, bearer, hash_token};
use crate::db::Database;

/// How long a token lookup is reused. A revoked token stops working within this time.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Most tokens cached at once; the cache is cleared when full (tokens are few).
const CACHE_CAPACITY: usize = 4096;

/// Token hash → caller lookups, cached briefly so that a busy API does not read the tokens
/// table on every request. Unknown tokens are not cached (they cannot fill the cache).
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl TokenCache {
    /// The caller owning `token`, if it is a live token.
    pub async fn lookup(
        &self,
        db: &Database,
        token: &str,
    ) -> Result<Option<Principal>, sqlx::Error> {
        let hash = hash_token(token);
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((principal, at)) = entries.get(&hash)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(Some(principal.clone()));
            }
        }
        let found = crate::db::tokens::find(db, &hash).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match &found {
            Some(principal) => {
                if entries.len() >= CACHE_CAPACITY {
                    entries.clear();
                }
                entries.insert(hash, (principal.clone(), Instant::now()));
            }
            None => {
                entries.remove(&hash);
            }
        }
        Ok(found)
    }

    /// Forgets every cached lookup (after a token is revoked).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Authenticates the request or answers 401.
pub(super) async fn authenticate(
    State(state): State<HubState>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller(&state, request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// The caller named by the request's bearer token, or the 401 (500 when the database fails)
/// to answer.
pub(super) async fn caller(state: &HubState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let Some(token) = token else {
        return Err(ApiError::unauthorized("send `Authorization: Bearer TOKEN`"));
    };
    match state.tokens.lookup(&state.db, token).await {
        Ok(Some(principal)) => Ok(principal),
        Ok(None) => Err(ApiError::unauthorized("the token is unknown or revoked")),
        Err(error) => Err(ApiError::internal(error)),
    }
}

/// 403 unless `principal`'s role allows `needed`.
pub(super) fn check_role(principal: &Principal, needed: Role) -> Result<(), ApiError> {
    if principal.role.allows(needed) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&format!(
            "this route needs the {needed} role; the token has {}",
            principal.role
        )))
    }
}

/// Lets the request through when its caller's role allows `needed`; 403 otherwise.
pub(super) async fn require(needed: Role, request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(principal) => match check_role(principal, needed) {
            Ok(()) => next.run(request).await,
            Err(refused) => refused.into_response(),
        },
        None => ApiError::unauthorized("send `Authorization: Bearer TOKEN`").into_response(),
    }
}
