-- Secrets, encrypted at rest (hub/src/secrets): XChaCha20-Poly1305, a random 24-byte nonce per
-- value, the name bound as associated data. The key is never stored here.
-- Times are Unix milliseconds.
CREATE TABLE secrets (
    name        TEXT   NOT NULL PRIMARY KEY,
    nonce       BYTEA  NOT NULL,
    ciphertext  BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
