-- `task_seed` split from `seed`: a toy task's problem (gold reward, π_init, data) now comes from
-- `task_seed`. Runs stored before the split drew their problem from `seed`; they keep it, so a
-- resumed or retried old run trains on the same problem and pages group it correctly.
update runs
set config = json_set(config, '$.task_seed', json_extract(config, '$.seed'))
where json_valid(config) and json_type(config, '$.task_seed') is null and json_type(config, '$.seed') is not null;
