-- The Postgres twin of ../sqlite/0005.
alter table runs add column status_reason text;
