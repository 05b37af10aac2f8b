-- Fleet (hub/src/fleet): enrolled devices, one-time enrollment tokens, the bundle-signing
-- key (sealed with the secrets key), device events stored once by (device, seq), gap notices.
-- Times are Unix milliseconds. Only hashes of credentials and tokens are stored.
CREATE TABLE devices (
    id              TEXT    NOT NULL PRIMARY KEY,
    labels          TEXT    NOT NULL,
    credential_hash TEXT    UNIQUE,
    created_at      INTEGER  NOT NULL,
    enrolled_at     INTEGER,
    last_seen       INTEGER,
    online          INTEGER  NOT NULL DEFAULT 0,
    status_seq      INTEGER  NOT NULL DEFAULT 0,
    agent_version   TEXT,
    bundle_version  INTEGER,
    health_failed   INTEGER,
    health_total    INTEGER,
    health_window   INTEGER,
    acked_seq       INTEGER  NOT NULL DEFAULT 0
);

CREATE TABLE enrollment_tokens (
    hash        TEXT    NOT NULL PRIMARY KEY,
    device_id   TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at  INTEGER  NOT NULL,
    expires_at  INTEGER  NOT NULL,
    used_at     INTEGER
);

CREATE TABLE fleet_signing_keys (
    key_id      TEXT    NOT NULL PRIMARY KEY,
    public_key  BLOB   NOT NULL,
    nonce       BLOB   NOT NULL,
    ciphertext  BLOB   NOT NULL,
    created_at  INTEGER  NOT NULL,
    retired_at  INTEGER
);

CREATE TABLE device_events (
    device_id   TEXT    NOT NULL,
    seq         INTEGER  NOT NULL,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    time        INTEGER  NOT NULL,
    data        TEXT    NOT NULL,
    meta        TEXT    NOT NULL,
    received_at INTEGER  NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE TABLE device_gaps (
    device_id   TEXT    NOT NULL,
    seq_from    INTEGER  NOT NULL,
    seq_to      INTEGER  NOT NULL,
    reason      TEXT    NOT NULL,
    dropped     INTEGER  NOT NULL,
    received_at INTEGER  NOT NULL,
    PRIMARY KEY (device_id, seq_from)
);
