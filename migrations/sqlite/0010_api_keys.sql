-- API keys. The log records each key's creation and revocation (aggregate
-- `api_key`); this table is write-side state kept in the same commit as
-- those events: the SHA-256 hash a presented key is looked up by (never the
-- key), what a request needs to authorise it, and its last use, which is
-- not an event. Times are fixed-width RFC 3339 text.
CREATE TABLE api_keys
(
    id           text NOT NULL PRIMARY KEY,
    tenant       text NOT NULL,
    hash         blob NOT NULL UNIQUE,
    name         text NOT NULL,
    role         text NOT NULL,
    created_by   text NOT NULL,
    created_at   text NOT NULL,
    expires_at   text,
    revoked_at   text,
    last_used_at text
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, id);
