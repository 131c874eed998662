//! The row readers both SQL adapters share: each store row type is read here, once, from a
//! PostgreSQL or a SQLite row alike. Only the SQL statements differ between the two adapters
//! (placeholders, casts, arrays, the clock), so they stay in `postgres/` and `sqlite/`.
//!
//! The drivers decode every column type the same way but two: SQLite keeps ids as hyphenated
//! text (sqlx would read a `Uuid` as a blob), and the core's enums are stored by name in both, an
//! unknown name being a decode error of that column (see [`super::sql::column_enum`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use engine::canonical::ContentHash;
use engine::messages::ResultMessage;
use engine::provenance::{Record, Timing};
use engine::state::{Compensation, ExecutionStatus, Halt, NodeStatus, SkipReason};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::sql::{column_enum, required_enum};
use super::{CheckpointRow, DagRow, DagSummary, ExecutionRow, NodeRow, OutboxRow, StoreError};

/// A value read from one column, by each driver the way it stores it.
pub(crate) trait Column: Sized {
    fn from_pg(row: &PgRow, column: &str) -> Result<Self, sqlx::Error>;
    fn from_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error>;
}

/// A row of either driver, read column by column as [`Column`] values.
pub(crate) trait SqlRow {
    fn read<T: Column>(&self, column: &str) -> Result<T, sqlx::Error>;
}

impl SqlRow for PgRow {
    fn read<T: Column>(&self, column: &str) -> Result<T, sqlx::Error> {
        T::from_pg(self, column)
    }
}

impl SqlRow for SqliteRow {
    fn read<T: Column>(&self, column: &str) -> Result<T, sqlx::Error> {
        T::from_sqlite(self, column)
    }
}

/// Types both drivers decode with a plain `try_get`.
macro_rules! decoded_alike {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            fn from_pg(row: &PgRow, column: &str) -> Result<Self, sqlx::Error> {
                row.try_get(column)
            }
            fn from_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error> {
                row.try_get(column)
            }
        }
    )*};
}

decoded_alike!(
    String,
    Option<String>,
    bool,
    i32,
    i64,
    Option<i64>,
    Vec<u8>,
    Value,
    Option<Value>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

impl Column for Uuid {
    fn from_pg(row: &PgRow, column: &str) -> Result<Self, sqlx::Error> {
        row.try_get(column)
    }
    fn from_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error> {
        row.try_get::<Hyphenated, _>(column).map(Hyphenated::into_uuid)
    }
}

/// The core's enums, stored by name (NOT NULL as the enum, nullable as an `Option` of it).
macro_rules! stored_by_name {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            fn from_pg(row: &PgRow, column: &str) -> Result<Self, sqlx::Error> {
                required_enum(row, column)
            }
            fn from_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error> {
                required_enum(row, column)
            }
        }
        impl Column for Option<$t> {
            fn from_pg(row: &PgRow, column: &str) -> Result<Self, sqlx::Error> {
                column_enum(row, column)
            }
            fn from_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error> {
                column_enum(row, column)
            }
        }
    )*};
}

stored_by_name!(ExecutionStatus, Halt, NodeStatus, SkipReason, Compensation);

/// `SELECT <every execution column> FROM dag_executions <tail>`, as a literal (no dynamic SQL),
/// the columns [`execution`] reads.
macro_rules! select_execution {
    ($tail:literal) => {
        concat!(
            "SELECT execution_id, dag_id, dag_hash, status, halt, input_data, input_hash, clock, cancel_requested, \
             submitted_at, started_at, completed_at, error, provenance_chain_hash, last_record_hash, total_nodes, \
             completed_nodes, failed_nodes, skipped_nodes, lease_owner, lease_epoch FROM dag_executions ",
            $tail
        )
    };
}
pub(crate) use select_execution;

pub(crate) fn execution(r: &impl SqlRow) -> Result<ExecutionRow, sqlx::Error> {
    Ok(ExecutionRow {
        execution_id: r.read("execution_id")?,
        dag_id: r.read("dag_id")?,
        dag_hash: r.read("dag_hash")?,
        status: r.read("status")?,
        halt: r.read("halt")?,
        input_data: r.read("input_data")?,
        input_hash: r.read("input_hash")?,
        clock: r.read("clock")?,
        cancel_requested: r.read("cancel_requested")?,
        submitted_at: r.read("submitted_at")?,
        started_at: r.read("started_at")?,
        completed_at: r.read("completed_at")?,
        error: r.read("error")?,
        provenance_chain_hash: r.read("provenance_chain_hash")?,
        last_record_hash: r.read("last_record_hash")?,
        total_nodes: r.read("total_nodes")?,
        completed_nodes: r.read("completed_nodes")?,
        failed_nodes: r.read("failed_nodes")?,
        skipped_nodes: r.read("skipped_nodes")?,
        lease_owner: r.read("lease_owner")?,
        lease_epoch: r.read("lease_epoch")?,
    })
}

