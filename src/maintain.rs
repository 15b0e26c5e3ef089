//! Maintenance: compaction (bin-packing or Z-order per partition) and vacuum.
//!
//! Both may run beside a live ingest. Compaction commits only if no file it rewrote changed
//! meanwhile (delta-rs's conflict check), and is retried otherwise; the ingest, whose commits
//! never rebase, recomputes its batch against the compacted files, and its key index reads the
//! new files' keys on its next refresh. Vacuum deletes only files unreferenced for longer than
//! the retention, which must be at least the configured minimum unless forced.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;

use crate::lake::upsert::writer_properties;
use crate::lake::{Lake, LakeError};
use crate::progress::Progress;
use crate::query::list_tables;

/// Errors of maintenance commands.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The lake could not be read or written.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The retention is below the minimum and `--force` was not given.
    #[error("refusing to vacuum with a retention of {hours} h: the minimum is {min} h, so that readers and writers still using recent versions keep their files; pass --force to override")]
    UnsafeRetention {
        /// Requested hours.
        hours: u64,
        /// Configured minimum.
        min: u64,
    },
    /// A table to work on does not exist.
    #[error("no table `{0}` in the lake")]
    NoTable(String),
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
}

impl MaintainError {
    /// Whether the user must change something.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, MaintainError::Lake(e) if !e.is_user_error())
    }
}

/// What compaction did to one table.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CompactReport {
    /// Table name.
    pub table: String,
    /// Files written.
    pub files_added: u64,
    /// Small files replaced.
    pub files_removed: u64,
    /// Attempts (more than one after conflicts with a concurrent writer).
    pub attempts: u32,
}

/// Compaction options.
#[derive(Debug, Clone, Default)]
pub struct CompactOptions {
    /// Tables to compact (all when empty).
    pub tables: Vec<String>,
    /// Target file size in bytes.
    pub target_file_size: u64,
    /// Z-order by these columns instead of plain bin-packing.
    pub zorder: Vec<String>,
    /// Show a progress bar.
    pub progress: bool,
}

async fn tables_to_work_on(lake: &Lake, wanted: &[String]) -> Result<Vec<String>, MaintainError> {
    let all = list_tables(lake).await?;
    if wanted.is_empty() {
        return Ok(all);
    }
    for t in wanted {
        if !all.contains(t) {
            return Err(MaintainError::NoTable(t.clone()));
        }
    }
    Ok(wanted.to_vec())
}

/// Bin-pack (or Z-order) small files per partition. Bloom filters on key columns are kept.
pub async fn compact(lake: &Lake, cfg: &crate::config::Config, opts: &CompactOptions) -> Result<Vec<CompactReport>, MaintainError> {
    let target = NonZeroU64::new(opts.target_file_size).ok_or_else(|| MaintainError::Invalid("--target-file-size must be positive".into()))?;
    let specs = cfg.all_specs().map_err(|e| MaintainError::Invalid(e.to_string()))?;
    let tables = tables_to_work_on(lake, &opts.tables).await?;
    let progress = Progress::new(opts.progress, "tables");
    progress.set(0, Some(tables.len() as u64));
    let mut reports = Vec::new();
    for (i, name) in tables.iter().enumerate() {
        progress.message(name.clone());
        let keys = specs.get(name).map(|s| s.key.clone()).unwrap_or_default();
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            let Some(table) = lake.open(name).await? else { break CompactReport { table: name.clone(), files_added: 0, files_removed: 0, attempts: 0 } };
            let kind = if opts.zorder.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(opts.zorder.clone()) };
            let result = table.optimize().with_target_size(target).with_type(kind).with_writer_properties(writer_properties(&keys, None)).await;
            match result {
                Ok((_, m)) => {
                    break CompactReport { table: name.clone(), files_added: m.num_files_added, files_removed: m.num_files_removed, attempts: attempt };
                }
                Err(e) if attempt < 20 && is_conflict(&e) => {
                    tracing::info!(table = %name, attempt, "compaction conflicted with a concurrent commit; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
                }
                Err(e) => return Err(LakeError::delta(name, e).into()),
            }
        };
        tracing::info!(table = %name, added = report.files_added, removed = report.files_removed, "compacted");
        reports.push(report);
        progress.set(i as u64 + 1, None);
    }
    progress.finish();
    Ok(reports)
}

fn is_conflict(e: &deltalake::DeltaTableError) -> bool {
    let t = e.to_string().to_ascii_lowercase();
    t.contains("conflict") || t.contains("already exists") || t.contains("concurrent")
}

/// Vacuum options.
#[derive(Debug, Clone, Default)]
pub struct VacuumOptions {
    /// Tables to vacuum (all when empty).
    pub tables: Vec<String>,
    /// Keep files unreferenced for less than this many hours.
    pub retain_hours: u64,
    /// Allow a retention below the minimum.
    pub force: bool,
    /// The minimum retention in hours.
    pub min_retain_hours: u64,
    /// List what would be deleted without deleting.
    pub dry_run: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What vacuum did to one table.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct VacuumReport {
    /// Table name.
    pub table: String,
    /// Files deleted (or that would be, in a dry run).
    pub files_deleted: u64,
    /// In a dry run, the files that would be deleted (paths in the table); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_delete: Vec<String>,
}

/// Delete files that no version newer than the retention references.
pub async fn vacuum(lake: &Lake, opts: &VacuumOptions) -> Result<Vec<VacuumReport>, MaintainError> {
    if opts.retain_hours < opts.min_retain_hours && !opts.force {
        return Err(MaintainError::UnsafeRetention { hours: opts.retain_hours, min: opts.min_retain_hours });
    }
    let tables = tables_to_work_on(lake, &opts.tables).await?;
    let progress = Progress::new(opts.progress, "tables");
    progress.set(0, Some(tables.len() as u64));
    let mut reports = Vec::new();
    for (i, name) in tables.iter().enumerate() {
        let mut attempt = 0;
        let files = loop {
            attempt += 1;
            let Some(table) = lake.open(name).await? else { break Vec::new() };
            let result = table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(opts.retain_hours as i64))
                .with_enforce_retention_duration(false)
                .with_mode(VacuumMode::Full)
                .with_dry_run(opts.dry_run)
                .await;
            match result {
                Ok((_, m)) => break m.files_deleted,
                Err(e) if attempt < 20 && is_conflict(&e) => tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await,
                Err(e) => return Err(LakeError::delta(name, e).into()),
            }
        };
        let deleted = files.len() as u64;
        tracing::info!(table = %name, files = deleted, dry_run = opts.dry_run, "vacuumed");
        let would_delete = if opts.dry_run { files } else { Vec::new() };
        reports.push(VacuumReport { table: name.clone(), files_deleted: deleted, would_delete });
        progress.set(i as u64 + 1, None);
    }
    progress.finish();
    Ok(reports)
}
