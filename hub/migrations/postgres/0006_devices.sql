-- Fleet (hub/src/fleet): enrolled devices, one-time enrollment tokens, the bundle-signing
-- key (sealed with the secrets key), device events stored once by (device, seq), gap notices.
-- Times are Unix milliseconds. Only hashes of credentials and tokens are stored.
CREATE TABLE devices (
    id              TEXT    NOT NULL PRIMARY KEY,
    labels          TEXT    NOT NULL,
    credential_hash TEXT    UNIQUE,
    created_at      BIGINT  NOT NULL,
    enrolled_at     BIGINT,
    last_seen       BIGINT,
    online          BIGINT  NOT NULL DEFAULT 0,
    status_seq      BIGINT  NOT NULL DEFAULT 0,
    agent_version   TEXT,
    bundle_version  BIGINT,
    health_failed   BIGINT,
    health_total    BIGINT,
    health_window   BIGINT,
    acked_seq       BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE enrollment_tokens (
    hash        TEXT    NOT NULL PRIMARY KEY,
    device_id   TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    used_at     BIGINT
);

CREATE TABLE fleet_signing_keys (
    key_id      TEXT    NOT NULL PRIMARY KEY,
    public_key  BYTEA   NOT NULL,
    nonce       BYTEA   NOT NULL,
    ciphertext  BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    retired_at  BIGINT
);

CREATE TABLE device_events (
    device_id   TEXT    NOT NULL,
    seq         BIGINT  NOT NULL,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    time        BIGINT  NOT NULL,
    data        TEXT    NOT NULL,
    meta        TEXT    NOT NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE TABLE device_gaps (
    device_id   TEXT    NOT NULL,
    seq_from    BIGINT  NOT NULL,
    seq_to      BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    dropped     BIGINT  NOT NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (device_id, seq_from)
);
