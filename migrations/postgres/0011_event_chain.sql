-- The log's hash chain: one row per event, in the commit-safe order the
-- projectors read the log, each `hash` the SHA-256 of the previous row's
-- hash and the event. Written by the `chain` pass behind the reader (never
-- on the command path); `toolhub-replay verify` recomputes it from the
-- events and names the first position that does not match.
CREATE TABLE event_chain
(
    n               bigint NOT NULL PRIMARY KEY,
    transaction_id  text   NOT NULL,
    global_position bigint NOT NULL UNIQUE,
    hash            bytea  NOT NULL
);
