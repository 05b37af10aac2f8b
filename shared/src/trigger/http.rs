//! Routing of `http` triggers, framework-free: the agent's and hub's HTTP server turns each
//! request into an [`HttpRequest`], calls [`HttpRoutes::handle`] and writes the
//! [`HttpReply`] back. Everything about the trigger's contract lives here and is tested here.
//!
//! Order of checks, cheapest first: route (404) → method (405 with `Allow`) → body size
//! (413) → authentication (401, no detail) → shed when the runtime is saturated (503 with
//! `Retry-After: 1`) → body decoding (400) → submit.
//!
//! Decisions where DSL.md is silent:
//! - One route per (method, path). A workflow that claims a pair another workflow owns is
//!   refused by [`HttpRoutes::replace`] (hot reload keeps the old owner).
//! - `auth` and `verify` may both be set; both must pass. Both use the one `secret`.
//! - Body: JSON when the content type is JSON (`application/json`, `…+json`), an empty body
//!   is `null`; any other UTF-8 body (text, form) is a string; a non-UTF-8 body is refused
//!   with 400.
//! - `meta.query` and `meta.headers` are maps; a repeated name keeps every value in a list.
//!   `Authorization`, `Cookie` and the signature headers are never copied into the event.
//! - Sync answers carry the execution id in `X-Reactor-Execution`.
//! - `response: sync` waits for the execution with no deadline of its own: the server's
//!   request timeout applies. Dropping the `handle` future (client gone) leaves the
//!   execution running.
//! - The server should stop reading a body past [`HttpRoutes::body_limit`]; the 413 here is
//!   the check of record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;

use crate::engine::{Environment, Event, ExecutionStatus, Runtime, Submission, SubmitError};
use crate::expr::Scope;
use crate::flow::{HttpAuth, HttpResponseMode, HttpTrigger, WebhookVerify};
use crate::{Map, Value};

use super::signature::{check_slack, check_stripe, check_token, verify_hmac};
use super::{TriggerError, TriggerStats, WarnLimiter};

/// Largest body when the trigger sets no `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
pub use super::signature::{SIGNATURE_TOLERANCE, hmac_sha256_hex};

/// Headers never copied into `event.meta.headers`.
const HIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "x-reactor-token",
    "x-reactor-signature",
    "x-hub-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "x-slack-signature",
];

/// One request, as the server hands it over. Header names are lower case.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<SocketAddr>,
}

impl HttpRequest {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to write back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    fn json(status: u16, value: &Value) -> HttpReply {
        HttpReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn error(status: u16, message: &str) -> HttpReply {
        HttpReply::json(status, &json!({ "error": { "message": message } }))
    }

    fn with_header(mut self, name: &str, value: &str) -> HttpReply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body parsed as JSON (tests and logs).
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug)]
struct Route {
    workflow: Arc<str>,
    settings: HttpTrigger,
    stats: Arc<TriggerStats>,
}

/// The `http` triggers of every loaded workflow, by path then method.
#[derive(Debug)]
pub struct HttpRoutes {
    runtime: Runtime,
    table: RwLock<HashMap<String, Vec<Arc<Route>>>>,
    warn: WarnLimiter,
}

impl HttpRoutes {
    pub fn new(runtime: Runtime) -> HttpRoutes {
        HttpRoutes {
            runtime,
            table: RwLock::default(),
            warn: WarnLimiter::new(Duration::from_secs(60)),
        }
    }

