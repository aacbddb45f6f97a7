-- Where a projector is stopped: the first event it could not decode or
-- apply, the error, and since when. NULL while it runs. Written by the
-- projector's leader outside its batch transaction, read by every replica's
-- /health/ready and /metrics, so that a stalled read model is visible
-- wherever the operator looks (docs/runbook.md, "A projector is stalled").
ALTER TABLE projector_checkpoints
    ADD COLUMN stalled_transaction_id  bigint,
    ADD COLUMN stalled_global_position bigint,
    ADD COLUMN stalled_error           text,
    ADD COLUMN stalled_since           timestamptz;
