//! Keeps secret values out of what the engine records and shows.
//!
//! A [`Redactor`] is built from the runtime's secrets. It replaces every occurrence of a
//! secret's value — and of the forms a value commonly takes on its way out (percent-encoded in
//! a URL, base64 in a `Basic` header) — with [`MASK`] in strings and in JSON values.
//!
//! Where the runtime applies it (see docs/engine.md, "Secrets and redaction"):
//! - action results (`output` and error messages) before they become journal facts, so the
//!   journal, the state machine and every later step see the masked value — and replay sees
//!   the same value as the live run;
//! - the execution record (output, error, step outputs and errors) before it is stored;
//! - errors of workflow-level `if` / `unless` / `concurrency.key` expressions;
//! - the `log` action's message and fields (through [`crate::action::ActionContext`]).
//!
//! Every non-empty secret is masked, however short: a one-character secret mangles text, but
//! a missed secret leaks it.

use std::sync::Arc;

use base64::Engine as _;

use crate::engine::journal::{ErrorInfo, ExecutionRecord, Outcome};
use crate::{Map, Value};

/// What replaces a secret's value.
pub const MASK: &str = "***";

/// Replaces secret values with [`MASK`]. Cheap to clone; empty (a no-op) by default.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is masked whole.
    needles: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("needles", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for the string (or JSON-rendered) values of `secrets`, an object of
    /// name → value. Other shapes redact nothing.
    pub fn from_secrets(secrets: &Value) -> Redactor {
        let Value::Object(map) = secrets else {
            return Redactor::default();
        };
        Redactor::new(map.values().map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }))
    }

    /// A redactor for `values` (empty ones are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut needles: Vec<String> = Vec::new();
        for value in values {
            if value.is_empty() {
                continue;
            }
            let encoded = percent_encode(&value);
            let b64 = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
            needles.push(value);
            needles.push(encoded);
            needles.push(b64);
        }
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor {
            needles: needles.into(),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Whether `text` holds a secret.
    pub fn leaks(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }

    /// `text` with every secret masked.
    pub fn redact_str(&self, text: &str) -> String {
        if !self.leaks(text) {
            return text.to_string();
        }
        let mut out = text.to_string();
        for needle in self.needles.iter() {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), MASK);
            }
        }
        out
    }

    /// Masks secrets in `text` in place.
    pub fn redact_string(&self, text: &mut String) {
        if self.leaks(text) {
            *text = self.redact_str(text);
        }
    }

    /// Masks secrets in every string of `value`, object keys included.
    pub fn redact_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(text) => self.redact_string(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_value(item)),
            Value::Object(map) => {
                if map.keys().any(|key| self.leaks(key)) {
                    let old = std::mem::take(map);
                    let mut fresh = Map::new();
                    for (key, item) in old {
                        fresh.insert(self.redact_str(&key), item);
                    }
                    *map = fresh;
                }
                map.values_mut().for_each(|item| self.redact_value(item));
            }
            _ => {}
        }
    }

    /// Masks secrets in an error's message.
    pub fn redact_error(&self, error: &mut ErrorInfo) {
        if !self.is_empty() {
            self.redact_string(&mut error.message);
        }
    }

    /// Masks secrets in an effect's outcome.
    pub fn redact_outcome(&self, outcome: &mut Outcome) {
        match outcome {
            Outcome::Succeeded(value) => self.redact_value(value),
            Outcome::Failed(error) => self.redact_error(error),
        }
    }

    /// Masks secrets in what an execution record shows: output, error, step outputs/errors.
    pub fn redact_record(&self, record: &mut ExecutionRecord) {
        if self.is_empty() {
            return;
        }
        self.redact_value(&mut record.output);
        if let Some(error) = &mut record.error {
            self.redact_error(error);
        }
        for (_, step) in &mut record.steps {
            self.redact_value(&mut step.output);
            if let Some(error) = &mut step.error {
                self.redact_error(error);
            }
        }
    }
}

