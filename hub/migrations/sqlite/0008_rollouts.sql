-- Rollouts, bundle publishing and hub → device commands (hub/src/fleet/rollout,
-- bundles.rs, delivery.rs, commands.rs). Times are Unix milliseconds.

-- Every bundle the hub signed. `version` is fleet-wide and monotonic (max + 1 at insert);
-- a rollback is a new, higher version carrying an earlier bundle's workflows.
CREATE TABLE fleet_bundles (
    version     INTEGER  NOT NULL PRIMARY KEY,
    target      TEXT    NOT NULL,
    workflows   TEXT    NOT NULL,
    bytes       BLOB    NOT NULL,
    created_at  INTEGER  NOT NULL,
    expires_at  INTEGER  NOT NULL,
    rollout_id  TEXT,
    purpose     TEXT    NOT NULL
);

-- The bundle each device should run; every hub delivers it to the devices connected to it
-- whose status reports an older bundle version.
CREATE TABLE fleet_desired (
    device_id   TEXT    NOT NULL PRIMARY KEY,
    version     INTEGER  NOT NULL,
    assigned_at INTEGER  NOT NULL
);
CREATE INDEX fleet_desired_assigned ON fleet_desired (assigned_at);

CREATE TABLE rollouts (
    id               TEXT    NOT NULL PRIMARY KEY,
    state            TEXT    NOT NULL,
    bundle_version   INTEGER  NOT NULL,
    selector         TEXT    NOT NULL,
    strategy         TEXT    NOT NULL,
    gate             TEXT    NOT NULL,
    auto_rollback    INTEGER  NOT NULL,
    stage            INTEGER  NOT NULL DEFAULT 0,
    stage_started_at INTEGER,
    reason           TEXT,
    created_by       TEXT,
    created_at       INTEGER  NOT NULL,
    updated_at       INTEGER  NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_devices (
    rollout_id       TEXT    NOT NULL,
    device_id        TEXT    NOT NULL,
    position         INTEGER  NOT NULL,
    previous_version INTEGER,
    state            TEXT    NOT NULL,
    stage            INTEGER,
    sent_at          INTEGER,
    applied_at       INTEGER,
    rollback_version INTEGER,
    health_failed    INTEGER,
    health_total     INTEGER,
    updated_at       INTEGER  NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_state ON rollout_devices (state);

-- Commands sent to devices, by (device, command id); the id is the command frame's seq.
CREATE TABLE device_commands (
    device_id   TEXT    NOT NULL,
    seq         INTEGER  NOT NULL,
    command     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    result      TEXT,
    attempts    INTEGER  NOT NULL DEFAULT 0,
    created_by  TEXT,
    created_at  INTEGER  NOT NULL,
    sent_at     INTEGER,
    answered_at INTEGER,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX device_commands_state ON device_commands (state);
