//! Lake: Delta tables on S3 or a local directory.
//!
//! The table for topic `T` lives at `<lake>/<T>`; dead letters at `<lake>/dead_letters`.
//! [`upsert`] applies Hudi-style upserts with a global key index, [`commit`] writes the data
//! and the source offsets in one Delta commit, and [`dead_letters`] appends bad records.

pub mod commit;
pub mod dead_letters;
pub mod index;
pub mod log;
pub mod tables;
pub mod upsert;

use std::collections::HashMap;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::StructType;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

/// Errors of the lake layer.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// A query or command named a table the lake does not hold.
    #[error("no table `{table}` in the lake {lake}{known}")]
    NoTable {
        /// The table named.
        table: String,
        /// The lake's root.
        lake: String,
        /// The tables there are, as `(tables: a, b)` (empty when unknown).
        known: String,
    },
    /// A read command was pointed at a local lake directory that does not exist.
    #[error("no lake at {path}: the directory does not exist (`lakepipe ingest` creates it; check --lake or `lake`)")]
    NoLake {
        /// The directory.
        path: String,
    },
    /// The lake URI cannot be used.
    #[error("bad lake URI `{uri}`: {reason}")]
    BadUri {
        /// The URI given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A table name that is not a plain name (it could escape the lake).
    #[error("bad table name `{0}`: use letters, digits, `_`, `-` and `.`")]
    BadTableName(String),
    /// Storage could not be reached.
    #[error("cannot reach the lake at {uri}: {reason}")]
    Unreachable {
        /// The lake URI.
        uri: String,
        /// Underlying error.
        reason: String,
    },
    /// The bucket does not exist.
    #[error("the bucket of {uri} does not exist (create it first, e.g. `aws s3 mb`): {reason}")]
    MissingBucket {
        /// The lake URI.
        uri: String,
        /// Underlying error.
        reason: String,
    },
    /// Credentials were refused.
    #[error("access to {uri} was denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: {reason}")]
    AccessDenied {
        /// The lake URI.
        uri: String,
        /// Underlying error.
        reason: String,
    },
    /// A concurrent writer committed first; the batch is recomputed against the new version.
    #[error("commit conflict on table `{table}`: {reason}")]
    Conflict {
        /// Table name.
        table: String,
        /// Underlying error.
        reason: String,
    },
    /// Another writer committed offsets this batch did not start from: the batch must be dropped.
    #[error("table `{table}` partition {partition}: stored offset is {found:?}, this batch started at {expected:?}; another writer owns it")]
    Fenced {
        /// Table name.
        table: String,
        /// Source partition.
        partition: i32,
        /// The offset this batch started from.
        expected: Option<i64>,
        /// The offset in the table.
        found: Option<i64>,
    },
    /// The existing table's schema differs from the topic spec.
    #[error("table `{table}` exists with a different schema: {reason}")]
    SchemaMismatch {
        /// Table name.
        table: String,
        /// What differs.
        reason: String,
    },
    /// The object store (S3, the local disk) failed to answer: retryable, since it may come
    /// back; nothing half-done is left in the table (see docs/DESIGN.md).
    #[error("the lake's storage failed on table `{table}`: {reason}")]
    Storage {
        /// Table name.
        table: String,
        /// Underlying error.
        reason: String,
    },
    /// Delta error.
    #[error("delta table `{table}`: {source}")]
    Delta {
        /// Table name.
        table: String,
        /// Underlying error (boxed: it is large, and every `Result` of the lake carries it).
        #[source]
        source: Box<DeltaTableError>,
    },
    /// Arrow or Parquet error while building or reading files.
    #[error("data error in `{table}`: {reason}")]
    Data {
        /// Table name.
        table: String,
        /// Underlying error.
        reason: String,
    },
}

