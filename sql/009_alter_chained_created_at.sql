-- Group commit writes many requests' rows in one transaction, where now() is
-- the same for all of them. Chained rows take the time of their own insert
-- instead, so that newest-first lists follow the order rows were written.

alter table atl.audit_logs alter column created_at set default clock_timestamp();
alter table atl.agent_action_events alter column created_at set default clock_timestamp();
comment on column atl.audit_logs.created_at is
  'When the row was inserted (clock_timestamp(): rows written together in one group commit keep their order).';
comment on column atl.agent_action_events.created_at is
  'When the row was inserted (clock_timestamp(): rows written together in one group commit keep their order).';

---- create above / drop below ----

comment on column atl.agent_action_events.created_at is null;
comment on column atl.audit_logs.created_at is null;
alter table atl.agent_action_events alter column created_at set default now();
alter table atl.audit_logs alter column created_at set default now();
