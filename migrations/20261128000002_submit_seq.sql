-- Submission order = commit order. `submitted_at` is the inserting transaction's start time, so
-- two submissions at once can commit in the other order, and a claim in between would start the
-- later one first. `submit_seq` is drawn while the inserting transaction holds an advisory lock
-- until it commits, so every claim sees a gap-free prefix of submissions in this order.
CREATE SEQUENCE dag_executions_submit_seq;
ALTER TABLE dag_executions ADD COLUMN submit_seq BIGINT;
UPDATE dag_executions SET submit_seq = ordered.seq
FROM (SELECT execution_id, nextval('dag_executions_submit_seq') AS seq
      FROM (SELECT execution_id FROM dag_executions ORDER BY submitted_at, priority DESC, execution_id) AS o) AS ordered
WHERE dag_executions.execution_id = ordered.execution_id;
ALTER TABLE dag_executions ALTER COLUMN submit_seq SET DEFAULT nextval('dag_executions_submit_seq');
ALTER TABLE dag_executions ALTER COLUMN submit_seq SET NOT NULL;
CREATE INDEX dag_executions_waiting ON dag_executions (submit_seq) WHERE status IN ('pending', 'queued');
