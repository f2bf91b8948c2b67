-- Why a run ended as it did when its status alone does not say: a run that `early_stopping`
-- finished before its last step ("stopped: past its peak at step N …"). Written by the queue,
-- beside the status it explains.
alter table runs add column status_reason text;
