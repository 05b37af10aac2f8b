-- Alert rules and their history (hub/src/alerts). Times are Unix milliseconds.
CREATE TABLE alert_rules (
    id          TEXT    NOT NULL PRIMARY KEY,
    -- The rule as JSON (name, metric, labels, comparator, threshold, for).
    rule        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE alert_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id     TEXT    NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    -- firing | resolved
    state       TEXT    NOT NULL,
    value       DOUBLE PRECISION,
    at          INTEGER NOT NULL
);
CREATE INDEX alert_history_by_rule ON alert_history (rule_id, id);
