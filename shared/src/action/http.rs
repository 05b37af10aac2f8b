//! The `http` action: calls an HTTP endpoint; JSON in and out
//!
//! Decisions:
//! - One reqwest client per [`HttpAction`] (connection pool shared by all its steps), built
//!   from [`HttpConfig`]: total timeout 30s (a step's `timeout` overrides it), connect timeout
//!   10s, at most 10 redirects, responses up to 10 MiB, `User-Agent: reactor/<version>`.
//! - TLS: rustls with the *ring* provider (installed once as the process default when none is;
//!   no aws-lc, so no cmake), certificates checked by `rustls-platform-verifier` (reqwest's
//!   `rustls-no-provider` feature), which on Linux reads the system store (`/etc/ssl/certs`,
//!   via `rustls-native-certs`). A device without a CA bundle needs `ca-certificates`; if no
//!   root can be loaded the client cannot be built, and every `http` step then fails
//!   permanently saying so (the rest of the runtime keeps working).
//! - `method`: GET by default, but POST when `json` or `body` is given without a method (a body
//!   on a GET is almost always a mistake; curl does the same with `-d`). Case-insensitive.
//! - `json` is sent as JSON (`Content-Type: application/json`), `body` as text
//!   (`text/plain; charset=utf-8`) unless `headers` sets a content type; both at once is an
//!   error. `query` values may be strings, numbers, booleans or lists of them (repeated keys);
//!   they are added to any query already in `url`. `null` values are skipped.
//! - Every request carries `Idempotency-Key: <context.idempotency_key>` (stable across retries
//!   and restarts); an explicit `Idempotency-Key` in `headers` wins.
//! - Output `{status, headers, body}`: header names lower-case, repeated headers joined with
//!   `", "`; `body` is parsed JSON when the content type is JSON (`application/json`,
//!   `*+json`) or, whatever the type, when it is a JSON map or list; otherwise text (invalid
//!   UTF-8 replaced); an empty body is `null`.
//! - `expect` (a list of status codes) replaces the default "any 2xx". A status outside it
//!   fails the step: 5xx, 429 and 408 as retryable, others (4xx, 3xx) as permanent, with the
//!   status and the start of the response body in the message. Connection errors, timeouts
//!   and broken response bodies are retryable; bad settings, too many redirects and a body over
//!   the limit are permanent.
//! - Messages show the method and the URL without user info and without the query string
//!   (where secrets such as tokens often travel): `GET https://host/path?…`.
//! - Outbound guard: with [`HttpConfig::guard`] set (the hub), targets in private, loopback,
//!   link-local … ranges are refused after DNS resolution and on every redirect unless
//!   allow-listed; see [`super::http_guard`]. A refusal is a permanent error.
//! - Cancellation: the request future is dropped, which closes its connection. The server may
//!   or may not have seen the request; that is what the idempotency key is for.

use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Url};
use serde_json::json;

use super::settings::{With, as_u64, clip, scalar_text};
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::{Map, Value};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "http",
    description: "calls an HTTP endpoint; JSON in and out",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "method",
            required: false,
            json_type: "string",
            description: "GET (default; POST when json or body is given), POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
        },
        SettingSpec {
            name: "url",
            required: true,
            json_type: "string",
            description: "http:// or https:// address",
        },
        SettingSpec {
            name: "headers",
            required: false,
            json_type: "object",
            description: "request headers",
        },
        SettingSpec {
            name: "query",
            required: false,
            json_type: "object",
            description: "query parameters (lists repeat the key)",
        },
        SettingSpec {
            name: "json",
            required: false,
            json_type: "",
            description: "a value sent as a JSON body (not with body)",
        },
        SettingSpec {
            name: "body",
            required: false,
            json_type: "string",
            description: "a text body (not with json)",
        },
        SettingSpec {
            name: "timeout",
            required: false,
            json_type: "string",
            description: "a duration (default 30s)",
        },
        SettingSpec {
            name: "expect",
            required: false,
            json_type: "array",
            description: "accepted status codes (default: any 2xx)",
        },
    ],
};

/// Limits of the `http` action, set by the runtime.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Whole-request timeout when the step gives none.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Larger responses fail the step.
    pub max_response_bytes: usize,
    pub max_redirects: usize,
    pub user_agent: String,
    /// Refuse non-public targets unless allow-listed (the hub); `None` reaches anything.
    pub guard: Option<Arc<super::http_guard::NetGuard>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 10 * 1024 * 1024,
            max_redirects: 10,
            user_agent: format!("reactor/{}", env!("CARGO_PKG_VERSION")),
            guard: None,
        }
    }
}

impl HttpConfig {
    /// The defaults with the outbound guard on: non-public targets are refused unless
    /// `allow` (CIDRs, addresses, host names, `*.domain`) lists them. What the hub uses.
    pub fn guarded<S: AsRef<str>>(
        allow: &[S],
    ) -> Result<HttpConfig, super::http_guard::AllowListError> {
        Ok(HttpConfig {
            guard: Some(Arc::new(super::http_guard::NetGuard::new(allow)?)),
            ..HttpConfig::default()
        })
    }
}

