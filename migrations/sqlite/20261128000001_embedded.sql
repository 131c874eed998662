-- GreenLang Orchestrator schema, embedded (SQLite) edition: the twin of
-- migrations/20261128000001_orchestrator.sql + 20261128000002_submit_seq.sql, table by table, with
-- the same table and column names, read and written by coordinator/src/store/sqlite.rs.
--
-- Type mapping (every table is STRICT, so a value of the wrong type is refused as PostgreSQL would):
-- - UUID: TEXT, lowercase hyphenated (36 characters; sorts like PostgreSQL's uuid, byte by byte).
-- - JSONB: TEXT holding JSON (checked with json_valid).
-- - TIMESTAMPTZ: TEXT, always 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (UTC, microseconds like PostgreSQL),
--   fixed width so text order is time order; the store binds every timestamp itself. The defaults
--   below write the same format (SQLite's clock has milliseconds: the last three digits are 0).
-- - BOOLEAN: INTEGER 0 or 1. BIGINT/INTEGER: INTEGER. BYTEA: BLOB. VARCHAR(n): TEXT + length check.
-- - Sequences: submit_seq and slot_seq are drawn as MAX + 1 inside the writing transaction (one
--   connection serialises every transaction, so the values are gap-free and in commit order).

CREATE TABLE dag_definitions (
    dag_hash    TEXT NOT NULL PRIMARY KEY
                CHECK (length(dag_hash) = 64 AND dag_hash NOT GLOB '*[^0-9a-f]*'),
    definition  TEXT NOT NULL CHECK (json_valid(definition)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z')
) STRICT;

CREATE TABLE dag_workflows (
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    dag_id      TEXT NOT NULL CHECK (length(dag_id) <= 128),
    name        TEXT NOT NULL CHECK (length(name) <= 256),
    description TEXT NOT NULL DEFAULT '',
    version     TEXT NOT NULL CHECK (length(version) <= 32),
    dag_hash    TEXT NOT NULL REFERENCES dag_definitions (dag_hash),
    node_count  INTEGER NOT NULL,
    -- Optimistic concurrency for PUT (If-Match).
    revision    INTEGER NOT NULL DEFAULT 1,
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    PRIMARY KEY (tenant_id, dag_id)
) STRICT;

CREATE TABLE dag_executions (
    execution_id    TEXT NOT NULL PRIMARY KEY CHECK (length(execution_id) = 36),
    tenant_id       TEXT NOT NULL DEFAULT 'default',
    dag_id          TEXT NOT NULL CHECK (length(dag_id) <= 128),
    dag_hash        TEXT NOT NULL REFERENCES dag_definitions (dag_hash),
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    halt            TEXT CHECK (halt IN ('fail_fast', 'compensate', 'cancel')),
    input_data      TEXT NOT NULL CHECK (json_valid(input_data)),
    input_hash      TEXT NOT NULL,
    options         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(options)),
    priority        INTEGER NOT NULL DEFAULT 0,
    -- The deterministic clock value handed to agents (RFC 3339).
    clock           TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash    TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    submitted_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    started_at      TEXT,
    completed_at    TEXT,
    error           TEXT,
    provenance_chain_hash TEXT,
    last_record_hash TEXT,
    total_nodes     INTEGER NOT NULL,
    completed_nodes INTEGER NOT NULL DEFAULT 0,
    failed_nodes    INTEGER NOT NULL DEFAULT 0,
    skipped_nodes   INTEGER NOT NULL DEFAULT 0,
    -- Lease: which coordinator drives this execution, fenced by an epoch that every write checks.
    lease_owner     TEXT,
    lease_epoch     INTEGER NOT NULL DEFAULT 0,
    lease_expires_at TEXT,
    -- Order in which executions were granted a concurrency slot (first start only).
    slot_seq        INTEGER,
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    -- Submission order = commit order (see 20261128000002_submit_seq.sql of PostgreSQL).
    submit_seq      INTEGER NOT NULL,
    CHECK (completed_nodes + failed_nodes + skipped_nodes <= total_nodes)
) STRICT;
CREATE UNIQUE INDEX dag_executions_idempotency ON dag_executions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- SQLite uses a partial index only when the query repeats its condition, so the claim's lookups
-- get plain (status, ...) indexes instead of PostgreSQL's partial ones.
CREATE INDEX dag_executions_claimable ON dag_executions (status, submitted_at);
CREATE INDEX dag_executions_waiting ON dag_executions (status, submit_seq);
-- Full indexes: they answer MAX(...) + 1 (the sequences) without a scan.
CREATE UNIQUE INDEX dag_executions_submit_seq ON dag_executions (submit_seq);
CREATE INDEX dag_executions_slot_seq ON dag_executions (slot_seq);
CREATE INDEX dag_executions_by_dag ON dag_executions (tenant_id, dag_id, submitted_at DESC);
CREATE INDEX dag_executions_by_status ON dag_executions (tenant_id, status, submitted_at DESC);

-- Current state of each node of each execution.
CREATE TABLE node_traces (
    execution_id TEXT NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id      TEXT NOT NULL CHECK (length(node_id) <= 128),
    agent_id     TEXT NOT NULL CHECK (length(agent_id) <= 128),
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'skipped',
                                   'upstream_failed', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Attempts made before the latest resume; the retry budget counts from here.
    attempt_base INTEGER NOT NULL DEFAULT 0 CHECK (attempt_base >= 0),
    level_index  INTEGER NOT NULL,
    retry_at_ms  INTEGER,
    skip_reason  TEXT,
    error_type   TEXT,
    error        TEXT,
    input_hash   TEXT,
    output_hash  TEXT,
    compensation TEXT NOT NULL DEFAULT 'none',
    started_at   TEXT,
    completed_at TEXT,
    duration_ms  INTEGER,
    worker_id    TEXT,
    trace_id     TEXT,
    PRIMARY KEY (execution_id, node_id)
) STRICT;

-- Every attempt result ever received: the inbox of the coordinator driving the execution.
-- The primary key records a result once per (execution, node, attempt, kind); duplicates are
-- acknowledged and dropped.
CREATE TABLE node_attempts (
    execution_id TEXT NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id      TEXT NOT NULL CHECK (length(node_id) <= 128),
    attempt      INTEGER NOT NULL CHECK (attempt > 0),
    kind         TEXT NOT NULL CHECK (kind IN ('run', 'compensate')),
    result       TEXT NOT NULL CHECK (json_valid(result)),
    received_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    processed_at TEXT,
    PRIMARY KEY (execution_id, node_id, attempt, kind)
) STRICT;
CREATE INDEX node_attempts_unprocessed ON node_attempts (execution_id) WHERE processed_at IS NULL;

CREATE TABLE dag_checkpoints (
    execution_id  TEXT NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id       TEXT NOT NULL CHECK (length(node_id) <= 128),
    status        TEXT NOT NULL CHECK (status IN ('completed', 'failed', 'skipped', 'timed_out')),
    outputs       TEXT NOT NULL CHECK (json_valid(outputs)),
    output_hash   TEXT NOT NULL,
    attempt_count INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    PRIMARY KEY (execution_id, node_id)
) STRICT;

-- Append-only provenance records, chained per execution in commit order. A node re-run after a
-- resume (its checkpoint failed verification) gets a later record that supersedes the earlier.
CREATE TABLE execution_provenance (
    execution_id     TEXT NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    node_id          TEXT NOT NULL CHECK (length(node_id) <= 128),
    agent_id         TEXT NOT NULL CHECK (length(agent_id) <= 128),
    input            TEXT NOT NULL CHECK (json_valid(input)),
    outputs          TEXT NOT NULL CHECK (json_valid(outputs)),
    input_hash       TEXT NOT NULL,
    output_hash      TEXT NOT NULL,
    parent_hashes    TEXT NOT NULL CHECK (json_valid(parent_hashes)),
    chain_hash       TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL,
    started_at       TEXT NOT NULL,
    completed_at     TEXT NOT NULL,
    duration_ms      INTEGER NOT NULL,
    worker_id        TEXT NOT NULL,
    prev_record_hash TEXT NOT NULL,
    record_hash      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
) STRICT;

-- Messages to publish, written in the same transaction as the state change that caused them.
-- AUTOINCREMENT: ids are never reused, like BIGSERIAL's.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange      TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    body          BLOB NOT NULL,
    headers       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(headers)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now') || substr(strftime('%f', 'now'), 3) || '000Z'),
    -- A relay claims rows briefly, publishes them with confirms, then deletes them; a claim that
    -- expires (the relay died) is taken again. Duplicates are harmless downstream.
    claimed_until TEXT
) STRICT;
