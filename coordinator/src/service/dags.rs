//! DAG definitions: create (from JSON or imported YAML), read through the cache, update with a
//! revision check, delete, and validate again. The DAG cache is consulted first on reads and
//! forgotten on every change; a stale entry can never start an execution (the store compares
//! the definition's hash), so the cache only ever saves a read.

use engine::dag::{Dag, DagSpec, Limits, ParseError, ValidationReport, ValidationWarning, compile, compile_stored};
use serde_json::Value;

use super::merge::{MergeError, merge_update};
use super::{ServiceError, reject_nul};
use crate::metrics::Metrics;
use crate::store::{DagRow, DagStore, UpdateOutcome};

/// The DAG cache port; Redis implements it. Every call may fail silently: a miss and an
/// unavailable cache look the same, and the store is always the truth.
#[async_trait::async_trait]
pub trait DagCache: Send + Sync {
    async fn cached(&self, tenant: &str, dag_id: &str) -> Option<DagRow>;
    async fn remember(&self, tenant: &str, row: &DagRow);
    async fn forget(&self, tenant: &str, dag_id: &str);
}

/// What the DAG use cases need: the store, the optional cache, the limits and the metrics.
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    pub db: &'a dyn DagStore,
    pub cache: Option<&'a dyn DagCache>,
    pub limits: Limits,
    pub metrics: &'a Metrics,
}

impl std::fmt::Debug for Catalog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("limits", &self.limits).field("cached", &self.cache.is_some()).finish()
    }
}

/// A stored definition and the warnings its validation gave.
#[derive(Debug, Clone)]
pub struct Saved {
    pub row: DagRow,
    pub warnings: Vec<ValidationWarning>,
}

pub fn no_dag(dag_id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no DAG {dag_id:?}"))
}

/// A stored definition, compiled again (its hash checked).
pub fn compiled(row: &DagRow) -> Result<Dag, ServiceError> {
    compile_stored(row.definition.clone(), Some(&row.dag_hash)).map_err(ServiceError::Corrupt)
}

impl Catalog<'_> {
    /// Parses, checks and compiles a received DAG document; every validation error is counted.
    pub fn accept(&self, spec: Result<DagSpec, ParseError>) -> Result<Dag, ServiceError> {
        let spec = spec.map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        reject_nul(&serde_json::to_value(&spec).unwrap_or_default(), "the DAG")?;
        compile(spec, &self.limits).map_err(|report| {
            self.count_validation_errors(&report);
            ServiceError::Invalid(report)
        })
    }

    /// Stores a new DAG (a conflict when the id is taken in this tenant).
    pub async fn create(&self, tenant: &str, spec: Result<DagSpec, ParseError>) -> Result<Saved, ServiceError> {
        let dag = self.accept(spec)?;
        let row = self.db.insert_dag(tenant, &dag).await?;
        self.forget(tenant, &row.dag_id).await;
        Ok(Saved { row, warnings: dag.warnings().to_vec() })
    }

    /// The tenant's DAG, from the cache when it has it (and then cached).
    pub async fn get(&self, tenant: &str, dag_id: &str) -> Result<DagRow, ServiceError> {
        if engine::ids::check_id(dag_id).is_err() {
            return Err(no_dag(dag_id));
        }
        if let Some(cache) = self.cache
            && let Some(row) = cache.cached(tenant, dag_id).await
        {
            return Ok(row);
        }
        let row = self.fresh(tenant, dag_id).await?;
        if let Some(cache) = self.cache {
            cache.remember(tenant, &row).await;
        }
        Ok(row)
    }

    /// The tenant's DAG from the store, never the cache.
    pub async fn fresh(&self, tenant: &str, dag_id: &str) -> Result<DagRow, ServiceError> {
        self.db.get_dag(tenant, dag_id).await?.ok_or_else(|| no_dag(dag_id))
    }

    /// Applies a PUT body (see [`merge_update`]) when the stored revision is `expected` (or
    /// always, when `None`), validating the result as a new definition.
    pub async fn update(
        &self,
        tenant: &str,
        dag_id: &str,
        expected: Option<i64>,
        patch: &Value,
    ) -> Result<Saved, ServiceError> {
        // Fresh from the database, never the cache: the revision decides If-Match.
        let row = self.fresh(tenant, dag_id).await?;
        if let Some(expected) = expected
            && expected != row.revision
        {
            return Err(ServiceError::PreconditionFailed(format!("revision is {}, not {expected}", row.revision)));
        }
        let merged = merge_update(&row.definition, patch, dag_id).map_err(|e| match e {
            MergeError::BadPatch(m) => ServiceError::BadRequest(m),
            MergeError::CorruptStored(m) => ServiceError::Corrupt(m),
        })?;
        let dag = self.accept(DagSpec::from_value(merged))?;
        let outcome = self.db.update_dag(tenant, &dag, Some(row.revision)).await?;
        self.forget(tenant, dag_id).await;
        match outcome {
            UpdateOutcome::Updated(row) => Ok(Saved { row, warnings: dag.warnings().to_vec() }),
            UpdateOutcome::NotFound => Err(no_dag(dag_id)),
            UpdateOutcome::RevisionMismatch(now) => {
                Err(ServiceError::PreconditionFailed(format!("the DAG changed meanwhile (revision {now})")))
            }
        }
    }

    /// Deletes the tenant's DAG; executions keep their pinned definition.
    pub async fn delete(&self, tenant: &str, dag_id: &str) -> Result<(), ServiceError> {
        if engine::ids::check_id(dag_id).is_err() || !self.db.delete_dag(tenant, dag_id).await? {
            return Err(no_dag(dag_id));
        }
        self.forget(tenant, dag_id).await;
        Ok(())
    }

    /// Validates the stored definition again under today's limits.
    pub async fn validate(&self, tenant: &str, dag_id: &str) -> Result<ValidationReport, ServiceError> {
        let row = self.get(tenant, dag_id).await?;
        let spec = DagSpec::from_value(row.definition).map_err(|e| ServiceError::Corrupt(e.to_string()))?;
        Ok(match compile(spec, &self.limits) {
            Ok(dag) => dag.report(),
            Err(report) => {
                self.count_validation_errors(&report);
                report
            }
        })
    }

    /// Drops a DAG from the cache after it changed.
    pub async fn forget(&self, tenant: &str, dag_id: &str) {
        if let Some(cache) = self.cache {
            cache.forget(tenant, dag_id).await;
        }
    }

    fn count_validation_errors(&self, report: &ValidationReport) {
        for e in &report.errors {
            let kind = serde_json::to_value(e.error_type).ok().and_then(|v| v.as_str().map(str::to_owned));
            self.metrics.dag_validation_errors.with_label_values(&[&kind.unwrap_or_default()]).inc();
        }
    }
}
