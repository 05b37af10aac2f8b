//! Alerts: rules over the hub's own metrics, evaluated every second.
//!
//! - [`rule`]: the rule (metric, labels, comparator, threshold, `for`) and its pure state
//!   machine (inactive → pending → firing → resolved);
//! - this file: [`Alerts`] — the rules and history tables (migration `0005_alerts.sql`), the
//!   evaluator ([`Alerts::run`]) and what a transition does;
//! - [`api`]: `POST/GET /api/v1/alerts`, `DELETE /api/v1/alerts/{id}`,
//!   `GET /api/v1/alerts/{id}/history`.
//!
//! A rule reads the same values `/metrics` shows ([`Telemetry::value`]: the samples of the
//! metric whose labels include the rule's, summed). A transition to firing or resolved is
//! recorded in `alert_history`, published on the live stream (`alert.firing` /
//! `alert.resolved`) and emitted as an event of type `reactor.alert.firing` /
//! `reactor.alert.resolved` (source `reactor:hub:alerts`) to the hub's `event` triggers and
//! `wait` steps — so a workflow can notify Slack or anything else.
//!
//! Scope: rules are shared through the database, but metrics are per hub process, so each hub
//! evaluates its own values; the state (pending/firing) is in memory and starts over after a
//! restart (a condition that still holds fires again after `for`).

pub mod api;
pub mod rule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::{Event, Runtime, Timestamp};
use serde_json::{Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use self::rule::{AlertState, Rule, RuleRequest, Transition};
use crate::db::Database;
use crate::db::on_pool;
use crate::metrics::Telemetry;
use crate::stream::LiveStream;

/// How often rules are evaluated.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Most rules.
pub const MAX_RULES: i64 = 1000;
/// Most history entries returned at once.
pub const MAX_HISTORY: i64 = 1000;
/// The source of alert events.
pub const EVENT_SOURCE: &str = "reactor:hub:alerts";

/// Why an alert operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    #[error("the rule is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("there are already {MAX_RULES} alert rules")]
    TooMany,
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("a stored rule is unreadable: {0}")]
    Corrupt(String),
}

/// One entry of a rule's history.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub state: String,
    pub value: Option<f64>,
    /// RFC 3339.
    pub at: String,
}

/// The alert rules, their evaluation and their effects.
pub struct Alerts {
    db: Database,
    telemetry: Arc<Telemetry>,
    stream: LiveStream,
    runtime: Runtime,
    workflows: Option<Arc<ActiveWorkflows>>,
    states: Mutex<HashMap<String, AlertState>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").finish_non_exhaustive()
    }
}

impl Alerts {
    pub fn new(
        db: Database,
        telemetry: Arc<Telemetry>,
        stream: LiveStream,
        runtime: Runtime,
        workflows: Option<Arc<ActiveWorkflows>>,
    ) -> Alerts {
        Alerts {
            db,
            telemetry,
            stream,
            runtime,
            workflows,
            states: Mutex::default(),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, AlertState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and stores a new rule.
    pub async fn create(&self, request: RuleRequest) -> Result<Rule, AlertError> {
        let rule = request
            .validate(ulid::Ulid::new().to_string())
            .map_err(AlertError::Invalid)?;
        let text = serde_json::to_string(&rule).map_err(|e| AlertError::Corrupt(e.to_string()))?;
        let now = Timestamp::now().millis();
        on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM alert_rules")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if count >= MAX_RULES {
                return Err(AlertError::TooMany);
            }
            sqlx::query("INSERT INTO alert_rules (id, rule, created_at) VALUES ($1, $2, $3)")
                .bind(&rule.id)
                .bind(&text)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(rule)
    }

    /// Every rule, oldest first.
    pub async fn rules(&self) -> Result<Vec<Rule>, AlertError> {
        let texts: Vec<String> = on_pool!(&self.db, pool => {
            sqlx::query("SELECT rule FROM alert_rules ORDER BY id")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get("rule"))
                .collect::<Result<_, _>>()?
        });
        texts
            .iter()
            .map(|t| serde_json::from_str(t).map_err(|e| AlertError::Corrupt(e.to_string())))
            .collect()
    }

