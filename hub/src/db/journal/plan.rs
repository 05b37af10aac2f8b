//! Turns a group of write batches into the rows one transaction writes.
//!
//! Each batch is [`encode`]d by its caller before it is queued (records and facts to JSON,
//! shared with the plan, not copied): callers encode side by side on their own tasks, so the
//! single writer spends its time on the database only. The writer task loads the stored
//! state of every execution the group names (its next seq, owner and whether it is
//! finished), then [`plan`] checks each batch in turn against that state plus the effects of
//! the batches before it, exactly as the agent's stores do: a batch that breaks a journal's
//! order is refused whole and the others go on. Backend code then writes the resulting rows
//! with a handful of statements, whatever the group's size.
//!
//! Ownership (fencing between hubs sharing one database): a batch may append to or update an
//! unfinished execution only when this instance owns it. A hub whose lease expired and whose
//! executions were adopted by another hub gets its writes refused, even if it is still running.
//! A finished execution may be updated by any instance (a retry reopens it), which then owns it.

use std::collections::HashMap;
use std::sync::Arc;

use reactor_core::engine::{ExecutionId, ExecutionRecord, Fact};
use reactor_core::store::{StoreError, StoreWrite};

/// What the database holds about one execution when the group starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub next_seq: u32,
    pub owner: Option<String>,
    pub finished: bool,
}

/// An execution's row as the group leaves it.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub id: String,
    pub next_seq: i64,
    pub owner: String,
    /// The new summary, when the group wrote one (`Create` or `Update`); `None` when it only
    /// appended facts (the stored summary stays).
    pub summary: Option<Summary>,
}

/// The columns that come from an [`ExecutionRecord`].
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub workflow: String,
    pub status: &'static str,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub device: Option<String>,
    /// Shared, not copied, between a batch and the plan (retries plan a group again).
    pub record: Arc<str>,
}

/// The rows a group writes, and each batch's outcome.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub outcomes: Vec<Result<(), StoreError>>,
    /// Executions created by the group.
    pub inserts: Vec<Row>,
    /// Stored executions the group changed.
    pub updates: Vec<Row>,
    /// (execution, seq, fact JSON)
    pub facts: Vec<(String, i64, Arc<str>)>,
    /// Meta keys set (last value per key).
    pub meta_put: Vec<(String, Vec<u8>)>,
    /// Meta keys deleted.
    pub meta_delete: Vec<String>,
}

impl Plan {
    /// Whether the group writes nothing (every batch refused or empty).
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.updates.is_empty()
            && self.facts.is_empty()
            && self.meta_put.is_empty()
            && self.meta_delete.is_empty()
    }
}

/// A [`StoreWrite`] with its JSON encoded.
#[derive(Clone, Debug)]
pub(crate) enum Encoded {
    /// The summary of the new record (its `device` from the start event) and the encoded
    /// `Started` fact.
    Create {
        id: ExecutionId,
        summary: Summary,
        started: Arc<str>,
    },
    Append {
        id: ExecutionId,
        seq: u32,
        fact: Arc<str>,
    },
    /// The new summary (`device` unset: it comes from the start event and stays).
    Update {
        id: ExecutionId,
        summary: Summary,
    },
    PutMeta {
        key: String,
        value: Option<Vec<u8>>,
    },
}

impl Encoded {
    /// The execution written, if any.
    fn execution(&self) -> Option<ExecutionId> {
        match self {
            Encoded::Create { id, .. }
            | Encoded::Append { id, .. }
            | Encoded::Update { id, .. } => Some(*id),
            Encoded::PutMeta { .. } => None,
        }
    }
}

/// Encodes one batch for the writer. A batch that cannot be encoded is refused whole, as the
/// writer would refuse it. Borrowed: the caller gets its writes back after the commit
/// ([`Store::write_returning`](reactor_core::store::Store::write_returning)).
pub(crate) fn encode(batch: &[StoreWrite]) -> Result<Vec<Encoded>, StoreError> {
    batch
        .iter()
        .map(|write| {
            Ok(match write {
                StoreWrite::Create { record, started } => {
                    let Fact::Started { event, .. } = started else {
                        return Err(StoreError::InvalidWrite(format!(
                            "execution {}: the first fact must be Started",
                            record.id
                        )));
                    };
                    let mut summary = summarize(record)?;
                    summary.device = event
                        .meta
                        .get("device")
                        .and_then(|device| device.as_str())
                        .map(str::to_string);
                    Encoded::Create {
                        id: record.id,
                        summary,
                        started: to_json(started)?,
                    }
                }
                StoreWrite::Append { id, seq, fact } => Encoded::Append {
                    id: *id,
                    seq: *seq,
                    fact: to_json(fact)?,
                },
                StoreWrite::Update(record) => Encoded::Update {
                    id: record.id,
                    summary: summarize(record)?,
                },
                StoreWrite::PutMeta { key, value } => Encoded::PutMeta {
                    key: key.clone(),
                    value: value.clone(),
                },
            })
        })
        .collect()
}

