//! `file` triggers (placeholder while being written).
use super::TriggerError;
use crate::flow::FileTrigger;

#[derive(Debug)]
pub struct FileWatch;

impl FileWatch {
    pub fn new(_settings: &FileTrigger) -> Result<Box<dyn super::Trigger>, TriggerError> {
        Err(TriggerError::Unsupported("file"))
    }
}
