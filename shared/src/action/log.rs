//! The `log` action: writes a line to the runtime's log
//!
//! The line goes through `tracing` (target `reactor::workflow`) at the level given, with the
//! execution, workflow and step as fields, so the runtime's subscriber (text or JSON) decides
//! the format. `fields` are user-chosen names, which `tracing` cannot take as field names (they
//! are static), so they are rendered as one `fields` value of `key=value` pairs in the order
//! written: strings as they are (quoted when they hold spaces, `=` or quotes), other values as
//! JSON. An unknown level is a permanent error. The output is `null`.

use async_trait::async_trait;
use tracing::Level;

use super::settings::With;
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::{Map, Value};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "log",
    description: "writes a line to the runtime's log",
    effect: Effect::Pure,
    settings: &[
        SettingSpec {
            name: "level",
            required: false,
            json_type: "string",
            description: "trace, debug, info (default), warn or error",
        },
        SettingSpec {
            name: "message",
            required: true,
            json_type: "string",
            description: "the text to log",
        },
        SettingSpec {
            name: "fields",
            required: false,
            json_type: "object",
            description: "extra key/value fields",
        },
    ],
};

/// The `log` step's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    pub level: Level,
    pub message: String,
    pub fields: Map,
}

impl LogSettings {
    pub fn parse(input: &Value) -> Result<Self, ActionError> {
        let with = With::new(&SPEC, input)?;
        let level = match with.string("level")? {
            None => Level::INFO,
            Some(text) => parse_level(text).ok_or_else(|| {
                with.error(format!(
                    "unknown level {text:?}; use trace, debug, info, warn or error"
                ))
            })?,
        };
        let message = with.required_string("message")?.to_string();
        let fields = with.object("fields")?.cloned().unwrap_or_default();
        Ok(LogSettings {
            level,
            message,
            fields,
        })
    }
}

/// `trace`, `debug`, `info`, `warn` (or `warning`), `error`, in any case.
pub fn parse_level(text: &str) -> Option<Level> {
    match text.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" | "warning" => Some(Level::WARN),
        "error" => Some(Level::ERROR),
        _ => None,
    }
}

/// `key=value` pairs, in the order written.
pub fn render_fields(fields: &Map) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push('=');
        match value {
            Value::String(s) if !s.is_empty() && !s.contains([' ', '=', '"', '\n', '\t']) => {
                out.push_str(s)
            }
            other => out.push_str(&other.to_string()),
        }
    }
    out
}

/// Writes the line. This is the whole action; [`LogAction`] only parses its settings.
///
/// Secret values in the message and fields are masked with `context.redactor`.
pub fn write_log(settings: &LogSettings, context: &ActionContext) {
    let redactor = &context.redactor;
    let fields = redactor.redact_str(&render_fields(&settings.fields));
    let message = redactor.redact_str(&settings.message);
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: "reactor::workflow",
                $level,
                execution = %context.execution,
                workflow = %context.workflow,
                step = %context.step,
                fields = %fields,
                "{}",
                message
            )
        };
    }
    match settings.level {
        Level::TRACE => emit!(Level::TRACE),
        Level::DEBUG => emit!(Level::DEBUG),
        Level::INFO => emit!(Level::INFO),
        Level::WARN => emit!(Level::WARN),
        _ => emit!(Level::ERROR),
    }
}

/// The `log` action.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogAction;

#[async_trait]
impl Action for LogAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        let settings = LogSettings::parse(&input)?;
        write_log(&settings, context);
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::action::test_context;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(run: impl FnOnce()) -> String {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn parses_defaults_and_levels() {
        let settings = LogSettings::parse(&json!({"message": "hi"})).unwrap();
        assert_eq!(settings.level, Level::INFO);
        assert!(settings.fields.is_empty());
        let settings = LogSettings::parse(&json!({"message": "hi", "level": "WARN"})).unwrap();
        assert_eq!(settings.level, Level::WARN);
    }

    #[test]
    fn refuses_unknown_level_and_missing_message() {
        let err = LogSettings::parse(&json!({"message": "hi", "level": "loud"})).unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }));
        assert!(
            err.to_string().starts_with("log: unknown level \"loud\""),
            "{err}"
        );
        let err = LogSettings::parse(&json!({"level": "info"})).unwrap_err();
        assert_eq!(err.to_string(), "log: \"message\" is required");
        let err = LogSettings::parse(&json!({"message": "hi", "fields": [1]})).unwrap_err();
        assert_eq!(err.to_string(), "log: \"fields\" must be a map, not a list");
    }

    #[test]
    fn renders_fields_in_order() {
        let fields = json!({"b": "plain", "a": 1, "c": "two words", "d": {"x": [true]}});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        assert_eq!(
            render_fields(&fields),
            r#"b=plain a=1 c="two words" d={"x":[true]}"#
        );
    }

    #[tokio::test]
    async fn writes_at_the_level_given_with_context_and_fields() {
        let context = test_context();
        let settings = LogSettings::parse(&json!({
            "level": "warn",
            "message": "temperature high",
            "fields": {"sensor": "t1", "value": 41.5}
        }))
        .unwrap();
        let text = capture(|| write_log(&settings, &context));
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("temperature high"), "{text}");
        assert!(text.contains("fields=sensor=t1 value=41.5"), "{text}");
        assert!(text.contains("step=s1"), "{text}");

        let quiet = LogSettings::parse(&json!({"level": "trace", "message": "x"})).unwrap();
        let text = capture(|| write_log(&quiet, &context));
        assert!(text.contains("TRACE"), "{text}");
    }

    #[test]
    fn masks_secrets_in_message_and_fields() {
        let mut context = test_context();
        context.redactor = crate::engine::Redactor::new(["hunter2-canary".to_string()]);
        let settings = LogSettings::parse(&json!({
            "message": "token is hunter2-canary",
            "fields": {"auth": "Bearer hunter2-canary"}
        }))
        .unwrap();
        let text = capture(|| write_log(&settings, &context));
        assert!(!text.contains("hunter2-canary"), "{text}");
        assert!(text.contains("token is ***"), "{text}");
        assert!(text.contains(r#"auth="Bearer ***""#), "{text}");
    }

    #[tokio::test]
    async fn action_outputs_null() {
        let out = LogAction
            .execute(json!({"message": "hello"}), &test_context())
            .await
            .unwrap();
        assert_eq!(out, Value::Null);
    }
}