/// The ids a group touches (the state [`plan`] needs), deduplicated.
pub(crate) fn touched(group: &[Vec<Encoded>]) -> Vec<String> {
    let mut ids: Vec<ExecutionId> = group
        .iter()
        .flatten()
        .filter_map(Encoded::execution)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(ToString::to_string).collect()
}

/// Whether every execution the group writes is created by the group itself (each one's
/// `Create` comes before its other writes). Such a group needs no stored state to be planned:
/// the only way it can clash with the database is an id that exists already, which the
/// database's primary key refuses.
pub(crate) fn creates_only(group: &[Vec<Encoded>]) -> bool {
    let mut created = std::collections::HashSet::new();
    group.iter().flatten().all(|write| match write {
        Encoded::Create { id, .. } => created.insert(*id),
        Encoded::Update { id, .. } | Encoded::Append { id, .. } => created.contains(id),
        Encoded::PutMeta { .. } => true,
    })
}

/// The state of one execution while the group is planned.
#[derive(Clone, Debug)]
struct Slot {
    next_seq: u32,
    owner: Option<String>,
    finished: bool,
    /// Created by this group (an insert, not an update).
    new: bool,
    /// Changed by this group.
    dirty: bool,
    summary: Option<Summary>,
}

/// Checks and lays out `group` for the instance `me`, given the stored state of the touched
/// executions (absent ones do not exist).
pub(crate) fn plan(group: &[Vec<Encoded>], stored: HashMap<String, Stored>, me: &str) -> Plan {
    let mut slots: HashMap<String, Slot> = stored
        .into_iter()
        .map(|(id, stored)| {
            let slot = Slot {
                next_seq: stored.next_seq,
                owner: stored.owner,
                finished: stored.finished,
                new: false,
                dirty: false,
                summary: None,
            };
            (id, slot)
        })
        .collect();
    let mut facts = Vec::new();
    let mut meta: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for batch in group {
        match check(batch, &slots, me) {
            Ok(effects) => {
                for (id, slot) in effects.slots {
                    slots.insert(id, slot);
                }
                facts.extend(effects.facts);
                meta.extend(effects.meta);
                outcomes.push(Ok(()));
            }
            Err(err) => outcomes.push(Err(err)),
        }
    }
    let mut plan = Plan {
        outcomes,
        facts,
        ..Plan::default()
    };
    let mut rows: Vec<(String, Slot)> = slots.into_iter().filter(|(_, s)| s.dirty).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (id, slot) in rows {
        let row = Row {
            id,
            next_seq: i64::from(slot.next_seq),
            owner: me.to_string(),
            summary: slot.summary,
        };
        if slot.new {
            plan.inserts.push(row);
        } else {
            plan.updates.push(row);
        }
    }
    let mut last: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    let mut order = Vec::new();
    for (key, value) in meta {
        if last.insert(key.clone(), value).is_none() {
            order.push(key);
        }
    }
    for key in order {
        match last.remove(&key).flatten() {
            Some(value) => plan.meta_put.push((key, value)),
            None => plan.meta_delete.push(key),
        }
    }
    plan
}

/// The effects of one accepted batch.
struct Effects {
    slots: HashMap<String, Slot>,
    facts: Vec<(String, i64, Arc<str>)>,
    meta: Vec<(String, Option<Vec<u8>>)>,
}

fn check(
    batch: &[Encoded],
    stored: &HashMap<String, Slot>,
    me: &str,
) -> Result<Effects, StoreError> {
    let mut effects = Effects {
        slots: HashMap::new(),
        facts: Vec::new(),
        meta: Vec::new(),
    };
    for write in batch {
        match write {
            Encoded::Create {
                id,
                summary,
                started,
            } => {
                let key = id.to_string();
                if effects.slots.contains_key(&key) || stored.contains_key(&key) {
                    return Err(StoreError::AlreadyExists(*id));
                }
                effects.facts.push((key.clone(), 0, started.clone()));
                effects.slots.insert(
                    key,
                    Slot {
                        next_seq: 1,
                        owner: Some(me.to_string()),
                        finished: summary.finished_at.is_some(),
                        new: true,
                        dirty: true,
                        summary: Some(summary.clone()),
                    },
                );
            }
            Encoded::Append { id, seq, fact } => {
                let key = id.to_string();
                let mut slot = writable(&key, *id, &effects.slots, stored, me)?;
                if *seq != slot.next_seq {
                    return Err(StoreError::OutOfOrder {
                        execution: *id,
                        expected: slot.next_seq,
                        got: *seq,
                    });
                }
                slot.next_seq = slot.next_seq.checked_add(1).ok_or_else(|| {
                    StoreError::InvalidWrite(format!("execution {id}: journal is full"))
                })?;
                effects
                    .facts
                    .push((key.clone(), i64::from(*seq), fact.clone()));
                effects.slots.insert(key, slot);
            }
            Encoded::Update { id, summary } => {
                let key = id.to_string();
                let mut slot = writable(&key, *id, &effects.slots, stored, me)?;
                let mut summary = summary.clone();
                // The device comes from the start event and stays.
                summary.device = slot.summary.as_ref().and_then(|s| s.device.clone());
                slot.finished = summary.finished_at.is_some();
                slot.summary = Some(summary);
                effects.slots.insert(key, slot);
            }
            Encoded::PutMeta { key, value } => effects.meta.push((key.clone(), value.clone())),
        }
    }
    Ok(effects)
}

