//! A table function's result as a table that computes it when it is scanned, not when the
//! statement is planned. DataFusion calls a table function while it plans, and that call is
//! synchronous: work done there blocks a worker and cannot be cancelled. A scan is async, so
//! the reads of the Delta log and of data files happen where a query's timeout can stop them.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::{Session, TableProvider};
use deltalake::datafusion::common::Result as DfResult;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::logical_expr::{Expr, TableType};
use deltalake::datafusion::physical_plan::ExecutionPlan;
use futures::future::BoxFuture;

use super::ext;
use crate::lake::LakeError;

/// Computes a table function's result.
type Compute = Box<dyn Fn() -> BoxFuture<'static, Result<RecordBatch, LakeError>> + Send + Sync>;

/// A table of `schema` whose one batch `compute` makes at each scan.
pub(super) struct Lazy {
    schema: SchemaRef,
    compute: Compute,
}

impl Lazy {
    /// A table of `schema` whose rows `compute` makes at each scan.
    pub(super) fn table<F, Fut>(schema: SchemaRef, compute: F) -> Arc<dyn TableProvider>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<RecordBatch, LakeError>> + Send + 'static,
    {
        let compute: Compute = Box::new(move || Box::pin(compute()));
        Arc::new(Lazy { schema, compute })
    }
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TableProvider for Lazy {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = (self.compute)().await.map_err(ext)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use deltalake::datafusion::prelude::SessionContext;

    use crate::lake::Lake;

    /// Planning reads nothing: `history` of a table that is not there plans, and the scan is
    /// where the work (and its error) happens; `freshness()` likewise.
    #[tokio::test(flavor = "multi_thread")]
    async fn table_functions_compute_when_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::parse(dir.path().join("missing").to_str().unwrap()).unwrap();
        let ctx = SessionContext::new();
        super::super::register_all(&ctx, &lake, None);
        let df = ctx
            .sql("SELECT * FROM history('nope')")
            .await
            .expect("planning reads nothing");
        let err = df.collect().await.unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let df = ctx
            .sql("SELECT * FROM freshness()")
            .await
            .expect("planning reads nothing");
        assert_eq!(
            df.collect()
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            0
        );
    }
}
