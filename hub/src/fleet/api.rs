//! Fleet HTTP routes: `POST /api/v1/enroll` (the enrollment token is the only credential; no
//! bearer token) and `GET /api/v1/devices` (viewer).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reactor_core::sync::PROTOCOL_VERSION;
use reactor_core::sync::bundle::BundleSigner;
use serde::Deserialize;
use serde_json::json;

use super::provision::Provisioner;
use super::registry::{self, Enrolled, RegistryError};
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Role;
use crate::db::Database;
use crate::server::{HubState, RouteSpec};

/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/api/v1/enroll";
/// Largest enrollment request body.
const MAX_ENROLL_BODY: usize = 4096;

/// What the enrollment endpoint needs.
#[derive(Debug, Clone)]
pub struct EnrollState {
    pub db: Database,
    pub signer: Arc<BundleSigner>,
    /// The broker address devices connect to (`mqtt://HOST:PORT` or `mqtts://…`).
    pub broker: String,
    /// PEM devices trust for an `mqtts://` broker (the device endpoint's CA), if any.
    pub ca_pem: Option<String>,
    /// How the device's credential reaches an external broker.
    pub provision: Arc<Provisioner>,
}

/// The routes behind the hub's bearer-token auth.
pub fn routes() -> Vec<RouteSpec> {
    vec![RouteSpec::new(
        Method::GET,
        "/api/v1/devices",
        Role::Viewer,
        "Devices: labels, online (last will), last seen, agent and bundle versions, health",
        get(list_devices),
    )]
}

/// The enrollment route, outside the bearer-token layer: merge it into the hub's router.
pub fn enroll_router(state: EnrollState) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .layer(DefaultBodyLimit::max(MAX_ENROLL_BODY))
        .with_state(state)
}

async fn list_devices(State(state): State<HubState>) -> ApiResult<Response> {
    let devices = registry::list(&state.db)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(json!({ "devices": devices })).into_response())
}

/// Enrollment with the credential provisioned on the broker first: the token is checked,
/// the broker learns the device's login, then the token is spent. A provisioning failure is
/// a 502 and leaves the token usable.
async fn provisioned(
    state: &EnrollState,
    dynsec: &super::provision::Dynsec,
    token: &str,
) -> Result<Result<Enrolled, RegistryError>, Response> {
    let _one_at_a_time = dynsec.lock().await;
    let device = match registry::token_device(&state.db, token).await {
        Ok(device) => device,
        Err(error) => return Ok(Err(error)),
    };
    let credential = match registry::new_credential() {
        Ok(credential) => credential,
        Err(error) => return Ok(Err(error)),
    };
    if let Err(error) = dynsec.device(&device, &credential).await {
        tracing::error!(device = device.as_str(), %error, "enrollment failed: the device's broker login could not be provisioned");
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "broker provisioning failed",
            &format!(
                "the device's login could not be created on the MQTT broker: {error}; the enrollment token was not spent, try again"
            ),
        )
        .into_response());
    }
    Ok(registry::enroll_with(&state.db, token, credential).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    token: String,
}

/// `POST /api/v1/enroll` with `{"token": "re_…"}`.
async fn enroll(State(state): State<EnrollState>, body: Bytes) -> Response {
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid enrollment request",
                "send a JSON object {\"token\": \"re_…\"} with the token `reactor-hub device add` printed",
            )
            .into_response();
        }
    };
    let token = request.token.trim();
    let enrolled = match &*state.provision {
        Provisioner::None => registry::enroll(&state.db, token).await,
        Provisioner::Dynsec(dynsec) => match provisioned(&state, dynsec, token).await {
            Ok(enrolled) => enrolled,
            Err(response) => return response,
        },
    };
    match enrolled {
        Ok(enrolled) => {
            tracing::info!(device = enrolled.device.as_str(), "device enrolled");
            let mut broker = json!({
                "url": state.broker,
                "client_id": enrolled.device.as_str(),
                "username": enrolled.device.as_str(),
                "password": enrolled.credential,
                "topic_prefix": enrolled.device.prefix(),
            });
            if let Some(pem) = &state.ca_pem {
                broker["ca_pem"] = json!(pem);
            }
            axum::Json(json!({
                "protocol_version": PROTOCOL_VERSION,
                "device_id": enrolled.device.as_str(),
                "labels": enrolled.labels,
                "broker": broker,
                "bundle_signing_key": super::keys::describe(state.signer.public_key()),
            }))
            .into_response()
        }
        Err(RegistryError::BadToken) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "enrollment refused",
            "the enrollment token is unknown, expired or already used; ask for a new one (`reactor-hub device add`)",
        )
        .into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}