/// A node's trace row joined with its checkpoint's `outputs`.
pub(crate) fn node(r: &impl SqlRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        node_id: r.read("node_id")?,
        agent_id: r.read("agent_id")?,
        status: r.read("status")?,
        attempt: r.read("attempt")?,
        attempt_base: r.read("attempt_base")?,
        level_index: r.read("level_index")?,
        retry_at_ms: r.read("retry_at_ms")?,
        deadline_ms: r.read("deadline_ms")?,
        skip_reason: r.read("skip_reason")?,
        error_type: r.read("error_type")?,
        error: r.read("error")?,
        input_hash: r.read("input_hash")?,
        output_hash: r.read("output_hash")?,
        compensation: r.read("compensation")?,
        started_at: r.read("started_at")?,
        completed_at: r.read("completed_at")?,
        duration_ms: r.read("duration_ms")?,
        worker_id: r.read("worker_id")?,
        trace_id: r.read("trace_id")?,
        outputs: r.read("outputs")?,
    })
}

/// A workflow row joined with its definition.
pub(crate) fn dag(r: &impl SqlRow) -> Result<DagRow, sqlx::Error> {
    Ok(DagRow {
        dag_id: r.read("dag_id")?,
        dag_hash: r.read("dag_hash")?,
        definition: r.read("definition")?,
        revision: r.read("revision")?,
        created_at: r.read("created_at")?,
        updated_at: r.read("updated_at")?,
    })
}

pub(crate) fn dag_summary(r: &impl SqlRow) -> Result<DagSummary, sqlx::Error> {
    Ok(DagSummary {
        dag_id: r.read("dag_id")?,
        name: r.read("name")?,
        version: r.read("version")?,
        dag_hash: r.read("dag_hash")?,
        revision: r.read("revision")?,
        node_count: r.read("node_count")?,
        created_at: r.read("created_at")?,
        updated_at: r.read("updated_at")?,
    })
}

pub(crate) fn checkpoint(r: &impl SqlRow) -> Result<CheckpointRow, sqlx::Error> {
    Ok(CheckpointRow {
        node_id: r.read("node_id")?,
        status: r.read("status")?,
        outputs: r.read("outputs")?,
        output_hash: r.read("output_hash")?,
        attempt_count: r.read("attempt_count")?,
        created_at: r.read("created_at")?,
    })
}

/// An outbox row; headers that are not a string map are dropped (the relay publishes without them).
pub(crate) fn outbox(r: &impl SqlRow) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        id: r.read("id")?,
        exchange: r.read("exchange")?,
        routing_key: r.read("routing_key")?,
        body: r.read("body")?,
        headers: serde_json::from_value(r.read("headers")?).unwrap_or_default(),
    })
}

/// A provenance record and its sequence number; a hash column that is not a content hash, or
/// parent hashes that are not a list of them, make the row corrupt.
pub(crate) fn record(r: &impl SqlRow) -> Result<(i32, Record), StoreError> {
    let hash = |c: &str| -> Result<ContentHash, StoreError> {
        let text: String = r.read(c)?;
        ContentHash::parse(&text).map_err(|_| StoreError::Corrupt(format!("{c} {text:?} is not a hash")))
    };
    let parents: Value = r.read("parent_hashes")?;
    let parent_hashes = serde_json::from_value(parents).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let record = Record {
        node_id: r.read("node_id")?,
        agent_id: r.read("agent_id")?,
        input: r.read("input")?,
        outputs: r.read("outputs")?,
        input_hash: hash("input_hash")?,
        output_hash: hash("output_hash")?,
        parent_hashes,
        chain_hash: hash("chain_hash")?,
        timing: Timing {
            attempt_count: u32::try_from(r.read::<i32>("attempt_count")?).unwrap_or(0),
            started_at: r.read("started_at")?,
            completed_at: r.read("completed_at")?,
            duration_ms: u64::try_from(r.read::<i64>("duration_ms")?).unwrap_or(0),
            worker_id: r.read("worker_id")?,
        },
        prev_record_hash: hash("prev_record_hash")?,
        record_hash: hash("record_hash")?,
    };
    Ok((r.read("seq")?, record))
}

/// `(node_id, result)` rows in attempt order, grouped by node. Only parsed result messages are
/// ever stored, so one that does not parse makes the execution's attempts corrupt.
pub(crate) fn attempts_by_node(rows: Vec<(String, Value)>) -> Result<HashMap<String, Vec<ResultMessage>>, StoreError> {
    let mut by_node: HashMap<String, Vec<ResultMessage>> = HashMap::new();
    for (node, result) in rows {
        let message = serde_json::from_value(result)
            .map_err(|e| StoreError::Corrupt(format!("an attempt result of node {node:?}: {e}")))?;
        by_node.entry(node).or_default().push(message);
    }
    Ok(by_node)
}
