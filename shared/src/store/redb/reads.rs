//! The journal's reads, each in its own read transaction (a consistent snapshot). The
//! tables and their layout are described in `tables.rs`.

use std::ops::Bound;

use ::redb::{Database, ReadableDatabase, ReadableTable};

use super::tables::{
    BY_WORKFLOW, Context, EXECUTIONS, IdBytes, JOURNAL, META, UNFINISHED, decode_fact,
    decode_record, get_record, id_of, inline_facts, key,
};
use crate::engine::{ExecutionId, ExecutionRecord, Fact};
use crate::store::{ExecutionQuery, StoreError};

pub(super) fn execution(
    db: &Database,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    get_record(&executions, id)
}

pub(super) fn journal(db: &Database, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(JOURNAL).context("open journal")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    read_journal(&table, &executions, id)
}

/// The facts inline in `id`'s record row (see [`row`]), then its rows of `table`.
fn read_journal(
    table: &impl ReadableTable<(&'static IdBytes, u32), &'static [u8]>,
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Vec<Fact>, StoreError> {
    let k = key(id);
    let mut facts = match executions.get(&k).context("read record")? {
        Some(value) => inline_facts(value.value(), id)?,
        None => Vec::new(),
    };
    for entry in table
        .range((&k, 0)..=(&k, u32::MAX))
        .context("read journal")?
    {
        let (entry_key, value) = entry.context("read journal")?;
        let seq = entry_key.value().1;
        if usize::try_from(seq).ok() != Some(facts.len()) {
            return Err(StoreError::Corrupt(format!(
                "journal of {id} has a gap before seq {seq}"
            )));
        }
        facts.push(decode_fact(value.value(), id, seq)?);
    }
    Ok(facts)
}

pub(super) fn unfinished(db: &Database) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let index = txn.open_table(UNFINISHED).context("open unfinished")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    let journal = txn.open_table(JOURNAL).context("open journal")?;
    let mut out = Vec::new();
    for entry in index.iter().context("scan unfinished")? {
        let (entry, _) = entry.context("scan unfinished")?;
        let id = id_of(entry.value());
        let record = get_record(&executions, id)?.ok_or_else(|| {
            StoreError::Corrupt(format!("unfinished index names missing execution {id}"))
        })?;
        let facts = read_journal(&journal, &executions, id)?;
        out.push((record, facts));
    }
    Ok(out)
}

pub(super) fn executions(
    db: &Database,
    query: &ExecutionQuery,
) -> Result<Vec<ExecutionRecord>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    let limit = if query.limit == 0 {
        usize::MAX
    } else {
        query.limit
    };
    let upper = query.before.map(key);
    let mut out = Vec::new();
    let mut take = |record: ExecutionRecord| {
        if query.status.is_none_or(|status| status == record.status) {
            out.push(record);
        }
        out.len() < limit
    };
    if let Some(workflow) = &query.workflow {
        let index = txn.open_table(BY_WORKFLOW).context("open by_workflow")?;
        let lowest = [0u8; 16];
        let highest = [0xffu8; 16];
        let end = match &upper {
            Some(before) => Bound::Excluded((workflow.as_str(), before)),
            None => Bound::Included((workflow.as_str(), &highest)),
        };
        let range = index
            .range((Bound::Included((workflow.as_str(), &lowest)), end))
            .context("scan by_workflow")?;
        for entry in range.rev() {
            let (entry, _) = entry.context("scan by_workflow")?;
            let id = id_of(entry.value().1);
            let record = get_record(&executions, id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("workflow index names missing execution {id}"))
            })?;
            if !take(record) {
                break;
            }
        }
    } else {
        let end = match &upper {
            Some(before) => Bound::Excluded(before),
            None => Bound::Unbounded,
        };
        for entry in executions
            .range::<&IdBytes>((Bound::Unbounded, end))
            .context("scan executions")?
            .rev()
        {
            let (entry, value) = entry.context("scan executions")?;
            let id = id_of(entry.value());
            let record = decode_record(value.value(), id)?;
            if !take(record) {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) fn meta_prefix(
    db: &Database,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(META).context("open meta")?;
    let mut out = Vec::new();
    for row in table.range(prefix..).context("scan meta")? {
        let (key, value) = row.context("scan meta")?;
        if !key.value().starts_with(prefix) {
            break;
        }
        out.push((key.value().to_string(), value.value().to_vec()));
    }
    Ok(out)
}

pub(super) fn meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(META).context("open meta")?;
    Ok(table
        .get(key)
        .context("read meta")?
        .map(|value| value.value().to_vec()))
}
