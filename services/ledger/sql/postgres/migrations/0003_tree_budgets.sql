-- Budgets of one job tree: only the usage and reservations of the jobs whose tree's root
-- is root_job count against them ('' for the budgets of every job, as before).
ALTER TABLE budgets ADD COLUMN root_job TEXT NOT NULL DEFAULT '';
