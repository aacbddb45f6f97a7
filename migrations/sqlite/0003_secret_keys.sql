-- Per-secret data keys, wrapped by the master key. They live outside the
-- event log on purpose: deleting a row destroys the only way to unseal the
-- values recorded in the log (crypto-shredding), while the log stays
-- immutable.
CREATE TABLE secret_keys
(
  secret_id   text NOT NULL PRIMARY KEY,
  tenant      text NOT NULL,
  -- Fingerprint of the master key that wrapped this data key.
  master_key  text NOT NULL,
  nonce       blob NOT NULL,
  wrapped_key blob NOT NULL,
  created_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
