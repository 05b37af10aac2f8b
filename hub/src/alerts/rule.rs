//! An alert rule and its state machine — pure: no clock reads, no I/O.
//!
//! `inactive → pending` when the condition first holds; `pending → firing` once it has held
//! for the rule's `for` (at once when `for` is 0); `pending → inactive` when it stops holding
//! before that (no event); `firing → inactive` when it stops holding, which is the
//! `resolved` event. A metric with no sample matching the labels does not hold.

use std::time::Duration;

use reactor_core::metrics::Labels;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Longest rule name, metric name, label name or value.
pub const MAX_TEXT: usize = 200;
/// Most labels in a selector.
pub const MAX_LABELS: usize = 20;
/// Longest `for`.
pub const MAX_FOR: Duration = Duration::from_secs(7 * 86_400);

/// How the value is compared with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparator {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = "==")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
}

impl Comparator {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparator::Above => value > threshold,
            Comparator::AtLeast => value >= threshold,
            Comparator::Below => value < threshold,
            Comparator::AtMost => value <= threshold,
            Comparator::Equal => value == threshold,
            Comparator::NotEqual => value != threshold,
        }
    }
}

/// What a client sends to create a rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub metric: String,
    #[serde(default)]
    pub labels: Labels,
    pub comparator: Comparator,
    pub threshold: f64,
    /// A duration (`30s`, `5m`); default 0: fire on the first evaluation that holds.
    #[serde(default, rename = "for")]
    pub for_duration: Option<String>,
}

/// A stored, validated rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub metric: String,
    pub labels: Labels,
    pub comparator: Comparator,
    pub threshold: f64,
    /// Milliseconds.
    pub for_ms: u64,
}

fn good_metric(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl RuleRequest {
    /// Validates the request into a rule with `id`; every problem at once.
    pub fn validate(self, id: String) -> Result<Rule, Vec<String>> {
        let mut problems = Vec::new();
        if let Some(name) = &self.name
            && (name.trim().is_empty() || name.len() > MAX_TEXT)
        {
            problems.push(format!("name must be 1 to {MAX_TEXT} characters"));
        }
        if self.metric.len() > MAX_TEXT || !good_metric(&self.metric) {
            problems.push(format!(
                "metric must be a metric name such as reactor_executions_total (letters, digits, _ and :), at most {MAX_TEXT} characters"
            ));
        }
        if self.labels.len() > MAX_LABELS {
            problems.push(format!("at most {MAX_LABELS} labels"));
        }
        for (key, value) in &self.labels {
            if key.len() > MAX_TEXT
                || value.len() > MAX_TEXT
                || !good_metric(key)
                || key.contains(':')
            {
                problems.push(format!(
                    "label {:?}: names are letters, digits and _, names and values at most {MAX_TEXT} characters",
                    key.chars().take(MAX_TEXT).collect::<String>()
                ));
            }
        }
        if !self.threshold.is_finite() {
            problems.push("threshold must be a finite number".into());
        }
        let for_ms = match self.for_duration.as_deref() {
            None => 0,
            Some(text) => match reactor_core::flow::parse_duration(text) {
                Ok(duration) if duration <= MAX_FOR => duration.as_millis() as u64,
                Ok(_) => {
                    problems.push("for must be at most 7d".into());
                    0
                }
                Err(error) => {
                    problems.push(format!("for: {error}"));
                    0
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rule {
            id,
            name: self.name,
            metric: self.metric,
            labels: self.labels,
            comparator: self.comparator,
            threshold: self.threshold,
            for_ms,
        })
    }
}

impl Rule {
    /// The rule as the API shows it (`for` as a duration).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "metric": self.metric,
            "labels": self.labels,
            "comparator": self.comparator,
            "threshold": self.threshold,
            "for": reactor_core::flow::format_duration(Duration::from_millis(self.for_ms)),
        })
    }
}

