-- One takeover of the peer's queue by this node, written when it has finished or failed, in the
-- same transaction as its queue_imports rows. A node that left MASTER asked its peer for
-- queue_imports as soon as the peer was MASTER and its agent answered; the agent answers between
-- the end of the import and the insert of what it imported, so the answer could come too early
-- and name nothing: the returning node then released mail the peer delivered too. Now the peer
-- answers only once this MASTER period's row is here. Written so that running it again changes
-- nothing.
CREATE TABLE IF NOT EXISTS promotions (
    id bigserial PRIMARY KEY,
    node_id varchar(32) NOT NULL DEFAULT '',
    master_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,  -- vrrp_events.at of the MASTER
    finished_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    imported integer NOT NULL DEFAULT 0,
    refused integer NOT NULL DEFAULT 0,
    error text NOT NULL DEFAULT ''                             -- why the import failed
);
CREATE INDEX IF NOT EXISTS promotions_master_at ON promotions (master_at);

-- A node that is MASTER while it is upgraded finished its promotion before: say so, or its peer
-- would wait for one that never comes.
INSERT INTO promotions (node_id, master_at, finished_at, imported)
SELECT latest.node_id, latest.at, latest.at,
       (SELECT count(*) FROM queue_imports WHERE imported_at >= latest.at)
FROM (
    SELECT DISTINCT ON (node_id) node_id, at, state FROM vrrp_events ORDER BY node_id, id DESC
) AS latest
WHERE latest.state = 'MASTER'
  AND NOT EXISTS (
      SELECT 1 FROM promotions
      WHERE promotions.node_id = latest.node_id AND promotions.master_at >= latest.at
  );
