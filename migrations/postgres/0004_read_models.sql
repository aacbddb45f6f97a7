-- Read models. Every row carries its tenant; every entity row carries `seq`,
-- the sequence of the last event applied to it, so that applying an event
-- twice changes nothing. All of them can be dropped and rebuilt from the log.

-- Where each projector is in the log (a `Position`: transaction, global).
CREATE TABLE projector_checkpoints
(
    projection      text        NOT NULL PRIMARY KEY,
    transaction_id  bigint      NOT NULL DEFAULT 0,
    global_position bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rm_workflows
(
    id          text        NOT NULL PRIMARY KEY,
    tenant      text        NOT NULL,
    seq         bigint      NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL,
    definition  jsonb       NOT NULL,
    version     bigint      NOT NULL,
    archived    boolean     NOT NULL,
    triggers    jsonb       NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX rm_workflows_tenant ON rm_workflows (tenant, id);

CREATE TABLE rm_workflow_versions
(
    workflow_id   text        NOT NULL,
    version       bigint      NOT NULL,
    tenant        text        NOT NULL,
    definition    jsonb       NOT NULL,
    comment       text,
    reverted_from bigint,
    actor         text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE rm_executions
(
    id               text        NOT NULL PRIMARY KEY,
    tenant           text        NOT NULL,
    seq              bigint      NOT NULL,
    workflow_id      text        NOT NULL,
    workflow_version bigint      NOT NULL,
    status           text        NOT NULL,
    trigger          text        NOT NULL,
    input            jsonb       NOT NULL,
    output           jsonb,
    error            text,
    started_by       text        NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX rm_executions_tenant ON rm_executions (tenant, id);
CREATE INDEX rm_executions_workflow ON rm_executions (tenant, workflow_id, id);

CREATE TABLE rm_execution_steps
(
    execution_id text        NOT NULL,
    node_id      text        NOT NULL,
    attempt      bigint      NOT NULL,
    tenant       text        NOT NULL,
    status       text        NOT NULL,
    input        jsonb       NOT NULL,
    output       jsonb,
    error        text,
    scheduled_at timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (execution_id, node_id, attempt)
);

-- Metadata only: there is no column for a value, sealed or not.
CREATE TABLE rm_secrets
(
    id             text        NOT NULL PRIMARY KEY,
    tenant         text        NOT NULL,
    seq            bigint      NOT NULL,
    name           text        NOT NULL,
    description    text        NOT NULL,
    rotation_count bigint      NOT NULL,
    deleted        boolean     NOT NULL,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX rm_secrets_tenant ON rm_secrets (tenant, id);

CREATE TABLE rm_mcp_servers
(
    id            text        NOT NULL PRIMARY KEY,
    tenant        text        NOT NULL,
    seq           bigint      NOT NULL,
    name          text        NOT NULL,
    transport     jsonb       NOT NULL,
    enabled       boolean     NOT NULL,
    deregistered  boolean     NOT NULL,
    healthy       boolean,
    latency_ms    bigint,
    health_detail text,
    checked_at    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX rm_mcp_servers_tenant ON rm_mcp_servers (tenant, id);

CREATE TABLE rm_mcp_tools
(
    server_id    text  NOT NULL,
    name         text  NOT NULL,
    tenant       text  NOT NULL,
    description  text,
    input_schema jsonb NOT NULL,
    PRIMARY KEY (server_id, name)
);

-- One row per event, payload redacted.
CREATE TABLE rm_audit
(
    global_position bigint      NOT NULL PRIMARY KEY,
    transaction_id  bigint      NOT NULL,
    tenant          text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    actor           text        NOT NULL,
    correlation_id  text        NOT NULL,
    causation_id    text        NOT NULL,
    request_id      text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    payload         jsonb       NOT NULL
);
CREATE INDEX rm_audit_tenant_order ON rm_audit (tenant, transaction_id, global_position);
CREATE INDEX rm_audit_aggregate ON rm_audit (tenant, aggregate_type, aggregate_id, sequence);