/// Where a rule stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlertState {
    Inactive,
    /// The condition holds since this time (ms); not yet for long enough.
    Pending {
        since: i64,
    },
    /// Firing since this time (ms).
    Firing {
        since: i64,
    },
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending { .. } => "pending",
            AlertState::Firing { .. } => "firing",
        }
    }
}

/// A change worth telling about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Firing,
    Resolved,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Firing => "firing",
            Transition::Resolved => "resolved",
        }
    }
}

/// One evaluation at `now` (ms) with the metric's current `value`.
pub fn step(
    rule: &Rule,
    state: AlertState,
    value: Option<f64>,
    now: i64,
) -> (AlertState, Option<Transition>) {
    let holds = value.is_some_and(|v| rule.comparator.holds(v, rule.threshold));
    let due = |since: i64| now.saturating_sub(since) >= rule.for_ms as i64;
    match (state, holds) {
        (AlertState::Inactive, true) if due(now) => {
            (AlertState::Firing { since: now }, Some(Transition::Firing))
        }
        (AlertState::Inactive, true) => (AlertState::Pending { since: now }, None),
        (AlertState::Pending { since }, true) if due(since) => {
            (AlertState::Firing { since: now }, Some(Transition::Firing))
        }
        (AlertState::Firing { .. }, false) => (AlertState::Inactive, Some(Transition::Resolved)),
        (AlertState::Pending { .. }, false) => (AlertState::Inactive, None),
        (unchanged, _) => (unchanged, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_ms: u64) -> Rule {
        Rule {
            id: "r".into(),
            name: None,
            metric: "m".into(),
            labels: Labels::new(),
            comparator: Comparator::Above,
            threshold: 5.0,
            for_ms,
        }
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule(1000);
        let (s, t) = step(&r, AlertState::Inactive, Some(6.0), 0);
        assert_eq!((s, t), (AlertState::Pending { since: 0 }, None));
        let (s, t) = step(&r, s, Some(7.0), 500);
        assert_eq!((s, t), (AlertState::Pending { since: 0 }, None));
        let (s, t) = step(&r, s, Some(7.0), 1000);
        assert_eq!(
            (s, t),
            (AlertState::Firing { since: 1000 }, Some(Transition::Firing))
        );
        let (s, t) = step(&r, s, Some(9.0), 2000);
        assert_eq!((s, t), (AlertState::Firing { since: 1000 }, None));
        let (s, t) = step(&r, s, Some(1.0), 3000);
        assert_eq!((s, t), (AlertState::Inactive, Some(Transition::Resolved)));
    }

    #[test]
    fn a_blip_shorter_than_for_never_fires_and_zero_for_fires_at_once() {
        let r = rule(1000);
        let (s, _) = step(&r, AlertState::Inactive, Some(6.0), 0);
        let (s, t) = step(&r, s, None, 500);
        assert_eq!((s, t), (AlertState::Inactive, None));
        let (s, t) = step(&rule(0), AlertState::Inactive, Some(6.0), 0);
        assert_eq!(
            (s, t),
            (AlertState::Firing { since: 0 }, Some(Transition::Firing))
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let request: RuleRequest = serde_json::from_value(json!({
            "name": "",
            "metric": "9bad",
            "labels": {"bad-label": "x"},
            "comparator": ">",
            "threshold": 1,
            "for": "soon"
        }))
        .unwrap();
        let problems = request.validate("x".into()).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        let bad_comparator = serde_json::from_value::<RuleRequest>(json!({
            "metric": "m", "comparator": "~", "threshold": 1
        }));
        assert!(bad_comparator.is_err());
        let ok: RuleRequest = serde_json::from_value(json!({
            "metric": "reactor_executions_total",
            "labels": {"status": "failed"},
            "comparator": ">=",
            "threshold": 3,
            "for": "2s"
        }))
        .unwrap();
        let rule = ok.validate("id1".into()).unwrap();
        assert_eq!(rule.for_ms, 2000);
        assert_eq!(rule.to_json()["for"], json!("2s"));
        assert_eq!(rule.to_json()["comparator"], json!(">="));
    }
}
