-- An approval request moves only through the rules: its status, approval
-- count and decision time only through the decision trigger and the expiry
-- sweep, its consumption once and only when APPROVED, and what was requested
-- never. The runtime role holds UPDATE on those columns for the triggers and
-- the gate; this guard keeps a direct UPDATE from using them. Superusers
-- (the owner repairing data) are let through.

{{ template "func/_approval_request_guard_006.sql" . }}

revoke all on function atl._approval_request_guard() from public;

create trigger _100_guard before update on atl.approval_requests
  for each row execute function atl._approval_request_guard();

---- create above / drop below ----

drop trigger _100_guard on atl.approval_requests;
drop function atl._approval_request_guard();
