-- API bearer tokens. Only the SHA-256 of a token is stored (see hub/src/auth.rs for why a
-- fast hash is enough for 256-bit random tokens).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    name TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
