//! Stand-in for `reactor_core::trigger::http` (being written on branch `triggers`), with the
//! same names: [`HttpRoutes`] (`replace` / `remove` / `handle`), [`HttpRequest`],
//! [`HttpReply`]. Deleted once that branch is merged; only `auth: none` is supported here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use reactor_core::Value;
use reactor_core::engine::{Event, ExecutionStatus, Runtime, Submission};
use reactor_core::flow::{HttpAuth, HttpResponseMode, HttpTrigger};
use serde_json::json;

/// A request, framework-free.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<SocketAddr>,
}

/// A reply, framework-free.
#[derive(Debug, Clone)]
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
            body: value.to_string().into_bytes(),
        }
    }
}

/// The http triggers of every workflow, keyed by (method, path).
#[derive(Debug, Clone)]
pub struct HttpRoutes {
    runtime: Runtime,
    routes: Arc<RwLock<HashMap<(String, String), (Arc<str>, HttpTrigger)>>>,
}

impl HttpRoutes {
    pub fn new(runtime: Runtime) -> HttpRoutes {
        HttpRoutes {
            runtime,
            routes: Arc::default(),
        }
    }

    pub fn replace(&self, workflow: &str, triggers: &[HttpTrigger]) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.retain(|_, (name, _)| &**name != workflow);
        for trigger in triggers {
            routes.insert(
                (trigger.method.clone(), trigger.path.clone()),
                (Arc::from(workflow), trigger.clone()),
            );
        }
    }

    pub fn remove(&self, workflow: &str) {
        self.replace(workflow, &[]);
    }

    pub async fn handle(&self, request: HttpRequest) -> HttpReply {
        let found = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(request.method.clone(), request.path.clone()))
            .cloned();
        let Some((workflow, trigger)) = found else {
            return HttpReply::json(404, &json!({ "error": "no trigger at this path" }));
        };
        if trigger.auth != HttpAuth::None {
            return HttpReply::json(501, &json!({ "error": "auth is not supported yet" }));
        }
        if let Some(max) = trigger.max_body
            && request.body.len() as u64 > max
        {
            return HttpReply::json(413, &json!({ "error": "request body too large" }));
        }
        if self.runtime.saturated() {
            let mut reply = HttpReply::json(503, &json!({ "error": "busy" }));
            reply.headers.push(("retry-after".into(), "1".into()));
            return reply;
        }
        let data = if request.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&request.body).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&request.body).into_owned())
            })
        };
        let mut event = Event::new("http", &format!("reactor:http{}", request.path), data);
        event.meta = json!({
            "path": request.path,
            "method": request.method,
            "query": request.query,
            "remote": request.remote.map(|r| r.to_string()),
            "headers": request.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<String, Value>>()
        });
        let submitted = self
            .runtime
            .submit(&workflow, event, Value::Object(Default::default()))
            .await;
        let id = match submitted {
            Ok(Submission::Accepted(id)) => id,
            Ok(Submission::Skipped) => return HttpReply::json(200, &json!({"status": "skipped"})),
            Ok(Submission::Dropped) => return HttpReply::json(429, &json!({"status": "dropped"})),
            Err(e) => return HttpReply::json(500, &json!({ "error": e.to_string() })),
        };
        if trigger.response == HttpResponseMode::Async {
            return HttpReply::json(202, &json!({ "execution": id.to_string() }));
        }
        match self.runtime.wait(id).await {
            Ok(record) if record.status == ExecutionStatus::Succeeded => {
                HttpReply::json(200, &record.output)
            }
            Ok(record) => HttpReply::json(
                500,
                &json!({ "execution": id.to_string(), "error": record.error.map(|e| e.message) }),
            ),
            Err(e) => HttpReply::json(500, &json!({ "error": e.to_string() })),
        }
    }
}
