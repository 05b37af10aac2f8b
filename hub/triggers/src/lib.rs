//! Reactor's hub-only event sources: `kafka`, `nats` (core and JetStream), `redis` (pub/sub
//! and streams), `postgres` and `mysql` (change capture and polling).
//!
//! These clients are heavy (librdkafka, sqlx, mysql_async) and never reach the agent: each
//! source is a cargo feature of this crate (all on by default) and reactor-hub depends on it.
//!
//! Every source has the same shape: a `XTrigger` implementing
//! [`reactor_core::trigger::Trigger`], built by [`build`] from the workflow's trigger settings
//! and the hub's [`Connections`]. [`factory`] composes [`build`] with core's
//! [`LightTriggers`](reactor_core::trigger::LightTriggers) into the hub's `TriggerFactory`
//! ([`HubTriggers`]).
//!
//! Guarantees (docs/triggers.md has the details per source):
//! - a source message is acknowledged (Kafka commit, JetStream ack, `XACK`, slot advance) only
//!   after [`TriggerContext::submit_once`](reactor_core::trigger::TriggerContext::submit_once)
//!   returned, i.e. after the execution is durably recorded;
//! - a message redelivered because the hub died between the record and the ack carries the
//!   same de-duplication key (its source position) and starts nothing;
//! - connections are re-established with exponential backoff and jitter; a trigger that
//!   keeps failing is unhealthy ([`TriggerStats`](reactor_core::trigger::TriggerStats)) with
//!   its last error;
//! - change capture and pollers run only while this hub leads ([`Connections::with_leader`]).

// With only some sources compiled in, the helpers the others use go unused.
#![cfg_attr(
    not(all(
        feature = "kafka",
        feature = "nats",
        feature = "redis",
        feature = "postgres",
        feature = "mysql"
    )),
    allow(dead_code, unused_variables, unreachable_code)
)]

use std::sync::Arc;

use reactor_core::flow::{TriggerKind, TriggerSpec};
use reactor_core::trigger::{LightTriggers, Trigger, TriggerError, TriggerFactory};

#[cfg(any(feature = "kafka", feature = "nats", feature = "redis"))]
mod batch;
pub mod connections;
mod payload;
mod retry;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(feature = "nats", feature = "redis"))]
mod recorded;

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sql;

pub use connections::{ConnectionConfig, Connections, Secrets, host_name};
pub use payload::decode_payload;
pub use retry::Leader;

/// Builds the trigger for a `kafka`, `nats`, `redis`, `postgres` or `mysql` entry; `Ok(None)`
/// for every other type (the caller builds those, e.g. with `build_light`). A type whose cargo
/// feature is off is `Unsupported`.
pub fn build(
    spec: &TriggerSpec,
    connections: &Connections,
) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
    let trigger: Box<dyn Trigger> = match &spec.kind {
        #[cfg(feature = "kafka")]
        TriggerKind::Kafka(settings) => Box::new(kafka::KafkaTrigger::new(settings, connections)?),
        #[cfg(feature = "nats")]
        TriggerKind::Nats(settings) => Box::new(nats::NatsTrigger::new(settings, connections)?),
        #[cfg(feature = "redis")]
        TriggerKind::Redis(settings) => Box::new(redis::RedisTrigger::new(settings, connections)?),
        #[cfg(feature = "postgres")]
        TriggerKind::Postgres(settings) => {
            Box::new(postgres::PostgresTrigger::new(settings, connections)?)
        }
        #[cfg(feature = "mysql")]
        TriggerKind::Mysql(settings) => Box::new(mysql::MysqlTrigger::new(settings, connections)?),
        #[allow(
            unreachable_patterns,
            reason = "reachable when a source's feature is off"
        )]
        TriggerKind::Kafka(_)
        | TriggerKind::Nats(_)
        | TriggerKind::Redis(_)
        | TriggerKind::Postgres(_)
        | TriggerKind::Mysql(_) => return Err(TriggerError::Unsupported(spec.type_name())),
        _ => return Ok(None),
    };
    Ok(Some(trigger))
}

/// The hub's trigger factory: these sources first, then `fallback` (default: core's
/// [`LightTriggers`]; the hub may pass a factory that also builds `mqtt`).
#[derive(Clone)]
pub struct HubTriggers {
    connections: Arc<Connections>,
    fallback: Arc<dyn TriggerFactory>,
}

impl std::fmt::Debug for HubTriggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTriggers")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl HubTriggers {
    pub fn new(connections: Arc<Connections>) -> HubTriggers {
        HubTriggers {
            connections,
            fallback: Arc::new(LightTriggers),
        }
    }

    /// Builds the types these sources do not own with `fallback`.
    pub fn with_fallback(mut self, fallback: Arc<dyn TriggerFactory>) -> HubTriggers {
        self.fallback = fallback;
        self
    }
}

impl TriggerFactory for HubTriggers {
    fn build(
        &self,
        workflow: &str,
        index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
        match build(spec, &self.connections)? {
            Some(trigger) => Ok(Some(trigger)),
            None => self.fallback.build(workflow, index, spec),
        }
    }
}

/// [`HubTriggers`] over `connections` with core's light triggers as the fallback.
pub fn factory(connections: Arc<Connections>) -> Arc<dyn TriggerFactory> {
    Arc::new(HubTriggers::new(connections))
}
