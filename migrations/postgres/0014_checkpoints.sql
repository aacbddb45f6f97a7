-- Checkpoints: an aggregate's state at past versions, written with its
-- snapshots (every `snapshot_every` events) and kept, where `snapshots`
-- keeps only the latest. Folding an entity as of any point of a long
-- history starts from the checkpoint before that point, so it reads at
-- most one interval of events. Derived data: events never change, so a
-- checkpoint stays true; a missing one only costs speed.
CREATE TABLE checkpoints
(
    aggregate_type text                       NOT NULL,
    aggregate_id   text                       NOT NULL,
    sequence       bigint CHECK (sequence > 0) NOT NULL,
    payload        json                       NOT NULL,
    -- Where the event at `sequence` is, copied from `events`: a fold to a
    -- position or a time finds the checkpoint before it without reading
    -- the aggregate's events.
    transaction_id  xid8                      NOT NULL,
    global_position bigint                    NOT NULL,
    recorded_at     timestamptz               NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
