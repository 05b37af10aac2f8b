//! The hub's HTTP server: shared state, the route table, authentication and the layers every
//! request goes through.
//!
//! # Adding routes from a module
//!
//! A module (secrets, metrics, the live stream, alerts …) exposes its routes as a
//! `Vec<RouteSpec>`: method, path, the [`Role`] a caller needs, a one-line summary for the
//! OpenAPI document, and an axum [`MethodRouter<HubState>`]. [`Server::router`] mounts each
//! one behind the auth layer and its role check, and [`crate::api::openapi`] lists it, so a
//! route cannot be mounted without being documented and guarded:
//!
//! ```ignore
//! pub fn routes() -> Vec<RouteSpec> {
//!     vec![
//!         RouteSpec::new(Method::GET, "/api/v1/secrets", Role::Admin, "Secret names", get(list)),
//!         RouteSpec::new(Method::PUT, "/api/v1/secrets/{name}", Role::Admin, "Set a secret", put(set)),
//!     ]
//! }
//! // in the hub's wiring: Server::new(state).with_routes(crate::secrets::routes())
//! ```
//!
//! Handlers take `State<HubState>`; the caller is in the request's extensions as
//! [`crate::auth::Principal`] (`Extension<Principal>`). Errors are [`ApiError`]s, which answer
//! RFC 9457 problem details. A route that needs its own state can capture it in the
//! `MethodRouter` (`get(move || …)`) instead of reading `HubState`.
//!
//! # What every request goes through (outermost first)
//! 1. problem details for bare errors: any 4xx/5xx that is not already
//!    `application/problem+json` (axum's 405, 413, 415 …) is rewritten as one; 5xx bodies say
//!    nothing internal;
//! 2. the body limit: `Content-Length` above `limits.max_body` is refused with 413 before the
//!    body is read, and `DefaultBodyLimit` caps streamed bodies at the same size;
//! 3. authentication (every route but `/healthz`): `Authorization: Bearer TOKEN`, 401
//!    otherwise; then the route's role check, 403 when the token's role is below it.
//!
//! Every other path is a workflow's `http` trigger (the fallback, [`http_triggers`]): its
//! own auth when it declares one, else a hub token of role `editor` or higher.

mod auth;
pub mod cluster;
pub mod http_triggers;
mod run;
mod state;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;

pub use self::auth::TokenCache;
pub use self::run::run;
pub use self::state::HubState;
pub use crate::api::problem::ApiError;
use crate::auth::Role;

/// One mounted route: what it is, who may call it, and its handler.
#[derive(Debug)]
pub struct RouteSpec {
    pub method: Method,
    /// An axum path (`/api/v1/workflows/{name}`), also the OpenAPI path.
    pub path: &'static str,
    /// The lowest role allowed.
    pub role: Role,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    pub handler: MethodRouter<HubState>,
}

impl RouteSpec {
    /// A route; `handler` must answer `method` (e.g. `get(h)` for GET).
    pub fn new(
        method: Method,
        path: &'static str,
        role: Role,
        summary: &'static str,
        handler: MethodRouter<HubState>,
    ) -> RouteSpec {
        RouteSpec {
            method,
            path,
            role,
            summary,
            handler,
        }
    }
}

/// The route table's public part: what the OpenAPI document and the tests read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub role: Role,
    pub summary: &'static str,
}

/// Builds the hub's router from route tables.
#[derive(Debug)]
pub struct Server {
    state: HubState,
    routes: Vec<RouteSpec>,
}

impl Server {
    /// A server with the hub's own API routes ([`crate::api::routes`]).
    pub fn new(state: HubState) -> Server {
        Server {
            state,
            routes: crate::api::routes(),
        }
    }

    /// Adds a module's routes (see the module docs).
    pub fn with_routes(mut self, routes: Vec<RouteSpec>) -> Server {
        self.routes.extend(routes);
        self
    }

    /// The route table as mounted (without handlers).
    pub fn table(&self) -> Vec<RouteInfo> {
        self.routes
            .iter()
            .map(|r| RouteInfo {
                method: r.method.clone(),
                path: r.path,
                role: r.role,
                summary: r.summary,
            })
            .collect()
    }

    /// The complete router: `/healthz`, `/api/v1/openapi.json` and every route, with the
    /// layers described in the module docs.
    pub fn router(self) -> Router {
        let table = self.table();
        let openapi = crate::api::openapi::document(&table);
        let max_body = self.state.max_body;
        let mut api: Router<HubState> = Router::new();
        for spec in self.routes {
            let handler = spec.handler.route_layer(middleware::from_fn(
                move |request: Request, next: Next| auth::require(spec.role, request, next),
            ));
            api = api.route(spec.path, handler);
        }
        api = api.route(
            crate::api::openapi::PATH,
            get(move || async move { axum::Json(openapi.clone()) }).route_layer(
                middleware::from_fn(|request: Request, next: Next| {
                    auth::require(Role::Viewer, request, next)
                }),
            ),
        );
        let api = api.layer(middleware::from_fn_with_state(
            self.state.clone(),
            auth::authenticate,
        ));
        Router::new()
            .route("/healthz", get(healthz))
            .merge(api)
            .fallback(http_triggers::serve)
            .layer(DefaultBodyLimit::max(max_body))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                limit_body(max_body, request, next)
            }))
            .layer(middleware::from_fn(problem_for_bare_errors))
            .with_state(self.state)
    }
}

/// `GET /healthz`: 200 once start-up (migrations, workflows, recovery, triggers) is done and
/// while not stopping; 503 otherwise. No token needed; says nothing else.
async fn healthz(State(state): State<HubState>) -> Response {
    if state.healthy() {
        (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
    } else {
        let status = if state.stopping.is_cancelled() {
            "stopping"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": status })),
        )
            .into_response()
    }
}

/// Refuses a declared body above `max` before reading it.
async fn limit_body(max: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return ApiError::payload_too_large(max).into_response();
    }
    next.run(request).await
}

/// Rewrites error responses that are not problem details (axum's own rejections, 405 from
/// routing) as problem details; 5xx bodies are replaced whatever they said.
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response
            .extensions()
            .get::<http_triggers::TriggerAnswer>()
            .is_some()
    {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = if status.is_server_error() {
        "the hub could not complete the request; see its log".to_string()
    } else {
        // axum's rejections are short plain-text explanations of what is wrong.
        match axum::body::to_bytes(body, 4096).await {
            Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
            _ => status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_string(),
        }
    };
    let title = status.canonical_reason().unwrap_or("error").to_lowercase();
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::from_parts(parts, Body::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}
