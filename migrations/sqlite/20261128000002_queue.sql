-- The embedded mode's durable queue: what RabbitMQ holds in the distributed deployment, kept in
-- the same SQLite file as the store, so a killed `coordinator dev` loses no message.
-- A message is ready while `holder` is NULL; a consumer takes it by setting `holder` to its
-- connection, and settles it by deleting it (ack), clearing `holder` (requeue) or moving it to
-- the dead-letter queue. Holders from an earlier process are cleared at start.
CREATE TABLE queue_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue      TEXT NOT NULL,
    body       BLOB NOT NULL,
    -- JSON object of string headers (W3C trace context).
    headers    TEXT NOT NULL,
    -- Times handed out so far.
    deliveries INTEGER NOT NULL DEFAULT 0,
    holder     TEXT
);
CREATE INDEX queue_messages_ready ON queue_messages (queue, id) WHERE holder IS NULL;
CREATE INDEX queue_messages_held ON queue_messages (holder) WHERE holder IS NOT NULL;
