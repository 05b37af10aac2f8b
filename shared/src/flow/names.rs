//! Validated names: workflow names and step ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// A workflow name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowName(String);

impl WorkflowName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && name.len() <= 64 {
            Ok(WorkflowName(name.to_string()))
        } else {
            Err(NameError(format!(
                "invalid workflow name {name:?}: use 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A step id: `[a-z0-9_-]+`, unique in its workflow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    pub fn new(id: &str) -> Result<Self, NameError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(StepId(id.to_string()))
        } else {
            Err(NameError(format!(
                "invalid step id {id:?}: use 1 to 64 characters of a-z, 0-9, '_' and '-'"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_names() {
        assert!(WorkflowName::new("overheat-alert").is_ok());
        assert!(WorkflowName::new("a.b_c-9").is_ok());
        assert!(WorkflowName::new("").is_err());
        assert!(WorkflowName::new("-x").is_err());
        assert!(WorkflowName::new("Upper").is_err());
        assert!(WorkflowName::new(&"a".repeat(65)).is_err());
        assert!(WorkflowName::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn step_ids() {
        assert!(StepId::new("notify_2").is_ok());
        assert!(StepId::new("a.b").is_err());
        assert!(StepId::new("").is_err());
    }
}