/// The slot of an execution this batch may write to, marked dirty and owned by `me`.
fn writable(
    key: &str,
    id: ExecutionId,
    batch: &HashMap<String, Slot>,
    stored: &HashMap<String, Slot>,
    me: &str,
) -> Result<Slot, StoreError> {
    let mut slot = batch
        .get(key)
        .or_else(|| stored.get(key))
        .cloned()
        .ok_or(StoreError::NotFound(id))?;
    if !slot.finished && slot.owner.as_deref() != Some(me) {
        return Err(StoreError::InvalidWrite(format!(
            "execution {id} is run by hub instance {} (this instance {me} no longer owns it)",
            slot.owner.as_deref().unwrap_or("none")
        )));
    }
    slot.owner = Some(me.to_string());
    slot.dirty = true;
    Ok(slot)
}

fn summarize(record: &ExecutionRecord) -> Result<Summary, StoreError> {
    let finished = record.status.is_finished();
    Ok(Summary {
        workflow: record.workflow.clone(),
        status: record.status.as_str(),
        created_at: record.created_at.millis(),
        finished_at: finished.then(|| record.finished_at.unwrap_or(record.created_at).millis()),
        device: None,
        record: to_json(record)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Arc<str>, StoreError> {
    serde_json::to_string(value)
        .map(Arc::from)
        .map_err(|err| StoreError::InvalidWrite(format!("cannot encode: {err}")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use reactor_core::engine::ExecutionStatus;
    use reactor_core::store::StoreError;
    use reactor_core::store::conformance::{append, create, id, record};

    use super::{Encoded, Stored, encode, plan};

    fn encoded(group: Vec<Vec<reactor_core::store::StoreWrite>>) -> Vec<Vec<Encoded>> {
        group.into_iter().map(|b| encode(&b).unwrap()).collect()
    }

    #[test]
    fn a_refused_batch_leaves_the_others() {
        let a = record(id(1), "w", ExecutionStatus::Running);
        let group = vec![
            vec![create(a.clone())],
            vec![append(a.id, 1), append(a.id, 3)],
            vec![append(a.id, 1)],
        ];
        let plan = plan(&encoded(group), HashMap::new(), "me");
        assert!(plan.outcomes[0].is_ok());
        assert!(matches!(
            plan.outcomes[1],
            Err(StoreError::OutOfOrder {
                expected: 2,
                got: 3,
                ..
            })
        ));
        assert!(plan.outcomes[2].is_ok());
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(plan.inserts[0].next_seq, 2);
        assert_eq!(plan.facts.len(), 2);
    }

    #[test]
    fn writes_to_an_execution_owned_elsewhere_are_refused() {
        let a = record(id(1), "w", ExecutionStatus::Running);
        let stored = |owner: &str, finished| {
            HashMap::from([(
                a.id.to_string(),
                Stored {
                    next_seq: 1,
                    owner: Some(owner.to_string()),
                    finished,
                },
            )])
        };
        let refused = plan(
            &encoded(vec![vec![append(a.id, 1)]]),
            stored("other", false),
            "me",
        );
        assert!(matches!(
            refused.outcomes[0],
            Err(StoreError::InvalidWrite(_))
        ));
        assert!(refused.is_empty());
        let own = plan(
            &encoded(vec![vec![append(a.id, 1)]]),
            stored("me", false),
            "me",
        );
        assert!(own.outcomes[0].is_ok());
        assert_eq!(own.updates.len(), 1);
        assert!(own.updates[0].summary.is_none());
        // A finished execution can be reopened by anyone, who then owns it.
        let reopened = plan(
            &encoded(vec![vec![reactor_core::store::StoreWrite::Update(
                a.clone(),
            )]]),
            stored("other", true),
            "me",
        );
        assert!(reopened.outcomes[0].is_ok());
        assert_eq!(reopened.updates[0].owner, "me");
    }
}
