-- GreenLang Orchestrator schema. Covers what the earlier V021 declared (dag_workflows,
-- dag_executions, node_traces, dag_checkpoints, execution_provenance) plus what correctness needs:
-- content-addressed definitions pinned by executions, per-attempt records (the result inbox),
-- leases with fencing epochs, and the outbox. Plain PostgreSQL 15; no extension required.

-- Every DAG definition ever used, by content. Executions point here, so editing or deleting a
-- DAG never changes what a running or finished execution ran.
CREATE TABLE dag_definitions (
    dag_hash    TEXT PRIMARY KEY CHECK (dag_hash ~ '^[0-9a-f]{64}$'),
    definition  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE dag_workflows (
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    dag_id      VARCHAR(128) NOT NULL,
    name        VARCHAR(256) NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    version     VARCHAR(32) NOT NULL,
    dag_hash    TEXT NOT NULL REFERENCES dag_definitions (dag_hash),
    node_count  INTEGER NOT NULL,
    -- Optimistic concurrency for PUT (If-Match).
    revision    BIGINT NOT NULL DEFAULT 1,
    enabled     BOOLEAN NOT NULL DEFAULT true,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, dag_id)
);

CREATE TABLE dag_executions (
    execution_id    UUID PRIMARY KEY,
    tenant_id       TEXT NOT NULL DEFAULT 'default',
    dag_id          VARCHAR(128) NOT NULL,
    dag_hash        TEXT NOT NULL REFERENCES dag_definitions (dag_hash),
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    halt            TEXT CHECK (halt IN ('fail_fast', 'compensate', 'cancel')),
    input_data      JSONB NOT NULL,
    input_hash      TEXT NOT NULL,
    options         JSONB NOT NULL DEFAULT '{}',
    priority        INTEGER NOT NULL DEFAULT 0,
    -- The deterministic clock value handed to agents (RFC 3339).
    clock           TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash    TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    submitted_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ,
    error           TEXT,
    provenance_chain_hash TEXT,
    last_record_hash TEXT,
    total_nodes     INTEGER NOT NULL,
    completed_nodes INTEGER NOT NULL DEFAULT 0,
    failed_nodes    INTEGER NOT NULL DEFAULT 0,
    skipped_nodes   INTEGER NOT NULL DEFAULT 0,
    -- Lease: which coordinator drives this execution, fenced by an epoch that every write checks.
    lease_owner     TEXT,
    lease_epoch     BIGINT NOT NULL DEFAULT 0,
    lease_expires_at TIMESTAMPTZ,
    -- Order in which executions were granted a concurrency slot (first start only).
    slot_seq        BIGINT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (completed_nodes + failed_nodes + skipped_nodes <= total_nodes)
);
CREATE SEQUENCE dag_executions_slot_seq;
CREATE UNIQUE INDEX dag_executions_idempotency ON dag_executions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX dag_executions_claimable ON dag_executions (submitted_at)
    WHERE status IN ('pending', 'queued', 'running');
CREATE INDEX dag_executions_by_dag ON dag_executions (tenant_id, dag_id, submitted_at DESC);
CREATE INDEX dag_executions_by_status ON dag_executions (tenant_id, status, submitted_at DESC);

-- Current state of each node of each execution.
CREATE TABLE node_traces (
    execution_id UUID NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id      VARCHAR(128) NOT NULL,
    agent_id     VARCHAR(128) NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'skipped',
                                   'upstream_failed', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Attempts made before the latest resume; the retry budget counts from here.
    attempt_base INTEGER NOT NULL DEFAULT 0 CHECK (attempt_base >= 0),
    level_index  INTEGER NOT NULL,
    retry_at_ms  BIGINT,
    skip_reason  TEXT,
    error_type   TEXT,
    error        TEXT,
    input_hash   TEXT,
    output_hash  TEXT,
    compensation TEXT NOT NULL DEFAULT 'none',
    started_at   TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    duration_ms  BIGINT,
    worker_id    TEXT,
    trace_id     TEXT,
    PRIMARY KEY (execution_id, node_id)
);

-- Every attempt result ever received: the inbox of the coordinator driving the execution.
-- The primary key records a result once per (execution, node, attempt, kind); duplicates are
-- acknowledged and dropped.
CREATE TABLE node_attempts (
    execution_id UUID NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id      VARCHAR(128) NOT NULL,
    attempt      INTEGER NOT NULL CHECK (attempt > 0),
    kind         TEXT NOT NULL CHECK (kind IN ('run', 'compensate')),
    result       JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ,
    PRIMARY KEY (execution_id, node_id, attempt, kind)
);
CREATE INDEX node_attempts_unprocessed ON node_attempts (execution_id) WHERE processed_at IS NULL;

CREATE TABLE dag_checkpoints (
    execution_id  UUID NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    node_id       VARCHAR(128) NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('completed', 'failed', 'skipped', 'timed_out')),
    outputs       JSONB NOT NULL,
    output_hash   TEXT NOT NULL,
    attempt_count INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, node_id)
);

-- Append-only provenance records, chained per execution in commit order. A node re-run after a
-- resume (its checkpoint failed verification) gets a later record that supersedes the earlier.
CREATE TABLE execution_provenance (
    execution_id     UUID NOT NULL REFERENCES dag_executions (execution_id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    node_id          VARCHAR(128) NOT NULL,
    agent_id         VARCHAR(128) NOT NULL,
    input            JSONB NOT NULL,
    outputs          JSONB NOT NULL,
    input_hash       TEXT NOT NULL,
    output_hash      TEXT NOT NULL,
    parent_hashes    JSONB NOT NULL,
    chain_hash       TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL,
    started_at       TEXT NOT NULL,
    completed_at     TEXT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    worker_id        TEXT NOT NULL,
    prev_record_hash TEXT NOT NULL,
    record_hash      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- Messages to publish, written in the same transaction as the state change that caused them.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    exchange      TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    body          BYTEA NOT NULL,
    headers       JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A relay claims rows briefly, publishes them with confirms, then deletes them; a claim that
    -- expires (the relay died) is taken again. Duplicates are harmless downstream.
    claimed_until TIMESTAMPTZ
);