    /// Deletes a rule and its history. Returns whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, AlertError> {
        let deleted = on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            sqlx::query("DELETE FROM alert_history WHERE rule_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM alert_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done.rows_affected() > 0
        });
        self.states().remove(id);
        Ok(deleted)
    }

    /// A rule's transitions, newest first; `None` when there is no such rule.
    pub async fn history(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Option<Vec<HistoryEntry>>, AlertError> {
        on_pool!(&self.db, pool => {
            let known = sqlx::query("SELECT 1 FROM alert_rules WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .is_some();
            if !known {
                return Ok(None);
            }
            let rows = sqlx::query(
                "SELECT state, value, at FROM alert_history WHERE rule_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(id)
            .bind(limit.clamp(1, MAX_HISTORY))
            .fetch_all(pool)
            .await?;
            let entries = rows
                .iter()
                .map(|row| {
                    Ok(HistoryEntry {
                        state: row.try_get("state")?,
                        value: row.try_get("value")?,
                        at: Timestamp(row.try_get("at")?).to_rfc3339(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(Some(entries))
        })
    }

    /// The current state of a rule (`inactive` when never evaluated).
    pub fn state(&self, id: &str) -> AlertState {
        self.states()
            .get(id)
            .copied()
            .unwrap_or(AlertState::Inactive)
    }

    /// Evaluates every rule once, at `now`, and acts on the transitions.
    pub async fn evaluate(&self, now: Timestamp) -> Result<(), AlertError> {
        let rules = self.rules().await?;
        let telemetry = self.telemetry.clone();
        let families = tokio::task::spawn_blocking(move || telemetry.families())
            .await
            .unwrap_or_default();
        let mut transitions = Vec::new();
        {
            let mut states = self.states();
            states.retain(|id, _| rules.iter().any(|r| &r.id == id));
            for rule in &rules {
                let value = Telemetry::value(&families, &rule.metric, &rule.labels);
                let state = states
                    .get(&rule.id)
                    .copied()
                    .unwrap_or(AlertState::Inactive);
                let (next, transition) = rule::step(rule, state, value, now.millis());
                states.insert(rule.id.clone(), next);
                if let Some(transition) = transition {
                    transitions.push((rule.clone(), transition, value));
                }
            }
        }
        for (rule, transition, value) in transitions {
            self.announce(&rule, transition, value, now).await?;
        }
        Ok(())
    }

    async fn announce(
        &self,
        rule: &Rule,
        transition: Transition,
        value: Option<f64>,
        now: Timestamp,
    ) -> Result<(), AlertError> {
        on_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO alert_history (rule_id, state, value, at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&rule.id)
            .bind(transition.as_str())
            .bind(value)
            .bind(now.millis())
            .execute(pool)
            .await?;
        });
        let data: Value = json!({
            "rule": rule.to_json(),
            "state": transition.as_str(),
            "value": value,
            "at": now.to_rfc3339(),
        });
        tracing::info!(rule = %rule.id, metric = %rule.metric, state = transition.as_str(), value = ?value, "alert");
        let kind = match transition {
            Transition::Firing => "alert.firing",
            Transition::Resolved => "alert.resolved",
        };
        self.stream.publish(kind, None, &data);
        let event = Event::new(&format!("reactor.{kind}"), EVENT_SOURCE, data);
        if let Some(workflows) = &self.workflows
            && let Err(message) = workflows.events().route(&event).await
        {
            tracing::warn!(rule = %rule.id, %message, "delivering an alert event to event triggers failed");
        }
        self.runtime.deliver(&event).await;
        Ok(())
    }

    /// Evaluates every [`PERIOD`] until `stop` fires. A failed round is logged and the next
    /// one tries again.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.evaluate(Timestamp::now()).await {
                tracing::warn!(%error, "evaluating alert rules failed");
            }
        }
    }
}
