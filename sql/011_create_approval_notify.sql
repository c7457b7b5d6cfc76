-- Waiting for a decision: every change of an approval request's status is
-- announced on channel atl_approval when its transaction commits, so the
-- service can wake the requests long-polling GET /api/v1/approvals/{id}
-- without polling the table. The payload is '<tenant_id> <request id>';
-- listeners must treat it as a hint and read the request under RLS.

create function atl._approval_notify() returns trigger
language plpgsql
as $$
begin
  perform pg_notify('atl_approval', new.tenant_id || ' ' || new.id::text);
  return null;
end $$;
comment on function atl._approval_notify() is
  'Private trigger: announces an approval request''s status change on channel atl_approval (payload: tenant id, space, request id) at commit.';
revoke all on function atl._approval_notify() from public;

create trigger _900_notify after update of status on atl.approval_requests
  for each row when (old.status is distinct from new.status) execute function atl._approval_notify();

---- create above / drop below ----

drop trigger _900_notify on atl.approval_requests;
drop function atl._approval_notify();