impl LakeError {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LakeError::Conflict { .. } | LakeError::Unreachable { .. } | LakeError::Storage { .. })
    }

    /// Whether the user must fix something (URI, bucket, credentials, schema).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            LakeError::BadUri { .. }
                | LakeError::NoLake { .. }
                | LakeError::NoTable { .. }
                | LakeError::BadTableName(_)
                | LakeError::MissingBucket { .. }
                | LakeError::AccessDenied { .. }
                | LakeError::SchemaMismatch { .. }
        )
    }

    pub(crate) fn delta(table: &str, source: DeltaTableError) -> Self {
        match source {
            // A request that failed on the way (connection refused or reset, a timeout, a 5xx):
            // the store may come back.
            DeltaTableError::ObjectStore { source: e @ deltalake::ObjectStoreError::Generic { .. } } => {
                LakeError::Storage { table: table.to_string(), reason: e.to_string() }
            }
            source => LakeError::Delta { table: table.to_string(), source: Box::new(source) },
        }
    }

    pub(crate) fn data(table: &str, e: impl std::fmt::Display) -> Self {
        LakeError::Data { table: table.to_string(), reason: e.to_string() }
    }
}

/// A lake root: where the tables live, and how to reach it.
#[derive(Clone)]
pub struct Lake {
    root: Url,
    storage_options: HashMap<String, String>,
    checkpoint_interval: u64,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Storage options hold secrets: never print them.
        f.debug_struct("Lake").field("root", &self.root.as_str()).finish_non_exhaustive()
    }
}

static REGISTER: std::sync::Once = std::sync::Once::new();

/// A local lake directory: created when `create`, else it must exist.
fn local_dir(path: &std::path::Path, create: bool, bad: &dyn Fn(&str) -> LakeError) -> Result<(), LakeError> {
    if create {
        return std::fs::create_dir_all(path).map_err(|e| bad(&format!("cannot create directory: {e}")));
    }
    if !path.is_dir() {
        return Err(LakeError::NoLake { path: path.display().to_string() });
    }
    Ok(())
}

impl Lake {
    /// Parse `s3://bucket/prefix`, `file:///path` or a plain path (created if missing).
    /// S3 settings come from the standard `AWS_*` environment variables.
    pub fn parse(uri: &str) -> Result<Self, LakeError> {
        Lake::parse_with(uri, true)
    }

    /// [`Lake::parse`] for commands that only read or maintain a lake: a local directory
    /// that does not exist is an error ([`LakeError::NoLake`]), and nothing is created.
    pub fn parse_existing(uri: &str) -> Result<Self, LakeError> {
        Lake::parse_with(uri, false)
    }

    fn parse_with(uri: &str, create: bool) -> Result<Self, LakeError> {
        REGISTER.call_once(|| deltalake::aws::register_handlers(None));
        let bad = |reason: &str| LakeError::BadUri { uri: uri.to_string(), reason: reason.to_string() };
        let trimmed = uri.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        let root = if trimmed.contains("://") {
            let url = Url::parse(&format!("{trimmed}/")).map_err(|e| bad(&e.to_string()))?;
            match url.scheme() {
                "s3" | "s3a" => {
                    if url.host_str().unwrap_or("").is_empty() {
                        return Err(bad("no bucket name"));
                    }
                    url
                }
                "file" => {
                    let path = url.to_file_path().map_err(|_| bad("not a local path"))?;
                    local_dir(&path, create, &bad)?;
                    url
                }
                other => return Err(bad(&format!("unsupported scheme `{other}` (use s3://, file:// or a path)"))),
            }
        } else {
            let path = std::path::Path::new(trimmed);
            local_dir(path, create, &bad)?;
            let abs = std::fs::canonicalize(path).map_err(|e| bad(&e.to_string()))?;
            Url::from_directory_path(&abs).map_err(|_| bad("not an absolute path"))?
        };
        let storage_options = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
        Ok(Lake { root, storage_options, checkpoint_interval: 10 })
    }

    /// Write a Delta checkpoint every `n` commits in tables this lake creates (default 10).
    pub fn with_checkpoint_interval(mut self, n: u64) -> Self {
        self.checkpoint_interval = n.max(1);
        self
    }

