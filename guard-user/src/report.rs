//! Placeholder replaced by the report module.
use crate::events::Record;
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct ReportError;
pub struct Loaded {
    pub records: Vec<Record>,
    pub skipped: Vec<(String, String)>,
}
pub struct Report;
impl std::fmt::Display for Report {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}
pub fn load(_p: &[PathBuf]) -> Result<Loaded, ReportError> {
    Err(ReportError)
}
pub fn analyze(_r: &[Record]) -> Report {
    Report
}
pub fn svg(_r: &[Record], _rep: &Report, _out: &Path) -> Result<(), ReportError> {
    Err(ReportError)
}
