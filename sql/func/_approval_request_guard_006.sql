create function atl._approval_request_guard() returns trigger
language plpgsql
as $$
begin
  if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
    return new;
  end if;
  if (new.status, new.approvals, new.decided_at) is distinct from (old.status, old.approvals, old.decided_at)
     and not (pg_trigger_depth() > 1
              or (current_user = 'atl_sweeper' and old.status = 'PENDING' and new.status = 'EXPIRED')) then
    raise exception 'an approval request''s status moves only through decisions and the expiry sweep'
      using errcode = 'AT403', hint = 'forbidden';
  end if;
  if new.consumed_at is distinct from old.consumed_at
     and (old.consumed_at is not null or new.status <> 'APPROVED') then
    raise exception 'an approval is consumed once, and only when APPROVED' using errcode = 'AT409', hint = 'approval_consumed';
  end if;
  if (new.tenant_id, new.id, new.domain, new.agent_id, new.tool_name, new.action_type, new.action_payload,
      new.trust_level, new.requested_by, new.trace_id, new.expires_at, new.auto_approve_eligible,
      new.required_approvals, new.created_at)
     is distinct from
     (old.tenant_id, old.id, old.domain, old.agent_id, old.tool_name, old.action_type, old.action_payload,
      old.trust_level, old.requested_by, old.trace_id, old.expires_at, old.auto_approve_eligible,
      old.required_approvals, old.created_at) then
    raise exception 'what was requested cannot be changed' using errcode = 'AT403', hint = 'forbidden';
  end if;
  return new;
end $$;
comment on function atl._approval_request_guard() is
  'Private trigger: status/approvals/decided_at change only inside the decision trigger or the sweep (PENDING -> EXPIRED); consumed_at once and only when APPROVED; the request itself never (superusers excepted).';