    /// Installs `triggers` as the routes of `workflow`, replacing its previous ones. Refused
    /// (nothing changes) when another workflow owns one of the (method, path) pairs, or when
    /// the workflow lists one pair twice.
    pub fn replace(&self, workflow: &str, triggers: &[HttpTrigger]) -> Result<(), TriggerError> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for (i, trigger) in triggers.iter().enumerate() {
            let taken = table.get(&trigger.path).and_then(|routes| {
                routes
                    .iter()
                    .find(|r| r.settings.method == trigger.method && &*r.workflow != workflow)
            });
            if let Some(owner) = taken {
                return Err(TriggerError::Settings(format!(
                    "{} {} is already served by workflow {}",
                    trigger.method, trigger.path, owner.workflow
                )));
            }
            if triggers[..i]
                .iter()
                .any(|t| t.method == trigger.method && t.path == trigger.path)
            {
                return Err(TriggerError::Settings(format!(
                    "{} {} is listed twice",
                    trigger.method, trigger.path
                )));
            }
        }
        remove_from(&mut table, workflow);
        let name: Arc<str> = Arc::from(workflow);
        for trigger in triggers {
            table
                .entry(trigger.path.clone())
                .or_default()
                .push(Arc::new(Route {
                    workflow: name.clone(),
                    settings: trigger.clone(),
                    stats: Arc::default(),
                }));
        }
        Ok(())
    }

    /// Removes every route of `workflow`.
    pub fn remove(&self, workflow: &str) {
        remove_from(
            &mut self.table.write().unwrap_or_else(|p| p.into_inner()),
            workflow,
        );
    }

    /// The counters of every route: (workflow, method, path, stats).
    pub fn stats(&self) -> Vec<(Arc<str>, String, String, Arc<TriggerStats>)> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = table
            .values()
            .flatten()
            .map(|r| {
                (
                    r.workflow.clone(),
                    r.settings.method.clone(),
                    r.settings.path.clone(),
                    r.stats.clone(),
                )
            })
            .collect();
        out.sort_by(|a, b| (&a.2, &a.1).cmp(&(&b.2, &b.1)));
        out
    }

    /// The most the server should read of a body for (method, path); `None` for no route.
    pub fn body_limit(&self, method: &str, path: &str) -> Option<u64> {
        self.find(method, path)
            .ok()
            .map(|r| r.settings.max_body.unwrap_or(DEFAULT_MAX_BODY))
    }

    /// Whether the route at (method, path) checks credentials of its own (`auth` other than
    /// `none`, or `verify`); `None` when no route answers that pair. A server that puts its
    /// own authentication in front of unprotected routes asks this first.
    pub fn has_own_auth(&self, method: &str, path: &str) -> Option<bool> {
        self.find(method, path)
            .ok()
            .map(|r| r.settings.auth != HttpAuth::None || r.settings.verify.is_some())
    }

    fn find(&self, method: &str, path: &str) -> Result<Arc<Route>, Option<Vec<String>>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let routes = table.get(path).ok_or(None)?;
        routes
            .iter()
            .find(|r| r.settings.method.eq_ignore_ascii_case(method))
            .cloned()
            .ok_or_else(|| Some(routes.iter().map(|r| r.settings.method.clone()).collect()))
    }

    /// Answers one request.
    pub async fn handle(&self, request: HttpRequest) -> HttpReply {
        let route = match self.find(&request.method, &request.path) {
            Ok(route) => route,
            Err(None) => return HttpReply::error(404, "no trigger at this path"),
            Err(Some(mut allowed)) => {
                allowed.sort();
                return HttpReply::error(405, "method not allowed")
                    .with_header("allow", &allowed.join(", "));
            }
        };
        let stats = &route.stats;
        let limit = route.settings.max_body.unwrap_or(DEFAULT_MAX_BODY);
        if request.body.len() as u64 > limit {
            stats.count_rejected();
            return HttpReply::error(413, &format!("body larger than {limit} bytes"));
        }
        match self.authenticate(&route, &request) {
            Ok(true) => {}
            Ok(false) => {
                stats.count_rejected();
                return HttpReply::error(401, "unauthorized");
            }
            Err(message) => {
                stats.record_error(&message);
                if self.warn.allow() {
                    tracing::warn!(workflow = %route.workflow, trigger = "http", path = %route.settings.path, error = %message, "cannot check the request's credentials");
                }
                return HttpReply::error(500, "internal error");
            }
        }
        if self.runtime.saturated() {
            stats.count_shed();
            return HttpReply::error(503, "busy, try again").with_header("retry-after", "1");
        }
        let data = match decode_body(&request) {
            Ok(data) => data,
            Err(message) => {
                stats.count_rejected();
                return HttpReply::error(400, &message);
            }
        };
        let mut event = Event::new(
            "http",
            &format!("reactor:http{}", route.settings.path),
            data,
        );
        event.meta = meta(&request);
        let submitted = self
            .runtime
            .submit_watched(&route.workflow, event, Value::Object(Map::new()))
            .await;
        let (id, watch) = match submitted {
            Ok((Submission::Accepted(id), watch)) => {
                stats.count_event();
                (id, watch)
            }
            Ok((Submission::Skipped, _)) => {
                stats.count_event();
                return HttpReply::json(200, &json!({ "status": "skipped" }));
            }
            Ok((Submission::Dropped, _)) => {
                stats.count_event();
                return HttpReply::json(429, &json!({ "status": "dropped" }));
            }
            Err(error) => {
                stats.record_error(&error.to_string());
                if self.warn.allow() {
                    tracing::warn!(workflow = %route.workflow, trigger = "http", %error, "submitting the request's event failed");
                }
                return match error {
                    SubmitError::ShuttingDown | SubmitError::UnknownWorkflow(_) => {
                        HttpReply::error(503, "unavailable").with_header("retry-after", "1")
                    }
                    _ => HttpReply::error(500, "internal error"),
                };
            }
        };
        if route.settings.response == HttpResponseMode::Async {
            return HttpReply::json(202, &json!({ "execution": id.to_string() }));
        }
        let finished = match watch {
            Some(watch) => watch.finished().await,
            None => self.runtime.wait(id).await,
        };
        match finished {
            Ok(record) if record.status == ExecutionStatus::Succeeded => {
                HttpReply::json(200, &record.output)
                    .with_header("x-reactor-execution", &id.to_string())
            }
            Ok(record) => {
                let (message, step) = match &record.error {
                    Some(e) => (e.message.clone(), e.step.clone()),
                    None => (format!("execution {}", record.status.as_str()), None),
                };
                HttpReply::json(
                    500,
                    &json!({ "error": { "message": message, "step": step }, "execution": id.to_string() }),
                )
                .with_header("x-reactor-execution", &id.to_string())
            }
            Err(error) => {
                stats.record_error(&error.to_string());
                HttpReply::error(500, "internal error")
            }
        }
    }

    /// `Ok(false)`: wrong or missing credentials. `Err`: the secret could not be resolved.
    fn authenticate(&self, route: &Route, request: &HttpRequest) -> Result<bool, String> {
        let settings = &route.settings;
        if settings.auth == HttpAuth::None && settings.verify.is_none() {
            return Ok(true);
        }
        let secret = self.secret(settings)?;
        let secret = secret.as_bytes();
        let now = chrono::Utc::now().timestamp();
        let auth_ok = match settings.auth {
            HttpAuth::None => true,
            HttpAuth::Token => check_token(secret, request),
            HttpAuth::Hmac => request
                .header("x-reactor-signature")
                .and_then(|v| v.strip_prefix("sha256="))
                .is_some_and(|hex| verify_hmac(secret, &[&request.body], hex)),
        };
        let verify_ok = match settings.verify {
            None => true,
            Some(WebhookVerify::Github) => request
                .header("x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256="))
                .is_some_and(|hex| verify_hmac(secret, &[&request.body], hex)),
            Some(WebhookVerify::Stripe) => check_stripe(secret, request, now),
            Some(WebhookVerify::Slack) => check_slack(secret, request, now),
        };
        Ok(auth_ok && verify_ok)
    }

    fn secret(&self, settings: &HttpTrigger) -> Result<String, String> {
        let template = settings
            .secret
            .as_ref()
            .ok_or("the trigger has no secret")?;
        let environment = self.runtime.environment();
        let scope = SecretScope(&environment);
        match template.eval(&scope) {
            Ok(Value::String(s)) if !s.is_empty() => Ok(s),
            Ok(Value::String(_) | Value::Null) => Err("the secret is empty".into()),
            Ok(other) => Ok(other.to_string()),
            Err(error) => Err(format!("evaluating the secret: {error}")),
        }
    }
}

