//! The workflows a runtime knows, every loaded version kept: a running execution keeps the
//! version it started with while new events use the newest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::flow::Workflow;

#[derive(Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, BTreeMap<u32, Arc<Workflow>>>,
}

impl Catalog {
    /// Adds (or replaces) `workflow` under its name and version.
    pub fn insert(&mut self, workflow: Arc<Workflow>) {
        self.by_name
            .entry(workflow.name.to_string())
            .or_default()
            .insert(workflow.version, workflow);
    }

    /// Stops offering `name` to new events. Old versions stay loaded while executions use them.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// The newest version, or the pinned one.
    pub fn get(&self, name: &str, version: Option<u32>) -> Option<Arc<Workflow>> {
        let versions = self.by_name.get(name)?;
        match version {
            Some(v) => versions.get(&v).cloned(),
            None => versions.values().next_back().cloned(),
        }
    }

    /// The newest version of every workflow.
    pub fn latest(&self) -> Vec<Arc<Workflow>> {
        let mut all: Vec<_> = self
            .by_name
            .values()
            .filter_map(|v| v.values().next_back().cloned())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
