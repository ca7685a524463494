-- The W3C traceparent of the span that created the job, when that span is in the job's
-- trace: the parent of the job's `agent.job` span, which the jobs service emits when the
-- job ends, with the job's create and end times. Empty for a job created outside its
-- trace (its `agent.job` is then a root) and for jobs made before this column existed.

ALTER TABLE jobs ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';
