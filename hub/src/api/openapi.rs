//! `GET /api/v1/openapi.json`: an OpenAPI 3.1 document built from the mounted route table
//! ([`crate::server::Server::table`]), so every mounted route is in it by construction. Each
//! operation names the role it needs (`x-required-role`); errors are problem details.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Map, Value, json};

use crate::server::RouteInfo;

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The path parameters of an axum path (`{name}` segments).
fn parameters(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_lowercase();
    for segment in path.trim_start_matches("/api/v1").split('/') {
        let word = segment.trim_matches(|c| c == '{' || c == '}');
        if word.is_empty() {
            continue;
        }
        id.push('_');
        id.push_str(&word.replace(['.', '-'], "_"));
    }
    id
}

/// Query parameters of the routes that take some.
fn query_parameters(method: &Method, path: &str) -> Vec<Value> {
    let names: &[(&str, &str)] = match (method.as_str(), path) {
        ("GET", "/api/v1/executions") => &[
            ("workflow", "workflow name"),
            ("status", "queued, running, succeeded, failed or cancelled"),
            (
                "since",
                "created at or after (RFC 3339 or epoch milliseconds)",
            ),
            ("until", "created before (RFC 3339 or epoch milliseconds)"),
            ("device", "device id (executions reported by devices)"),
            ("limit", "page size, 1 to 500 (default 50)"),
            ("cursor", "next_cursor of the previous page"),
        ],
        ("POST", "/api/v1/devices/{id}/commands") => &[(
            "wait",
            "wait up to this long for the device's answer (e.g. 5s; at most 30s)",
        )],
        ("GET", "/api/v1/workflows/{name}/diff") => &[
            ("from", "old version (default: the one before `to`)"),
            ("to", "new version (default: the latest)"),
        ],
        _ => &[],
    };
    names
        .iter()
        .map(|(name, description)| {
            json!({
                "name": name, "in": "query", "required": false,
                "description": description, "schema": { "type": "string" }
            })
        })
        .collect()
}

fn request_body(method: &Method, path: &str) -> Option<Value> {
    let (content, description) = match (method.as_str(), path) {
        ("POST", "/api/v1/workflows") | ("PUT", "/api/v1/workflows/{name}") => {
            ("application/yaml", "the workflow's YAML text")
        }
        ("POST", "/api/v1/workflows/{name}/run") => ("application/json", "the event's data"),
        ("POST", "/api/v1/events") => (
            "application/json",
            "{\"type\": \"...\", \"source\": \"...\", \"data\": ...}",
        ),
        ("POST" | "PUT", _) => ("application/json", "see the summary"),
        _ => return None,
    };
    Some(json!({
        "description": description,
        "content": { content: { "schema": {} } }
    }))
}

/// The OpenAPI document of `routes` (plus itself).
pub fn document(routes: &[RouteInfo]) -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let problem = json!({ "$ref": "#/components/responses/Problem" });
    let mut all: Vec<RouteInfo> = routes.to_vec();
    all.push(RouteInfo {
        method: Method::GET,
        path: PATH,
        role: crate::auth::Role::Viewer,
        summary: "This OpenAPI document",
    });
    for route in &all {
        let mut parameters: Vec<Value> = parameters(route.path)
            .into_iter()
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
            })
            .collect();
        parameters.extend(query_parameters(&route.method, route.path));
        let mut operation = json!({
            "operationId": operation_id(&route.method, route.path),
            "summary": route.summary,
            "x-required-role": route.role.as_str(),
            "security": [{ "bearer": [] }],
            "parameters": parameters,
            "responses": {
                "2XX": { "description": "success (JSON)" },
                "400": problem, "401": problem, "403": problem, "404": problem,
                "413": problem, "422": problem, "500": problem,
            },
        });
        if let Some(body) = request_body(&route.method, route.path) {
            operation["requestBody"] = body;
        }
        paths
            .entry(route.path)
            .or_default()
            .insert(route.method.as_str().to_lowercase(), operation);
    }
    let mut healthz = Map::new();
    healthz.insert(
        "get".into(),
        json!({
            "operationId": "healthz",
            "summary": "200 once the hub is ready; no token needed",
            "security": [],
            "responses": { "200": { "description": "ready" }, "503": { "description": "starting or stopping" } },
        }),
    );
    paths.insert("/healthz", healthz);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Reactor hub API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Workflows, executions, events and tokens. Every route but /healthz needs `Authorization: Bearer TOKEN`; `x-required-role` is the lowest role allowed (viewer < editor < admin). Errors are RFC 9457 problem details.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details",
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": { "type": "string" },
                        "title": { "type": "string" },
                        "status": { "type": "integer" },
                        "detail": { "type": "string" },
                        "diagnostics": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "line": { "type": "integer" },
                                    "column": { "type": "integer" },
                                    "message": { "type": "string" },
                                    "help": { "type": ["string", "null"] }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_and_ids() {
        assert_eq!(
            parameters("/api/v1/workflows/{name}/versions/{version}"),
            vec!["name".to_string(), "version".to_string()]
        );
        assert_eq!(
            operation_id(&Method::GET, "/api/v1/workflows/{name}/versions"),
            "get_workflows_name_versions"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let routes: Vec<RouteInfo> = crate::api::routes()
            .into_iter()
            .map(|r| RouteInfo {
                method: r.method,
                path: r.path,
                role: r.role,
                summary: r.summary,
            })
            .collect();
        let document = document(&routes);
        for route in &routes {
            let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
            assert_eq!(
                operation["x-required-role"],
                route.role.as_str(),
                "{} {}",
                route.method,
                route.path
            );
        }
        assert!(document["paths"][PATH]["get"].is_object());
    }
}
