-- Webhooks. `webhook_secrets` is write-side state: each generation of a
-- webhook's signing secret, sealed under the master key (bound to the
-- webhook and the generation). The log says which generations are valid;
-- a row whose generation the log does not know opens nothing.
CREATE TABLE webhook_secrets
(
    webhook_id  text        NOT NULL,
    generation  bigint      NOT NULL,
    tenant      text        NOT NULL,
    workflow_id text        NOT NULL,
    -- Fingerprint of the master key that sealed it.
    master_key  text        NOT NULL,
    nonce       bytea       NOT NULL,
    sealed      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, generation)
);

-- The `workflows` read model's webhooks: no secret, ever.
CREATE TABLE rm_webhooks
(
    id                text        NOT NULL PRIMARY KEY,
    tenant            text        NOT NULL,
    workflow_id       text        NOT NULL,
    description       text        NOT NULL,
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL,
    secret_rotated_at timestamptz,
    last_delivery_at  timestamptz
);
CREATE INDEX rm_webhooks_workflow ON rm_webhooks (workflow_id, created_at);
