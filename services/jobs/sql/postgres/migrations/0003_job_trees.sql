-- Job trees: every job knows its tree's root and its depth in it, the node of its
-- parent's workflow it runs, how many children it created (checked against the root's
-- max_child_jobs while the parent is locked), and, while WAITING on children, which.

ALTER TABLE jobs ADD COLUMN root TEXT NOT NULL DEFAULT '';         -- the root job's id
ALTER TABLE jobs ADD COLUMN depth BIGINT NOT NULL DEFAULT 0;       -- 0 for a top-level job
ALTER TABLE jobs ADD COLUMN node TEXT NOT NULL DEFAULT '';         -- spec.node
ALTER TABLE jobs ADD COLUMN children BIGINT NOT NULL DEFAULT 0;    -- children created
ALTER TABLE jobs ADD COLUMN awaiting TEXT NOT NULL DEFAULT '';     -- awaited child ids, ' '-separated

-- Jobs made before trees existed are the roots of their own trees.
UPDATE jobs SET root = id;
UPDATE jobs SET children = (SELECT count(*) FROM jobs AS child WHERE child.parent = jobs.id)
WHERE EXISTS (SELECT 1 FROM jobs AS child WHERE child.parent = jobs.id);

-- Listing a job's children (and walking a tree down), newest first; it replaces
-- jobs_parent, of which it is an extension.
CREATE INDEX jobs_children ON jobs (parent, create_time DESC, id DESC) WHERE parent <> '';
DROP INDEX jobs_parent;

-- Listing a tree's jobs, newest first.
CREATE INDEX jobs_tree ON jobs (root, create_time DESC, id DESC);
