-- Fleet ingest (hub/src/fleet/ingest.rs): when a stored device event was handed to the
-- hub's workflows (NULL: not yet, routed again by the sweeper), and the execution summaries
-- devices report, stored once by (device, seq) like events. Times are Unix milliseconds.
ALTER TABLE device_events ADD COLUMN routed_at INTEGER;

CREATE TABLE device_executions (
    device_id        TEXT    NOT NULL,
    seq              INTEGER  NOT NULL,
    execution_id     TEXT    NOT NULL,
    workflow         TEXT    NOT NULL,
    workflow_version INTEGER  NOT NULL,
    outcome          TEXT    NOT NULL,
    started_at       INTEGER  NOT NULL,
    finished_at      INTEGER,
    error            TEXT,
    trace            TEXT    NOT NULL,
    received_at      INTEGER  NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE INDEX device_events_unrouted ON device_events (received_at) WHERE routed_at IS NULL;
