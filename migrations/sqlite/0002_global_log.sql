-- The global log. SQLite cannot add a primary key to an existing table, so
-- the table is rebuilt with `global_position` as its rowid. SQLite has one
-- writer at a time, so rowid order is commit order; `transaction_id` is kept
-- for a uniform position format and is always 0 here.
CREATE TABLE events_new
(
  global_position integer PRIMARY KEY AUTOINCREMENT,
  aggregate_type  text                          NOT NULL,
  aggregate_id    text                          NOT NULL,
  sequence        integer CHECK (sequence >= 0) NOT NULL,
  event_type      text                          NOT NULL,
  event_version   text                          NOT NULL,
  payload         text                          NOT NULL,
  metadata        text                          NOT NULL,
  transaction_id  integer                       NOT NULL DEFAULT 0,
  recorded_at     text                          NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;

INSERT INTO events_new (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 ORDER BY rowid;

DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

-- One snapshot per aggregate, replaced in place as the aggregate grows.
CREATE TABLE snapshots_new
(
  aggregate_type   text                                  NOT NULL,
  aggregate_id     text                                  NOT NULL,
  last_sequence    integer CHECK (last_sequence >= 0)    NOT NULL,
  current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
  payload          text                                  NOT NULL,
  PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT;
INSERT INTO snapshots_new SELECT * FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_new RENAME TO snapshots;
