//! Workflows' `http` triggers on the hub's listener: every path the API does not own is a
//! trigger path (the router's fallback), answered by core's [`HttpRoutes`].
//!
//! Who may call a trigger:
//! - a trigger that declares its own auth (`auth: token|hmac`, `verify: github|stripe|slack`)
//!   is checked by that auth only — webhook senders hold no hub token;
//! - any other trigger (`auth: none`) still needs a hub bearer token of role `editor` or
//!   higher, so that nothing but `/healthz` answers an anonymous caller on the hub;
//! - a path no trigger serves answers 401 without a valid token (an anonymous caller cannot
//!   probe which paths exist), 404 with one.
//!
//! Paths under `/api/`, and `/healthz` and `/metrics`, are the hub's own: a workflow that
//! declares one is refused when it is installed ([`check_paths`]), and the fallback never
//! hands them to the triggers.
//!
//! Answers: async triggers 202 `{"execution": id}`; sync triggers the execution's output
//! (200) or its error (500, with the execution id in `X-Reactor-Execution`), as on the agent.
//! Other refusals (404, 405, 413, 401, 400, 503 with `Retry-After` when the runtime is
//! saturated or the hub is starting or stopping) are problem details.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use reactor_core::dsl::Diagnostic;
use reactor_core::flow::{TriggerKind, Workflow};
use reactor_core::trigger::{HttpReply, HttpRequest, HttpRoutes};

use super::{ApiError, HubState, auth};
use crate::auth::Role;

/// Paths (exact, or a prefix ending in `/`) no workflow may claim.
pub const RESERVED_PATHS: &[&str] = &["/api/", "/healthz", "/metrics"];

/// The role an `auth: none` trigger needs from a hub token.
pub const UNPROTECTED_TRIGGER_ROLE: Role = Role::Editor;

/// Marks a response as a trigger's own answer: the problem-details layer leaves it as it is
/// (a sync trigger's 500 carries the workflow's error, not a hub fault).
#[derive(Clone, Copy, Debug)]
pub(super) struct TriggerAnswer;

/// Whether `path` is one of the hub's own (see [`RESERVED_PATHS`]).
pub fn is_reserved(path: &str) -> bool {
    path == "/api"
        || RESERVED_PATHS.iter().any(|reserved| {
            if reserved.ends_with('/') {
                path.starts_with(reserved)
            } else {
                path == *reserved || path.starts_with(&format!("{reserved}/"))
            }
        })
}

