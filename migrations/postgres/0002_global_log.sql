-- The global, commit-safe log.
--
-- `global_position` orders events inside one transaction and breaks ties;
-- `transaction_id` is the writing transaction's id, so that a reader can take
-- only rows whose transaction is older than every transaction still running
-- (`pg_snapshot_xmin(pg_current_snapshot())`). A bigserial alone becomes
-- visible at commit, not at insert, and a reader that checkpoints on it skips
-- late commits.
ALTER TABLE events
    ADD COLUMN global_position bigserial   NOT NULL,
    ADD COLUMN transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp();

ALTER TABLE events ADD CONSTRAINT events_global_position_key UNIQUE (global_position);

-- The reader's order and range scan.
CREATE INDEX events_commit_order ON events (transaction_id, global_position);

-- One snapshot per aggregate, replaced in place as the aggregate grows.
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE snapshots ADD PRIMARY KEY (aggregate_type, aggregate_id);
