-- Names that must be unique within a tenant: a secret's name (referenced as
-- `{{secrets.NAME}}`) and an MCP server's name (referenced by `mcp_tool`
-- nodes). The command bus claims a name in the same transaction that appends
-- the creating event, and releases it with the deleting event, so two
-- concurrent creations with one name cannot both commit. Write-side state,
-- derived from the log: it is filled from the existing events below.
CREATE TABLE name_claims
(
    tenant         text NOT NULL,
    aggregate_type text NOT NULL,
    name           text NOT NULL,
    aggregate_id   text NOT NULL,
    CONSTRAINT name_claims_pkey PRIMARY KEY (tenant, aggregate_type, name)
);

CREATE UNIQUE INDEX name_claims_holder ON name_claims (aggregate_type, aggregate_id);

INSERT INTO name_claims (tenant, aggregate_type, name, aggregate_id)
SELECT e.payload ->> 'tenant', e.aggregate_type, e.payload ->> 'name', e.aggregate_id
  FROM events e
 WHERE e.event_type IN ('SecretCreated', 'McpServerRegistered')
   AND NOT EXISTS (SELECT 1
                     FROM events d
                    WHERE d.aggregate_type = e.aggregate_type
                      AND d.aggregate_id = e.aggregate_id
                      AND d.event_type IN ('SecretDeleted', 'McpServerDeregistered'))
 ORDER BY e.global_position
ON CONFLICT DO NOTHING;
