//! [`ApiError`]: every API error, answered as RFC 9457 problem details
//! (`application/problem+json`). 4xx say what is wrong; 5xx say nothing internal and are
//! logged once, where they are made ([`ApiError::internal`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reactor_core::dsl::Diagnostic;
use serde_json::{Map, Value, json};

/// An API error: a boxed [`Problem`] (handlers return `Result<_, ApiError>` on every path,
/// so the error stays one pointer wide).
#[derive(Debug, Clone)]
pub struct ApiError(pub Box<Problem>);

/// The members of a problem-details document.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
    /// `type` member; `about:blank` unless the problem has a documented shape.
    pub kind: &'static str,
    /// Extension members (e.g. `diagnostics`).
    pub extra: Map<String, Value>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u32>,
}

/// `type` of a workflow that does not validate (422): `diagnostics` lists the problems.
pub const INVALID_WORKFLOW: &str = "urn:reactor:problem:invalid-workflow";

impl ApiError {
    /// A problem with `status`, `title` and `detail`.
    pub fn new(status: StatusCode, title: &str, detail: &str) -> ApiError {
        ApiError(Box::new(Problem {
            status,
            title: title.to_string(),
            detail: detail.to_string(),
            kind: "about:blank",
            extra: Map::new(),
            retry_after: None,
        }))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn bad_request(title: &str, detail: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, title, detail)
    }

    pub fn not_found(title: &str, detail: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, title, detail)
    }

    pub fn conflict(title: &str, detail: &str) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, title, detail)
    }

    pub fn unauthorized(detail: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn payload_too_large(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            &format!("request bodies are limited to {max} bytes (limits.max_body)"),
        )
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(title: &str, detail: &str, retry_after: u32) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, title, detail);
        error.0.retry_after = Some(retry_after);
        error
    }

    /// 422 for a workflow that does not validate, with every diagnostic.
    pub fn invalid_workflow(diagnostics: &[Diagnostic]) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the workflow is not valid",
            &format!(
                "{} problem(s); see diagnostics (line and column in the submitted YAML)",
                diagnostics.len()
            ),
        );
        error.0.kind = INVALID_WORKFLOW;
        let list: Vec<Value> = diagnostics
            .iter()
            .map(|d| {
                json!({
                    "line": d.line,
                    "column": d.column,
                    "message": d.message,
                    "help": d.help,
                })
            })
            .collect();
        error
            .0
            .extra
            .insert("diagnostics".into(), Value::Array(list));
        error
    }

    /// A 500 that reveals nothing; `error` is logged here, once.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            "the hub could not complete the request; see its log",
        )
    }

    /// The problem document.
    pub fn body(&self) -> Value {
        let problem = &self.0;
        let mut body = Map::new();
        body.insert("type".into(), json!(problem.kind));
        body.insert("title".into(), json!(problem.title));
        body.insert("status".into(), json!(problem.status.as_u16()));
        body.insert("detail".into(), json!(problem.detail));
        body.extend(problem.extra.clone());
        Value::Object(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.status.as_u16(),
            self.0.title,
            self.0.detail
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.0.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            self.body().to_string(),
        )
            .into_response();
        if self.0.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.0.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl From<reactor_core::store::StoreError> for ApiError {
    fn from(error: reactor_core::store::StoreError) -> ApiError {
        ApiError::internal(error)
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
