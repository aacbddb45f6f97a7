-- Checkpoints with the state last. SQLite keeps the first bytes of a row in
-- its b-tree cell and spills the rest to overflow pages: with the position
-- and time stored after a state of several kilobytes, finding the
-- checkpoint before a point (and the first one past it) read the overflow
-- pages of every checkpoint it passed, and an as-of read deep in a long
-- history cost tens of milliseconds. With them first, a checkpoint's state
-- is read only for the checkpoint the fold starts from. (PostgreSQL keeps
-- large values out of line already: its table is unchanged.)
CREATE TABLE checkpoints_by_position
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        integer CHECK (sequence > 0) NOT NULL,
    -- Where the event at `sequence` is, copied from `events`.
    transaction_id  integer                      NOT NULL,
    global_position integer                      NOT NULL,
    recorded_at     text                         NOT NULL,
    -- The state after the event at `sequence`.
    payload         text                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

INSERT INTO checkpoints_by_position
    (aggregate_type, aggregate_id, sequence, transaction_id, global_position, recorded_at, payload)
SELECT aggregate_type, aggregate_id, sequence, transaction_id, global_position, recorded_at, payload
FROM checkpoints;

DROP TABLE checkpoints;

ALTER TABLE checkpoints_by_position RENAME TO checkpoints;
