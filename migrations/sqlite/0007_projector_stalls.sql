-- Where a projector is stopped: the first event it could not decode or
-- apply, the error, and since when. NULL while it runs. Read by
-- /health/ready and /metrics (docs/runbook.md, "A projector is stalled").
ALTER TABLE projector_checkpoints ADD COLUMN stalled_transaction_id integer;
ALTER TABLE projector_checkpoints ADD COLUMN stalled_global_position integer;
ALTER TABLE projector_checkpoints ADD COLUMN stalled_error text;
ALTER TABLE projector_checkpoints ADD COLUMN stalled_since text;
