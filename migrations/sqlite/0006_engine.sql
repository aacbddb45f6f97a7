-- The execution engine. See the PostgreSQL migration of the same number for
-- what each table is for.

CREATE TABLE engine_work
(
    execution_id text NOT NULL PRIMARY KEY,
    tenant       text NOT NULL,
    due_at       text,
    owner        text,
    lease_until  text,
    created_at   text NOT NULL
) STRICT;
CREATE INDEX engine_work_due ON engine_work (due_at);

CREATE TABLE execution_keys
(
    tenant       text NOT NULL,
    key          text NOT NULL,
    execution_id text NOT NULL,
    created_at   text NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT;

ALTER TABLE rm_executions ADD COLUMN paused_at text;
ALTER TABLE rm_executions ADD COLUMN breakpoints text NOT NULL DEFAULT '[]';
ALTER TABLE rm_executions ADD COLUMN deadline text;
