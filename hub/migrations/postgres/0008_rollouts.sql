-- Rollouts, bundle publishing and hub → device commands (hub/src/fleet/rollout,
-- bundles.rs, delivery.rs, commands.rs). Times are Unix milliseconds.

-- Every bundle the hub signed. `version` is fleet-wide and monotonic (max + 1 at insert);
-- a rollback is a new, higher version carrying an earlier bundle's workflows.
CREATE TABLE fleet_bundles (
    version     BIGINT  NOT NULL PRIMARY KEY,
    target      TEXT    NOT NULL,
    workflows   TEXT    NOT NULL,
    bytes       BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    rollout_id  TEXT,
    purpose     TEXT    NOT NULL
);

-- The bundle each device should run; every hub delivers it to the devices connected to it
-- whose status reports an older bundle version.
CREATE TABLE fleet_desired (
    device_id   TEXT    NOT NULL PRIMARY KEY,
    version     BIGINT  NOT NULL,
    assigned_at BIGINT  NOT NULL
);
CREATE INDEX fleet_desired_assigned ON fleet_desired (assigned_at);

CREATE TABLE rollouts (
    id               TEXT    NOT NULL PRIMARY KEY,
    state            TEXT    NOT NULL,
    bundle_version   BIGINT  NOT NULL,
    selector         TEXT    NOT NULL,
    strategy         TEXT    NOT NULL,
    gate             TEXT    NOT NULL,
    auto_rollback    BIGINT  NOT NULL,
    stage            BIGINT  NOT NULL DEFAULT 0,
    stage_started_at BIGINT,
    reason           TEXT,
    created_by       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_devices (
    rollout_id       TEXT    NOT NULL,
    device_id        TEXT    NOT NULL,
    position         BIGINT  NOT NULL,
    previous_version BIGINT,
    state            TEXT    NOT NULL,
    stage            BIGINT,
    sent_at          BIGINT,
    applied_at       BIGINT,
    rollback_version BIGINT,
    health_failed    BIGINT,
    health_total     BIGINT,
    updated_at       BIGINT  NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_state ON rollout_devices (state);

-- Commands sent to devices, by (device, command id); the id is the command frame's seq.
CREATE TABLE device_commands (
    device_id   TEXT    NOT NULL,
    seq         BIGINT  NOT NULL,
    command     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    result      TEXT,
    attempts    BIGINT  NOT NULL DEFAULT 0,
    created_by  TEXT,
    created_at  BIGINT  NOT NULL,
    sent_at     BIGINT,
    answered_at BIGINT,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX device_commands_state ON device_commands (state);
