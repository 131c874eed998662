-- See migrations/20261204000001_attempt_deadline.sql.
ALTER TABLE node_traces ADD COLUMN deadline_ms INTEGER;
