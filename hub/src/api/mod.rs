//! The hub's API v1 (JSON; errors as RFC 9457 problem details, see [`problem`]).
//!
//! | route | role | |
//! |---|---|---|
//! | `GET /api/v1/workflows` | viewer | active workflows |
//! | `POST /api/v1/workflows` | editor | body: YAML → 201, 409 if the name is active, 422 with diagnostics |
//! | `GET /api/v1/workflows/{name}` | viewer | latest version with its source |
//! | `PUT /api/v1/workflows/{name}` | editor | body: YAML → 201 created, 200 new version or unchanged |
//! | `DELETE /api/v1/workflows/{name}` | editor | 204; versions are kept |
//! | `GET /api/v1/workflows/{name}/versions` | viewer | every version (no source) |
//! | `GET /api/v1/workflows/{name}/versions/{version}` | viewer | one version with its source |
//! | `GET /api/v1/workflows/{name}/diff?from=&to=` | viewer | line diff between two versions |
//! | `POST /api/v1/workflows/{name}/run` | editor | body: event data → 202 `{"execution": id}` |
//! | `GET /api/v1/executions` | viewer | filters: workflow, status, since, until, limit, cursor |
//! | `GET /api/v1/executions/{id}` | viewer | `exec`'s shape + trace |
//! | `POST /api/v1/executions/{id}/cancel` | editor | 202 |
//! | `POST /api/v1/executions/{id}/retry` | editor | 202 `{"execution": new id}` |
//! | `POST /api/v1/events` | editor | emit an event into `event` triggers |
//! | `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` | admin | API tokens |
//! | `GET /api/v1/openapi.json` | viewer | this table as OpenAPI 3.1 |

pub mod diff;
mod events;
mod executions;
pub mod openapi;
pub mod problem;
mod retry;
mod tokens;
pub mod trace;
mod workflows;

use axum::http::Method;
use axum::routing::{delete, get, post, put};

use crate::auth::Role;
use crate::server::RouteSpec;

/// The hub's own API routes.
pub fn routes() -> Vec<RouteSpec> {
    use Method as M;
    use Role::{Admin, Editor, Viewer};
    vec![
        RouteSpec::new(
            M::GET,
            "/api/v1/workflows",
            Viewer,
            "List active workflows",
            get(workflows::list),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/workflows",
            Editor,
            "Create a workflow (body: YAML)",
            post(workflows::create),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/workflows/{name}",
            Viewer,
            "Get a workflow's latest version and source",
            get(workflows::get_one),
        ),
        RouteSpec::new(
            M::PUT,
            "/api/v1/workflows/{name}",
            Editor,
            "Create or update a workflow (body: YAML)",
            put(workflows::put),
        ),
        RouteSpec::new(
            M::DELETE,
            "/api/v1/workflows/{name}",
            Editor,
            "Delete a workflow (its versions are kept)",
            delete(workflows::remove),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/workflows/{name}/versions",
            Viewer,
            "List every version of a workflow",
            get(workflows::versions),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/workflows/{name}/versions/{version}",
            Viewer,
            "Get one version with its source",
            get(workflows::version),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/workflows/{name}/diff",
            Viewer,
            "Line diff between two versions (?from=&to=)",
            get(workflows::diff),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/workflows/{name}/run",
            Editor,
            "Run a workflow now (body: the event's data) → 202",
            post(executions::run),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/executions",
            Viewer,
            "List executions (workflow, status, since, until, device, limit, cursor)",
            get(executions::list),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/executions/{id}",
            Viewer,
            "Get an execution with its trace",
            get(executions::get_one),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/executions/{id}/cancel",
            Editor,
            "Cancel a running execution",
            post(executions::cancel),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/executions/{id}/retry",
            Editor,
            "Retry a failed execution from its failed step",
            post(retry::retry),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/events",
            Editor,
            "Emit an event into the hub's event triggers",
            post(events::emit),
        ),
        RouteSpec::new(
            M::GET,
            "/api/v1/tokens",
            Admin,
            "List API tokens (never their secrets)",
            get(tokens::list),
        ),
        RouteSpec::new(
            M::POST,
            "/api/v1/tokens",
            Admin,
            "Create an API token (shown once)",
            post(tokens::create),
        ),
        RouteSpec::new(
            M::DELETE,
            "/api/v1/tokens/{id}",
            Admin,
            "Revoke an API token",
            delete(tokens::revoke),
        ),
    ]
}

/// A request body as UTF-8 text, or 400.
fn text_body(body: &[u8], what: &str) -> Result<String, problem::ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| problem::ApiError::bad_request("the body is not UTF-8", what))
}
