-- Forks: an execution records the one it was forked from and the node it
-- ran live from, and each step it copied records the position of the
-- original's event. The index answers "the forks of this execution".
ALTER TABLE rm_executions ADD COLUMN forked_from text;
ALTER TABLE rm_executions ADD COLUMN forked_from_node text;
ALTER TABLE rm_execution_steps ADD COLUMN copied_from text;
CREATE INDEX rm_executions_forks ON rm_executions (tenant, forked_from, id);
