-- Workflows stored by the hub's API; every version is kept.
-- `active` is false once the workflow is deleted: its versions stay, so executions started
-- on them still recover and show their source.
CREATE TABLE workflows (
    name TEXT PRIMARY KEY NOT NULL,
    latest_version INTEGER NOT NULL,
    active BOOLEAN NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE workflow_versions (
    name TEXT NOT NULL REFERENCES workflows (name),
    version INTEGER NOT NULL,
    -- The YAML text as submitted.
    source TEXT NOT NULL,
    -- Lowercase hex SHA-256 of `source`.
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- The id of the API token that submitted it (NULL when loaded otherwise).
    author TEXT,
    PRIMARY KEY (name, version)
);