/// The HTTP client could not be built (typically: no CA certificates on the system).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the HTTP client could not be set up: {0}")]
pub struct HttpSetupError(String);

/// Installs rustls' ring provider as the process default, once, unless one is installed.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already the default: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A parsed `http` step.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// `None`: any 2xx.
    pub expect: Option<Vec<u16>>,
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl HttpRequest {
    pub fn parse(input: &Value) -> Result<Self, ActionError> {
        let with = With::new(&SPEC, input)?;
        let json_body = with.get("json");
        let text_body = with.string("body").map_err(|_| {
            with.error("\"body\" must be a string; use \"json\" to send a structured value")
        })?;
        if json_body.is_some() && text_body.is_some() {
            return Err(with.error("give either \"json\" or \"body\", not both"));
        }
        let method = match with.string("method")? {
            Some(text) => {
                let upper = text.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    return Err(with.error(format!(
                        "unknown method {text:?}; use one of {}",
                        METHODS.join(", ")
                    )));
                }
                Method::from_bytes(upper.as_bytes()).map_err(|e| with.error(e))?
            }
            None if json_body.is_some() || text_body.is_some() => Method::POST,
            None => Method::GET,
        };

        let url_text = with.required_string("url")?;
        let mut url = Url::parse(url_text)
            .map_err(|e| with.error(format!("\"url\" is not a valid URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(with.error(format!(
                "\"url\" must start with http:// or https://, not {}://",
                url.scheme()
            )));
        }
        if let Some(query) = with.object("query")? {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                let bad = || {
                    with.error(format!(
                        "query parameter {key:?} must be a string, number, boolean or a list of them"
                    ))
                };
                match value {
                    Value::Null => {}
                    Value::Array(items) => {
                        for item in items {
                            pairs.append_pair(key, &scalar_text(item).ok_or_else(bad)?);
                        }
                    }
                    other => {
                        pairs.append_pair(key, &scalar_text(other).ok_or_else(bad)?);
                    }
                }
            }
        }
        // An empty `query` map would leave a bare `?`.
        if url.query() == Some("") {
            url.set_query(None);
        }

        let mut headers = HeaderMap::new();
        if let Some(given) = with.object("headers")? {
            for (name, value) in given {
                if value.is_null() {
                    continue;
                }
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| with.error(format!("{name:?} is not a valid header name")))?;
                let text = scalar_text(value).ok_or_else(|| {
                    with.error(format!(
                        "header {name:?} must be a string, number or boolean"
                    ))
                })?;
                let value = HeaderValue::from_str(&text).map_err(|_| {
                    with.error(format!(
                        "header {name:?} has characters a header cannot hold"
                    ))
                })?;
                headers.append(header, value);
            }
        }
        let body = match (json_body, text_body) {
            (Some(value), _) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(value.to_string().into_bytes())
            }
            (None, Some(text)) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                Some(text.as_bytes().to_vec())
            }
            (None, None) => None,
        };

        let expect = match with.get("expect") {
            None => None,
            Some(value) => {
                let bad = || with.error("\"expect\" must be a list of status codes (100-599)");
                let items = value.as_array().ok_or_else(bad)?;
                let codes = items
                    .iter()
                    .map(|item| {
                        as_u64(item)
                            .filter(|code| (100..=599).contains(code))
                            .map(|code| code as u16)
                            .ok_or_else(bad)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if codes.is_empty() {
                    return Err(bad());
                }
                Some(codes)
            }
        };

        Ok(HttpRequest {
            method,
            url,
            headers,
            body,
            timeout: with.duration("timeout")?,
            expect,
        })
    }

    /// `METHOD url` for messages, without user info or query.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, redacted(&self.url))
    }

    fn accepts(&self, status: u16) -> bool {
        match &self.expect {
            Some(codes) => codes.contains(&status),
            None => (200..300).contains(&status),
        }
    }
}

/// The URL without user info, query or fragment (`?…` marks a removed query).
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

/// What came back.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names; repeated headers joined with `", "`.
    pub headers: Map,
    pub body: Value,
}

impl HttpResponse {
    pub fn to_value(&self) -> Value {
        json!({"status": self.status, "headers": self.headers, "body": self.body})
    }
}

/// The `http` action: one client, many requests.
#[derive(Clone, Debug)]
pub struct HttpAction {
    client: Result<Client, HttpSetupError>,
    config: Arc<HttpConfig>,
}

impl HttpAction {
    /// Builds the client. If that fails, the action still registers and every step fails
    /// permanently with the reason; use [`HttpAction::try_new`] to fail at startup instead.
    pub fn new(config: HttpConfig) -> Self {
        let client = build_client(&config);
        if let Err(e) = &client {
            tracing::warn!(error = %e, "the http action is unavailable");
        }
        HttpAction {
            client,
            config: Arc::new(config),
        }
    }

