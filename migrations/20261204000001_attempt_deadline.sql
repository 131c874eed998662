-- When the coordinator ends a running attempt that has sent no result (dispatch + timeout +
-- GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS), in ms since the epoch. NULL for nodes not running and
-- for attempts dispatched before this column existed (they keep the old behaviour: no deadline).
ALTER TABLE node_traces ADD COLUMN deadline_ms BIGINT;