/// `text` as a URL component: unreserved characters kept, every other byte `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masks_values_keys_and_encoded_forms() {
        let redactor = Redactor::from_secrets(&json!({"A": "s3cr3t value", "B": "tok"}));
        assert_eq!(redactor.redact_str("x s3cr3t value y"), "x *** y");
        assert_eq!(redactor.redact_str("url?q=s3cr3t%20value"), "url?q=***");
        assert_eq!(
            redactor.redact_str("Basic czNjcjN0IHZhbHVl"),
            "Basic ***",
            "base64 of the secret"
        );
        let mut value = json!({"tok": ["a tok b", 1, {"k": "tok"}], "n": null});
        redactor.redact_value(&mut value);
        assert_eq!(
            value,
            json!({"***": ["a *** b", 1, {"k": "***"}], "n": null})
        );
    }

    #[test]
    fn longest_secret_first_and_empty_is_noop() {
        let redactor = Redactor::new(["ab".to_string(), "abcd".to_string(), String::new()]);
        assert_eq!(redactor.redact_str("abcd ab"), "*** ***");
        let empty = Redactor::default();
        assert!(empty.is_empty());
        assert_eq!(empty.redact_str("anything"), "anything");
    }

    #[test]
    fn non_string_secrets_are_masked_as_rendered() {
        let redactor = Redactor::from_secrets(&json!({"PIN": 48151623}));
        assert_eq!(redactor.redact_str("pin=48151623"), "pin=***");
    }
}

#[cfg(test)]
mod runtime_tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::action::{BuiltinConfig, builtin_registry};
    use crate::engine::{Environment, Event, ExecutionStatus, Runtime, RuntimeConfig, Submission};
    use crate::store::{MemoryStore, Store};

    const CANARY: &str = "canary-7f3a9c1e";

    /// Steps that carry the secret into an action's output, an action's error, an expression
    /// error and a step output: the journal and the record hold none of it.
    #[tokio::test]
    async fn journal_and_record_never_hold_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        let yaml = format!(
            r#"reactor: 1
name: leak
steps:
  - id: write
    action: file.write
    with: {{ path: "{file}", content: "${{{{ secrets.K }}}}" }}
  - id: read
    action: file.read
    with: {{ path: "{file}" }}
  - id: copy
    action: transform
    with: {{ value: "${{{{ secrets.K }}}}" }}
  - id: missing
    action: file.read
    with: {{ path: "{dir}/${{{{ secrets.K }}}}" }}
    catch:
      - action: log
        with: {{ message: "${{{{ error.message }}}}" }}
  - id: bad
    action: transform
    with: {{ value: "${{{{ int(secrets.K) }}}}" }}
"#,
            file = file.display(),
            dir = dir.path().display(),
        );
        let wf = crate::dsl::parse_workflow("leak.yaml", &yaml).unwrap();
        let mut environment = Environment::empty();
        environment.secrets = json!({ "K": CANARY });
        let store = Arc::new(MemoryStore::new());
        let runtime = Runtime::new(
            store.clone(),
            builtin_registry(BuiltinConfig::default()),
            environment,
            RuntimeConfig::default(),
        );
        runtime.load(wf);
        let Submission::Accepted(id) = runtime
            .submit("leak", Event::new("manual", "test", json!({})), json!({}))
            .await
            .unwrap()
        else {
            panic!("not accepted")
        };
        let record = runtime.wait(id).await.unwrap();
        assert_eq!(record.status, ExecutionStatus::Failed, "{record:?}");
        // The secret reached the file: the action saw the real value.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CANARY);
        let stored = store.execution(id).await.unwrap().unwrap();
        let journal = store.journal(id).await.unwrap();
        let text = format!(
            "{}{}{}",
            serde_json::to_string(&record).unwrap(),
            serde_json::to_string(&stored).unwrap(),
            serde_json::to_string(&journal).unwrap()
        );
        assert!(!text.contains(CANARY), "leaked: {text}");
        assert!(text.contains("***"), "masked values are visible: {text}");
        let read = record.steps.iter().find(|(n, _)| n == "read").unwrap();
        assert_eq!(read.1.output["content"], json!("***"));
        runtime.shutdown().await;
    }

    #[tokio::test]
    async fn set_secrets_swaps_values_and_redactor() {
        let runtime = Runtime::new(
            Arc::new(MemoryStore::new()),
            builtin_registry(BuiltinConfig::default()),
            Environment::empty(),
            RuntimeConfig::default(),
        );
        assert!(runtime.redactor().is_empty());
        let mut secrets = crate::Map::new();
        secrets.insert("A".into(), json!("alpha-secret"));
        runtime.set_secrets(secrets);
        assert_eq!(runtime.environment().secrets, json!({"A": "alpha-secret"}));
        assert_eq!(runtime.redactor().redact_str("x alpha-secret"), "x ***");
    }
}
