-- Cron schedules: how far the scheduler checked each workflow's cron
-- triggers. A fire at or before `checked_until` is done: started (under the
-- idempotency key `cron:<workflow>:<instant>`, so that two schedulers never
-- start it twice) or skipped as missed. Write-side state of the engine.
CREATE TABLE cron_cursors
(
    workflow_id   text        NOT NULL PRIMARY KEY,
    tenant        text        NOT NULL,
    checked_until timestamptz NOT NULL
);