    /// The root URL, ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Whether the lake is on S3.
    pub fn is_s3(&self) -> bool {
        self.root.scheme().starts_with("s3")
    }

    /// The URL of a table.
    pub fn table_url(&self, name: &str) -> Url {
        // `name` is checked by the spec (letters, digits, `_-.`), so joining cannot fail; fall
        // back to the root rather than panic.
        self.root.join(&format!("{name}/")).unwrap_or_else(|_| self.root.clone())
    }

    /// Storage options for deltalake and object_store (never log them).
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// Check that the storage answers, within `timeout`: the bucket exists and the credentials work.
    pub async fn check(&self, timeout: Duration) -> Result<(), LakeError> {
        let uri = self.root.to_string();
        let table = DeltaTableBuilder::from_url(self.root.clone())
            .and_then(|b| b.with_storage_options(self.storage_options.clone()).build())
            .map_err(|e| LakeError::BadUri { uri: uri.clone(), reason: e.to_string() })?;
        let store = table.object_store();
        let listing = tokio::time::timeout(timeout, store.list_with_delimiter(None)).await;
        match listing {
            Err(_) => Err(LakeError::Unreachable { uri, reason: format!("no answer within {timeout:?}") }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify_store_error(&uri, &e.to_string())),
        }
    }

    /// [`Lake::open`] for a table that must exist: [`LakeError::NoTable`] names the lake.
    pub async fn open_existing(&self, name: &str) -> Result<DeltaTable, LakeError> {
        self.open(name).await?.ok_or_else(|| LakeError::NoTable { table: name.to_string(), lake: self.root.to_string(), known: String::new() })
    }

    /// Open a table, or `None` when it does not exist yet.
    pub async fn open(&self, name: &str) -> Result<Option<DeltaTable>, LakeError> {
        check_table_name(name)?;
        let url = self.table_url(name);
        if let Ok(path) = url.to_file_path() {
            if !path.join("_delta_log").is_dir() {
                return Ok(None);
            }
        }
        let table = DeltaTable::try_from_url_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|e| self.classify(name, e))?;
        Ok(if table.version().is_some() { Some(table) } else { None })
    }

    /// Open a table, creating it with `schema` partitioned by `partition_by` if missing.
    /// Two processes creating it at once is fine: the loser opens the winner's table.
    pub async fn open_or_create(&self, name: &str, schema: &SchemaRef, partition_by: &[&str]) -> Result<DeltaTable, LakeError> {
        self.open_or_create_with(name, schema, partition_by, &[]).await
    }

    /// [`Lake::open_or_create`], recording extra table properties (such as `lakepipe.key`).
    pub async fn open_or_create_with(
        &self,
        name: &str,
        schema: &SchemaRef,
        partition_by: &[&str],
        properties: &[(&str, String)],
    ) -> Result<DeltaTable, LakeError> {
        if let Some(t) = self.open(name).await? {
            check_schema(name, &t, schema)?;
            return Ok(t);
        }
        let url = self.table_url(name);
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(&path).map_err(|e| LakeError::data(name, format!("cannot create {}: {e}", path.display())))?;
        }
        let table = DeltaTable::try_from_url_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|e| self.classify(name, e))?;
        let kernel: StructType = schema.as_ref().try_into_kernel().map_err(|e| LakeError::data(name, e))?;
        let created = table
            .create()
            .with_table_name(name)
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(partition_by.iter().map(|s| s.to_string()))
            .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some(self.checkpoint_interval.to_string()))
            .with_configuration(properties.iter().map(|(k, v)| (k.to_string(), Some(v.clone()))))
            .with_raise_if_key_not_exists(false)
            .await;
        match created {
            Ok(t) => Ok(t),
            Err(e) => match self.open(name).await? {
                // Somebody else created it first.
                Some(t) => {
                    check_schema(name, &t, schema)?;
                    Ok(t)
                }
                None => Err(self.classify(name, e)),
            },
        }
    }

    fn classify(&self, table: &str, e: DeltaTableError) -> LakeError {
        let text = e.to_string();
        match classify_store_error(self.root.as_str(), &text) {
            LakeError::Unreachable { .. } if !looks_unreachable(&text) => LakeError::delta(table, e),
            other => other,
        }
    }
}

