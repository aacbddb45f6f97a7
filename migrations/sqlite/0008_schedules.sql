-- Cron schedules. See the PostgreSQL migration of the same number.
CREATE TABLE cron_cursors
(
    workflow_id   text NOT NULL PRIMARY KEY,
    tenant        text NOT NULL,
    checked_until text NOT NULL
) STRICT;