fn remove_from(table: &mut HashMap<String, Vec<Arc<Route>>>, workflow: &str) {
    table.retain(|_, routes| {
        routes.retain(|r| &*r.workflow != workflow);
        !routes.is_empty()
    });
}

/// What a `secret` template sees: `secrets` and `env`.
struct SecretScope<'a>(&'a Environment);

impl Scope for SecretScope<'_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        match name {
            "secrets" => Some(&self.0.secrets),
            "env" => Some(&self.0.env),
            _ => None,
        }
    }
}

fn decode_body(request: &HttpRequest) -> Result<Value, String> {
    let content_type = request
        .header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    if request.body.is_empty() {
        return Ok(Value::Null);
    }
    if is_json {
        return serde_json::from_slice(&request.body)
            .map_err(|e| format!("invalid JSON body: {e}"));
    }
    let text = String::from_utf8(request.body.clone())
        .map_err(|_| "the body is not UTF-8 text; send JSON or text".to_string())?;
    // Clients such as `curl -d` label JSON as a form: without a JSON content type, a body
    // that is a JSON object or list is still taken as JSON; anything else stays text.
    let trimmed = text.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(value) = serde_json::from_str::<Value>(&text)
    {
        return Ok(value);
    }
    Ok(Value::String(text))
}

/// Adds `value` under `name`; a repeated name turns the entry into a list.
fn insert_multi(map: &mut Map, name: &str, value: &str) {
    match map.get_mut(name) {
        None => {
            map.insert(name.to_string(), Value::String(value.to_string()));
        }
        Some(Value::Array(items)) => items.push(Value::String(value.to_string())),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, Value::String(value.to_string())]);
        }
    }
}

fn meta(request: &HttpRequest) -> Value {
    let mut query = Map::new();
    for (name, value) in &request.query {
        insert_multi(&mut query, name, value);
    }
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        if !HIDDEN_HEADERS.contains(&name.as_str()) {
            insert_multi(&mut headers, name, value);
        }
    }
    json!({
        "method": request.method.to_ascii_uppercase(),
        "path": request.path,
        "query": query,
        "headers": headers,
        "remote": request.remote.map(|r| r.to_string()),
    })
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