/// Only plain names: a table is always directly under the lake root.
pub fn check_table_name(name: &str) -> Result<(), LakeError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if plain {
        Ok(())
    } else {
        Err(LakeError::BadTableName(name.to_string()))
    }
}

fn looks_unreachable(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("connect") || t.contains("dns") || t.contains("timed out") || t.contains("error sending request")
}

fn classify_store_error(uri: &str, text: &str) -> LakeError {
    let reason = text.to_string();
    let uri = uri.to_string();
    if text.contains("NoSuchBucket") || text.contains("bucket does not exist") {
        LakeError::MissingBucket { uri, reason }
    } else if text.contains("AccessDenied") || text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") || text.contains("403") {
        LakeError::AccessDenied { uri, reason }
    } else {
        LakeError::Unreachable { uri, reason }
    }
}

fn check_schema(name: &str, table: &DeltaTable, schema: &SchemaRef) -> Result<(), LakeError> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let existing = snapshot.schema();
    let existing: Vec<&str> = existing.fields().map(|f| f.name().as_str()).collect();
    let wanted: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if existing != wanted {
        return Err(LakeError::SchemaMismatch {
            table: name.to_string(),
            reason: format!("table has columns {existing:?}, the topic spec gives {wanted:?}"),
        });
    }
    // Types too: rows of another type would be written into the table's files unnoticed (a
    // built-in spec whose decimal scale changed, a field's type edited).
    let kernel: StructType = schema.as_ref().try_into_kernel().map_err(|e| LakeError::data(name, e))?;
    for (have, want) in snapshot.schema().fields().zip(kernel.fields()) {
        if have.data_type() != want.data_type() {
            return Err(LakeError::SchemaMismatch {
                table: name.to_string(),
                reason: format!(
                    "column `{}` is {} in the table and {} in the topic spec (the spec changed since the table was created): keep the table's type in [specs.{name}], or write to a new table",
                    have.name(),
                    have.data_type(),
                    want.data_type()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table created with one column type refuses a spec that now gives another (the
    /// built-in `amount` went from decimal(38,9) to decimal(18,2)): the rows would otherwise be
    /// written in the new type into the old table unnoticed.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_column_whose_type_changed_is_refused_naming_it() {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
        let schema = |p, s| std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true), Field::new("amount", DataType::Decimal128(p, s), true)]));
        lake.open_or_create("t", &schema(38, 9), &[]).await.unwrap();
        lake.open_or_create("t", &schema(38, 9), &[]).await.expect("the same types open");
        let err = lake.open_or_create("t", &schema(18, 2), &[]).await.unwrap_err().to_string();
        assert!(err.contains("column `amount` is decimal(38,9) in the table and decimal(18,2) in the topic spec") && err.contains("[specs.t]"), "{err}");
    }

    #[test]
    fn parses_uris() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Lake::parse(dir.path().join("lake").to_str().unwrap()).unwrap();
        assert_eq!(plain.root().scheme(), "file");
        assert!(plain.table_url("transactions").as_str().ends_with("/lake/transactions/"));
        let s3 = Lake::parse("s3://bucket/some/prefix").unwrap();
        assert!(s3.is_s3());
        assert_eq!(s3.table_url("t").as_str(), "s3://bucket/some/prefix/t/");
        assert!(matches!(Lake::parse("gopher://x"), Err(LakeError::BadUri { .. })));
        assert!(matches!(Lake::parse("s3:///nobucket"), Err(LakeError::BadUri { .. })));
        assert!(check_table_name("transactions").is_ok());
        for bad in ["../x", "..", "a/b", "s3://b/t", "", "a b"] {
            assert!(matches!(check_table_name(bad), Err(LakeError::BadTableName(_))), "{bad}");
        }
        let dbg = format!("{s3:?}");
        assert!(!dbg.contains("AWS_"));
    }
}
