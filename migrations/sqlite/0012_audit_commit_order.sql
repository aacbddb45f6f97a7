-- The audit log across tenants, in commit order: what an export without a
-- tenant reads, a batch at a time, by keyset.
CREATE INDEX rm_audit_commit_order ON rm_audit (transaction_id, global_position);