    pub fn try_new(config: HttpConfig) -> Result<Self, HttpSetupError> {
        let client = build_client(&config)?;
        Ok(HttpAction {
            client: Ok(client),
            config: Arc::new(config),
        })
    }

    /// Sends one request: the whole action, minus parsing `with:`.
    pub async fn send(
        &self,
        request: &HttpRequest,
        idempotency_key: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<HttpResponse, ActionError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| ActionError::permanent(format!("http: {e}")))?;
        let timeout = request.timeout.unwrap_or(self.config.timeout);
        // Cancel safety: the only state is inside `exchange`; dropping it closes the connection
        // (or returns it to the pool unused). Nothing is half-recorded here.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(ActionError::Cancelled),
            _ = tokio::time::sleep(timeout) => Err(ActionError::retryable(format!(
                "http: {} timed out after {}",
                request.describe(),
                crate::flow::format_duration(timeout)
            ))),
            result = self.exchange(client, request, idempotency_key) => result,
        }
    }

    async fn exchange(
        &self,
        client: &Client,
        request: &HttpRequest,
        idempotency_key: &str,
    ) -> Result<HttpResponse, ActionError> {
        let what = request.describe();
        if let Some(guard) = &self.config.guard {
            guard
                .check_url(&request.url)
                .map_err(|blocked| ActionError::permanent(format!("http: {what}: {blocked}")))?;
        }
        let mut headers = request.headers.clone();
        if !idempotency_key.is_empty() && !headers.contains_key("idempotency-key") {
            let value = HeaderValue::from_str(idempotency_key).map_err(|_| {
                ActionError::permanent(format!(
                    "http: the idempotency key {idempotency_key:?} cannot be sent as a header"
                ))
            })?;
            headers.insert("idempotency-key", value);
        }
        let mut builder = client
            .request(request.method.clone(), request.url.clone())
            .headers(headers);
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| send_error(&what, e))?;
        let status = response.status();

        let max = self.config.max_response_bytes;
        let too_large = || {
            ActionError::permanent(format!(
                "http: {what}: the response body is larger than the {max}-byte limit"
            ))
        };
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| ActionError::Retryable {
            message: format!(
                "http: {what} → {status}: reading the response failed: {}",
                e.without_url()
            ),
            status: Some(status.as_u16()),
        })? {
            if bytes.len() + chunk.len() > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }

        let mut out_headers = Map::new();
        for (name, value) in response.headers() {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match out_headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&text);
                }
                _ => {
                    out_headers.insert(name.as_str().to_string(), Value::String(text));
                }
            }
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let code = status.as_u16();
        if !request.accepts(code) {
            let text = String::from_utf8_lossy(&bytes);
            let snippet = clip(text.trim(), 300, false);
            let mut message = format!("http: {what} → {status}");
            if !snippet.is_empty() {
                message.push_str(": ");
                message.push_str(snippet);
            }
            return Err(if code >= 500 || code == 429 || code == 408 {
                ActionError::Retryable {
                    message,
                    status: Some(code),
                }
            } else {
                ActionError::Permanent {
                    message,
                    status: Some(code),
                }
            });
        }
        Ok(HttpResponse {
            status: code,
            body: parse_body(content_type, &bytes),
            headers: out_headers,
        })
    }
}

fn build_client(config: &HttpConfig) -> Result<Client, HttpSetupError> {
    install_crypto_provider();
    let builder = Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(config.connect_timeout);
    let builder = match &config.guard {
        None => builder.redirect(reqwest::redirect::Policy::limited(config.max_redirects)),
        Some(guard) => builder
            .redirect(guard.redirect_policy(config.max_redirects))
            .dns_resolver(guard.resolver())
            .no_proxy(),
    };
    builder.build().map_err(|e| HttpSetupError(error_chain(&e)))
}

/// An error and its causes, `: `-separated (reqwest's own message is often just "builder
/// error").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn send_error(what: &str, error: reqwest::Error) -> ActionError {
    let blocked = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut found = false;
        while let Some(cause) = source {
            found |= cause.is::<super::http_guard::Blocked>();
            source = cause.source();
        }
        found
    };
    let permanent = blocked || error.is_builder() || error.is_redirect();
    let message = format!("http: {what}: {}", error_chain(&error.without_url()));
    if permanent {
        ActionError::permanent(message)
    } else {
        ActionError::retryable(message)
    }
}

/// JSON when the type says so or the text is a JSON map or list; else text; empty is `null`.
pub fn parse_body(content_type: Option<&str>, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let typed_json = essence == "application/json" || essence.ends_with("+json");
    let looks_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    if (typed_json || looks_json)
        && let Ok(value) = serde_json::from_slice(bytes)
    {
        return value;
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

#[async_trait]
impl Action for HttpAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        let request = HttpRequest::parse(&input)?;
        let response = self
            .send(&request, &context.idempotency_key, &context.cancel)
            .await?;
        Ok(response.to_value())
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
