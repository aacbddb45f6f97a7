-- Webhooks. See the PostgreSQL migration of the same number.
CREATE TABLE webhook_secrets
(
  webhook_id  text    NOT NULL,
  generation  integer NOT NULL,
  tenant      text    NOT NULL,
  workflow_id text    NOT NULL,
  master_key  text    NOT NULL,
  nonce       blob    NOT NULL,
  sealed      blob    NOT NULL,
  created_at  text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  PRIMARY KEY (webhook_id, generation)
) STRICT;

CREATE TABLE rm_webhooks
(
  id                text NOT NULL PRIMARY KEY,
  tenant            text NOT NULL,
  workflow_id       text NOT NULL,
  description       text NOT NULL,
  created_by        text NOT NULL,
  created_at        text NOT NULL,
  secret_rotated_at text,
  last_delivery_at  text
) STRICT;
CREATE INDEX rm_webhooks_workflow ON rm_webhooks (workflow_id, created_at);
