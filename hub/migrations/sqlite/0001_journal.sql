-- The execution journal (reactor_core::store::Store) and the multi-hub bookkeeping.
-- Times are Unix milliseconds. Ids are ULID text (26 chars): text order is time order.

CREATE TABLE executions (
    id          TEXT    NOT NULL PRIMARY KEY,
    workflow    TEXT    NOT NULL,
    -- queued | running | succeeded | failed | cancelled
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- When it finished (created_at for a finished record without one); NULL while unfinished.
    -- Retention order is (finished_at, id).
    finished_at INTEGER,
    -- The fleet device an execution belongs to (fleet events); NULL for hub-local ones.
    device      TEXT,
    -- The hub instance running it (hub_instances.id); a hub whose lease expired loses it.
    owner       TEXT,
    -- The next journal seq (= the number of facts journaled).
    next_seq    INTEGER NOT NULL,
    -- The ExecutionRecord as JSON.
    record      TEXT    NOT NULL
);
CREATE INDEX executions_by_workflow ON executions (workflow, id);
CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_workflow_status ON executions (workflow, status, id);
CREATE INDEX executions_by_device ON executions (device, id) WHERE device IS NOT NULL;
CREATE INDEX executions_by_created ON executions (created_at, id);
CREATE INDEX executions_by_finished ON executions (finished_at, id) WHERE finished_at IS NOT NULL;
CREATE INDEX executions_unfinished ON executions (owner, id) WHERE finished_at IS NULL;

-- No foreign key to executions: the store checks every append against the execution's row
-- (locked) before writing, and deletes journals with their executions; a per-row FK check
-- would cost more than the rest of the insert.
CREATE TABLE journal (
    execution TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    -- The Fact as JSON.
    fact      TEXT    NOT NULL,
    PRIMARY KEY (execution, seq)
) WITHOUT ROWID;

-- Small runtime values (cron last tick, de-dup marks): Store::meta.
CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- One row per hub process; a hub renews lease_until while alive.
CREATE TABLE hub_instances (
    id           TEXT    NOT NULL PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL
);
