//! Yield points after DataFusion's operators that multiply rows.
//!
//! DataFusion stops a query by dropping its stream, which takes effect only when the task
//! running it yields. Its scans yield every so often; its joins and `unnest` do not. One batch
//! of a join's probe side can turn into millions of output rows, and the operator above pulls
//! them batch after batch within one poll, never touching a source again (apache/datafusion
//! issue 19358). A cross join that has run out of time then keeps its query worker and its
//! turn until it ends by itself, hours later. This rule puts DataFusion's own
//! [`CooperativeExec`] above each such operator: every batch it passes up spends a unit of the
//! task's budget, so the task yields and an abort lands within a few batches.

use std::sync::Arc;

use deltalake::datafusion::common::tree_node::{Transformed, TreeNode};
use deltalake::datafusion::config::ConfigOptions;
use deltalake::datafusion::error::Result;
use deltalake::datafusion::physical_optimizer::PhysicalOptimizerRule;
use deltalake::datafusion::physical_plan::coop::CooperativeExec;
use deltalake::datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};
use deltalake::datafusion::physical_plan::unnest::UnnestExec;
use deltalake::datafusion::physical_plan::ExecutionPlan;

/// The rule: a [`CooperativeExec`] above every join and `unnest`.
#[derive(Debug, Default)]
pub struct YieldAfterFanOut;

/// Whether `plan` can emit many batches for one it reads.
fn fans_out(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<CrossJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
        || plan.is::<UnnestExec>()
}

impl PhysicalOptimizerRule for YieldAfterFanOut {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if fans_out(node.as_ref()) {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "lakepipe_yield_after_fan_out"
    }

    /// The wrapper passes its input's schema through unchanged.
    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::datafusion::execution::session_state::SessionStateBuilder;
    use deltalake::datafusion::physical_plan::displayable;
    use deltalake::datafusion::prelude::SessionContext;

    /// A cross join and a hash join each get a yield point above them; a plain scan does not.
    #[tokio::test]
    async fn joins_get_a_yield_point() {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(YieldAfterFanOut))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql("CREATE TABLE t AS VALUES (1, 2), (3, 4)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx
                    .sql(sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let text = displayable(plan.as_ref()).indent(false).to_string();
                text
            }
        };
        let cross = plan("SELECT * FROM t a, t b").await;
        assert!(
            cross.contains("CooperativeExec\n  CrossJoinExec"),
            "{cross}"
        );
        let hash = plan("SELECT * FROM t a JOIN t b ON a.column1 = b.column2").await;
        assert!(
            hash.contains("CooperativeExec\n  HashJoinExec")
                || hash.contains("CooperativeExec\n    HashJoinExec"),
            "{hash}"
        );
        let scan = plan("SELECT column1 FROM t").await;
        assert!(
            !scan.contains("CooperativeExec\n  ProjectionExec")
                && !scan.starts_with("CooperativeExec\n  DataSourceExec"),
            "{scan}"
        );
        // The wrapped plan still answers.
        let n = ctx
            .sql("SELECT count(*) AS n FROM t a, t b, t c")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&n)
                .unwrap()
                .to_string()
                .matches(" 8 ")
                .count(),
            1
        );
    }
}