/// Refuses a workflow whose `http` triggers claim a reserved path, or a (method, path) pair
/// another active workflow serves. One diagnostic per problem, at the trigger's line.
pub fn check_paths(workflow: &Workflow, routes: &HttpRoutes) -> Result<(), Vec<Diagnostic>> {
    let taken = routes.stats();
    let mut problems = Vec::new();
    for spec in &workflow.triggers {
        let TriggerKind::Http(trigger) = &spec.kind else {
            continue;
        };
        let diagnostic = |message: String, help: &str| Diagnostic {
            path: "workflow".into(),
            line: spec.location.line,
            column: spec.location.column,
            message,
            help: Some(help.to_string()),
        };
        if is_reserved(&trigger.path) {
            problems.push(diagnostic(
                format!(
                    "http trigger path {} is reserved on the hub (/api/…, /healthz, /metrics)",
                    trigger.path
                ),
                "choose another path, e.g. /hooks/…",
            ));
            continue;
        }
        let owner = taken.iter().find(|(owner, method, path, _)| {
            **owner != *workflow.name.as_str()
                && method.eq_ignore_ascii_case(&trigger.method)
                && *path == trigger.path
        });
        if let Some((owner, _, _, _)) = owner {
            problems.push(diagnostic(
                format!(
                    "{} {} is already served by workflow {owner}",
                    trigger.method, trigger.path
                ),
                "one workflow per method and path; change the path or remove the other trigger",
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The router's fallback: a request on a path the API does not own.
pub(super) async fn serve(State(state): State<HubState>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().as_str().to_string();
    let routes = state.workflows.routes();
    let own_auth = if is_reserved(&path) {
        None
    } else {
        routes.has_own_auth(&method, &path)
    };
    if own_auth != Some(true) {
        let principal = match auth::caller(&state, request.headers()).await {
            Ok(principal) => principal,
            Err(refused) => return refused.into_response(),
        };
        if is_reserved(&path) {
            return ApiError::not_found("not found", "no such route; see /api/v1/openapi.json")
                .into_response();
        }
        if let Err(refused) = auth::check_role(&principal, UNPROTECTED_TRIGGER_ROLE) {
            return refused.into_response();
        }
    }
    if !state.accepting() || state.stopping.is_cancelled() {
        return ApiError::unavailable(
            "the hub is not ready",
            "the hub is starting or stopping; try again shortly",
            1,
        )
        .into_response();
    }
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = request.into_parts();
    // The global body limit applies too; a route's own limit is usually lower. One byte over
    // the route's limit is read so that the routes answer 413 themselves.
    let limit = routes
        .body_limit(&method, &path)
        .map_or(state.max_body, |l| {
            usize::try_from(l.saturating_add(1)).unwrap_or(usize::MAX)
        })
        .min(state.max_body);
    let body: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => return ApiError::payload_too_large(limit).into_response(),
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_string(), v.to_string()))
        })
        .collect();
    let request = HttpRequest {
        method,
        path,
        query: Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
        remote,
    };
    // Cancel-safety: dropping `handle` abandons only the wait for a sync reply; the execution
    // is journaled and another hub (or this one after a restart) finishes it.
    tokio::select! {
        biased;
        () = state.stopping.cancelled() => ApiError::unavailable(
            "the hub is stopping",
            "the execution, if started, continues after the hub restarts or on another hub",
            5,
        )
        .into_response(),
        reply = routes.handle(request) => into_response(reply),
    }
}

/// A trigger's answer: successes and sync execution results as they are; refusals as
/// problem details.
fn into_response(reply: HttpReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let is_result = reply
        .headers
        .iter()
        .any(|(name, _)| name == "x-reactor-execution");
    let message = reply.json_body()["error"]["message"]
        .as_str()
        .map(str::to_string);
    if status.is_success() || is_result || message.is_none() {
        let mut response = Response::new(Body::from(reply.body));
        *response.status_mut() = status;
        for (name, value) in reply.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response.extensions_mut().insert(TriggerAnswer);
        return response;
    }
    let message = message.unwrap_or_default();
    let retry_after = reply
        .headers
        .iter()
        .find(|(name, _)| name == "retry-after")
        .and_then(|(_, v)| v.parse::<u32>().ok());
    let mut error = match status {
        StatusCode::INTERNAL_SERVER_ERROR => ApiError::new(
            status,
            "internal error",
            "the hub could not complete the request; see its log",
        ),
        _ => ApiError::new(
            status,
            status.canonical_reason().unwrap_or("refused"),
            &message,
        ),
    };
    error.0.retry_after = retry_after;
    let mut response = error.into_response();
    if let Some((_, allow)) = reply.headers.iter().find(|(name, _)| name == "allow")
        && let Ok(allow) = HeaderValue::try_from(allow.as_str())
    {
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_paths() {
        for path in [
            "/api",
            "/api/",
            "/api/v1/workflows",
            "/api/hook",
            "/healthz",
            "/healthz/x",
            "/metrics",
            "/metrics/x",
        ] {
            assert!(is_reserved(path), "{path}");
        }
        for path in [
            "/",
            "/apix",
            "/hooks/api/",
            "/healthzz",
            "/metricsx",
            "/x/metrics",
        ] {
            assert!(!is_reserved(path), "{path}");
        }
    }

    #[test]
    fn reserved_and_taken_paths_are_diagnosed_at_their_trigger() {
        let text = "reactor: 1\nname: w\ntriggers:\n  - http: { path: /ok }\n  - http: { path: /api/v1/x }\n  - http: { path: /metrics, method: GET }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
        let workflow = reactor_core::dsl::parse_workflow("w.yaml", text).unwrap();
        let runtime = reactor_core::engine::Runtime::new(
            std::sync::Arc::new(reactor_core::store::MemoryStore::new()),
            reactor_core::action::builtin_registry(Default::default()),
            reactor_core::engine::Environment::empty(),
            reactor_core::engine::RuntimeConfig::default(),
        );
        let routes = HttpRoutes::new(runtime);
        let problems = check_paths(&workflow, &routes).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, 5);
        assert!(problems[0].message.contains("/api/v1/x is reserved"));
        assert_eq!(problems[1].line, 6);

        let other = "reactor: 1\nname: other\ntriggers:\n  - http: { path: /ok }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
        let other = reactor_core::dsl::parse_workflow("o.yaml", other).unwrap();
        let TriggerKind::Http(trigger) = &other.triggers[0].kind else {
            panic!()
        };
        routes
            .replace("other", std::slice::from_ref(trigger))
            .unwrap();
        let problems = check_paths(&workflow, &routes).unwrap_err();
        assert_eq!(problems.len(), 3);
        assert_eq!(problems[0].line, 4);
        assert!(
            problems[0]
                .message
                .contains("already served by workflow other")
        );
        // A workflow may keep its own paths when it is replaced.
        assert!(check_paths(&other, &routes).is_ok());
    }
}
