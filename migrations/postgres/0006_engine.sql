-- The execution engine.

-- Work: one row per execution the engine has to drive, removed when the
-- execution ends. A worker claims due rows with a lease (`owner`,
-- `lease_until`) and extends it while it drives the execution; a lease that
-- runs out (a worker that died) makes the row claimable again. `due_at` is
-- when the execution next needs the engine: now, when a timer (a delay, a
-- retry's backoff) falls due, or never (NULL) while it is paused, until a
-- command wakes it. Write-side state: derived from the log, never read by
-- the API.
CREATE TABLE engine_work
(
    execution_id text        NOT NULL PRIMARY KEY,
    tenant       text        NOT NULL,
    due_at       timestamptz,
    owner        text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL
);
CREATE INDEX engine_work_due ON engine_work (due_at);

-- `startExecution`'s idempotency keys: the same key within 24 hours returns
-- the first execution instead of starting another.
CREATE TABLE execution_keys
(
    tenant       text        NOT NULL,
    key          text        NOT NULL,
    execution_id text        NOT NULL,
    created_at   timestamptz NOT NULL,
    CONSTRAINT execution_keys_pkey PRIMARY KEY (tenant, key)
);

-- What a debugger shows at a glance.
ALTER TABLE rm_executions ADD COLUMN paused_at text;
ALTER TABLE rm_executions ADD COLUMN breakpoints jsonb NOT NULL DEFAULT '[]';
ALTER TABLE rm_executions ADD COLUMN deadline timestamptz;
