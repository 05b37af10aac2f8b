//! Layered configuration, shared by the agent (`agent.toml`) and the hub (`hub.toml`): a TOML
//! file, then `REACTOR_<SECTION>__<KEY>` environment variables, then flags, each value tagged
//! with the layer it came from so an error can name it. Each program declares its own raw
//! (all-optional) TOML shape and validates the merged values; the machinery is here.
//!
//! Every problem is collected and reported at once ([`ConfigError`]), file problems as
//! `path:line:col`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Prefix of every variable the layers read.
pub const ENV_PREFIX: &str = "REACTOR_";

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Everything wrong with the configuration, reported at once.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem: `KEY (from ORIGIN): MESSAGE`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: invalid configuration: {problem}")?;
        }
        Ok(())
    }
}

/// A value with the layer it came from.
#[derive(Debug, Clone)]
pub struct Layered<T> {
    pub value: T,
    pub origin: Origin,
}

/// Lays `value`, when set, over what `slot` holds.
pub fn pick<T>(slot: &mut Option<Layered<T>>, value: Option<T>, origin: &Origin) {
    if let Some(value) = value {
        *slot = Some(Layered {
            value,
            origin: origin.clone(),
        });
    }
}

/// Reads a TOML file into `T`; a problem is `path:line:col: message` and the offending line.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    toml::from_str::<T>(&text).map_err(|e| {
        let message = e.message().replace('`', "\"");
        match e.span() {
            Some(span) => {
                let (line, column) = line_column(&text, span.start);
                let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(
                    "{}:{line}:{column}: {message}\n  |  {shown}",
                    path.display()
                )
            }
            None => format!("{}: {message}", path.display()),
        }
    })
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// One layer per `REACTOR_<SECTION>__<KEY>` variable, sorted by name, each checked on its own
/// so that an error names the variable. Single-level names are the flags' variables (clap
/// reads them) or other commands' (`REACTOR_EVENT` …), and `REACTOR_SECRET_*` are secrets:
/// both are left alone.
pub fn env_layers<T: DeserializeOwned>(
    vars: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) -> Vec<(String, T)> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
        .filter(|(name, _)| !name.starts_with("REACTOR_SECRET_"))
        .collect();
    vars.sort();
    let mut layers = Vec::new();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!("{name}: expected REACTOR_<SECTION>__<KEY>"));
            continue;
        }
        let mut value = env_value(&value);
        for segment in path.iter().rev() {
            let mut table = toml::Table::new();
            table.insert(segment.clone(), value);
            value = toml::Value::Table(table);
        }
        match T::deserialize(value) {
            Ok(raw) => layers.push((name, raw)),
            Err(e) => problems.push(format!(
                "environment variable {name} (key {}): {}",
                path.join("."),
                e.message().replace('`', "\"")
            )),
        }
    }
    layers
}

/// A variable's text as a TOML value (`42`, `true`, `["a", "b"]`), else as a string.
fn env_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut table) => match table.remove("v") {
            // Dates and times are not a type any key takes: keep what was written.
            Some(toml::Value::Datetime(_)) | None => toml::Value::String(text.to_string()),
            Some(value) => value,
        },
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// A secret by the name a config gives (`password_secret = "MQTT_PASSWORD"`): the variable
/// `REACTOR_SECRET_MQTT_PASSWORD`, as for `secrets.NAME` in expressions (exact name first,
/// then upper case).
pub fn secret_from(vars: &[(String, String)], name: &str) -> Option<String> {
    let exact = format!("REACTOR_SECRET_{name}");
    let upper = exact.to_ascii_uppercase();
    vars.iter()
        .find(|(n, _)| *n == exact)
        .or_else(|| vars.iter().find(|(n, _)| *n == upper))
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        listen: Option<String>,
        limits: Option<RawLimits>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawLimits {
        max_running: Option<u64>,
        allow: Option<Vec<String>>,
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_layers_nest_sections_and_type_values() {
        let mut problems = Vec::new();
        let layers: Vec<(String, Raw)> = env_layers(
            vars(&[
                ("REACTOR_LIMITS__MAX_RUNNING", "12"),
                ("REACTOR_LIMITS__ALLOW", r#"["a", "b"]"#),
                ("REACTOR_LISTEN", "ignored: a flag's variable"),
                ("REACTOR_SECRET_X__Y", "ignored: a secret"),
                ("HOME", "/root"),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["REACTOR_LIMITS__ALLOW", "REACTOR_LIMITS__MAX_RUNNING"]
        );
        let limits = layers[1].1.limits.as_ref().unwrap();
        assert_eq!(limits.max_running, Some(12));
        let allow = layers[0].1.limits.as_ref().unwrap().allow.clone();
        assert_eq!(allow, Some(vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn env_problems_name_the_variable_and_the_key() {
        let mut problems = Vec::new();
        let layers: Vec<(String, Raw)> = env_layers(
            vars(&[
                ("REACTOR_LIMITS__MAX_RUNNING", "many"),
                ("REACTOR_LIMITS__", "1"),
                ("REACTOR_NOPE__X", "1"),
            ]),
            &mut problems,
        );
        assert!(layers.is_empty());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with(
            "environment variable REACTOR_LIMITS__MAX_RUNNING (key limits.max_running)"
        )));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("expected REACTOR_<SECTION>__<KEY>"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("REACTOR_NOPE__X") && p.contains("nope"))
        );
    }

    #[test]
    fn file_problems_point_at_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "listen = \"x\"\n[limits]\nmax_running = \"ten\"\n").unwrap();
        let problem = read_file::<Raw>(&path).unwrap_err();
        let expected = format!("{}:3:15: ", path.display());
        assert!(problem.starts_with(&expected), "{problem}");
        assert!(problem.ends_with("|  max_running = \"ten\""), "{problem}");
        std::fs::write(&path, "listen = \"0.0.0.0:80\"\n").unwrap();
        let raw = read_file::<Raw>(&path).unwrap();
        assert_eq!(raw.listen.as_deref(), Some("0.0.0.0:80"));
        assert!(raw.limits.is_none());
        let missing = read_file::<Raw>(&dir.path().join("none.toml")).unwrap_err();
        assert!(missing.contains("cannot read the file"), "{missing}");
    }

    #[test]
    fn later_layers_win_and_keep_their_origin() {
        let mut slot = None;
        pick(&mut slot, Some(1), &Origin::Default);
        pick(&mut slot, None, &Origin::Env("REACTOR_A__B".into()));
        assert_eq!(slot.as_ref().unwrap().origin, Origin::Default);
        pick(&mut slot, Some(2), &Origin::Flag("listen"));
        let layered = slot.unwrap();
        assert_eq!(layered.value, 2);
        assert_eq!(layered.origin.to_string(), "flag --listen");
    }

    #[test]
    fn secrets_by_exact_then_upper_case_name() {
        let vars = vars(&[
            ("REACTOR_SECRET_mqtt", "exact"),
            ("REACTOR_SECRET_TOKEN", "upper"),
        ]);
        assert_eq!(secret_from(&vars, "mqtt").as_deref(), Some("exact"));
        assert_eq!(secret_from(&vars, "token").as_deref(), Some("upper"));
        assert_eq!(secret_from(&vars, "other"), None);
    }
}
