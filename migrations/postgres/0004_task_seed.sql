-- ../sqlite/0004 rewrote configs stored before `task_seed` existed. No Postgres database
-- predates it; this keeps the two backends' migration numbers in step.
select 1;
