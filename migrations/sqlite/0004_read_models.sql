-- Read models. Every row carries its tenant; every entity row carries `seq`,
-- the sequence of the last event applied to it, so that applying an event
-- twice changes nothing. All of them can be dropped and rebuilt from the log.

-- Where each projector is in the log (a `Position`: transaction, global).
CREATE TABLE projector_checkpoints
(
    projection      text        NOT NULL PRIMARY KEY,
    transaction_id  integer      NOT NULL DEFAULT 0,
    global_position integer      NOT NULL DEFAULT 0,
    updated_at      text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE rm_workflows
(
    id          text        NOT NULL PRIMARY KEY,
    tenant      text        NOT NULL,
    seq         integer      NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL,
    definition  text       NOT NULL,
    version     integer      NOT NULL,
    archived    integer     NOT NULL,
    triggers    text       NOT NULL,
    created_by  text        NOT NULL,
    created_at  text NOT NULL,
    updated_by  text        NOT NULL,
    updated_at  text NOT NULL
) STRICT;
CREATE INDEX rm_workflows_tenant ON rm_workflows (tenant, id);

CREATE TABLE rm_workflow_versions
(
    workflow_id   text        NOT NULL,
    version       integer      NOT NULL,
    tenant        text        NOT NULL,
    definition    text       NOT NULL,
    comment       text,
    reverted_from integer,
    actor         text        NOT NULL,
    recorded_at   text NOT NULL,
    PRIMARY KEY (workflow_id, version)
) STRICT;

CREATE TABLE rm_executions
(
    id               text        NOT NULL PRIMARY KEY,
    tenant           text        NOT NULL,
    seq              integer      NOT NULL,
    workflow_id      text        NOT NULL,
    workflow_version integer      NOT NULL,
    status           text        NOT NULL,
    trigger          text        NOT NULL,
    input            text       NOT NULL,
    output           text,
    error            text,
    started_by       text        NOT NULL,
    started_at       text NOT NULL,
    finished_at      text,
    updated_at       text NOT NULL
) STRICT;
CREATE INDEX rm_executions_tenant ON rm_executions (tenant, id);
CREATE INDEX rm_executions_workflow ON rm_executions (tenant, workflow_id, id);

CREATE TABLE rm_execution_steps
(
    execution_id text        NOT NULL,
    node_id      text        NOT NULL,
    attempt      integer      NOT NULL,
    tenant       text        NOT NULL,
    status       text        NOT NULL,
    input        text       NOT NULL,
    output       text,
    error        text,
    scheduled_at text NOT NULL,
    started_at   text,
    finished_at  text,
    PRIMARY KEY (execution_id, node_id, attempt)
) STRICT;

-- Metadata only: there is no column for a value, sealed or not.
CREATE TABLE rm_secrets
(
    id             text        NOT NULL PRIMARY KEY,
    tenant         text        NOT NULL,
    seq            integer      NOT NULL,
    name           text        NOT NULL,
    description    text        NOT NULL,
    rotation_count integer      NOT NULL,
    deleted        integer     NOT NULL,
    created_by     text        NOT NULL,
    created_at     text NOT NULL,
    updated_at     text NOT NULL
) STRICT;
CREATE INDEX rm_secrets_tenant ON rm_secrets (tenant, id);

CREATE TABLE rm_mcp_servers
(
    id            text        NOT NULL PRIMARY KEY,
    tenant        text        NOT NULL,
    seq           integer      NOT NULL,
    name          text        NOT NULL,
    transport     text       NOT NULL,
    enabled       integer     NOT NULL,
    deregistered  integer     NOT NULL,
    healthy       integer,
    latency_ms    integer,
    health_detail text,
    checked_at    text,
    created_at    text NOT NULL,
    updated_at    text NOT NULL
) STRICT;
CREATE INDEX rm_mcp_servers_tenant ON rm_mcp_servers (tenant, id);

CREATE TABLE rm_mcp_tools
(
    server_id    text  NOT NULL,
    name         text  NOT NULL,
    tenant       text  NOT NULL,
    description  text,
    input_schema text NOT NULL,
    PRIMARY KEY (server_id, name)
) STRICT;

-- One row per event, payload redacted.
CREATE TABLE rm_audit
(
    global_position integer      NOT NULL PRIMARY KEY,
    transaction_id  integer      NOT NULL,
    tenant          text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        integer      NOT NULL,
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    actor           text        NOT NULL,
    correlation_id  text        NOT NULL,
    causation_id    text        NOT NULL,
    request_id      text        NOT NULL,
    recorded_at     text NOT NULL,
    payload         text       NOT NULL
) STRICT;
CREATE INDEX rm_audit_tenant_order ON rm_audit (tenant, transaction_id, global_position);
CREATE INDEX rm_audit_aggregate ON rm_audit (tenant, aggregate_type, aggregate_id, sequence);
