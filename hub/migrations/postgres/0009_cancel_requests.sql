-- Cancels asked for executions that another hub runs (hub/src/db/cancels.rs): the owner's
-- cluster loop picks them up. Times are Unix milliseconds.
CREATE TABLE cancel_requests (
    execution    TEXT   NOT NULL PRIMARY KEY,
    reason       TEXT   NOT NULL,
    requested_at BIGINT NOT NULL
);
