create function atl.approval_decide(p_request_id uuid, p_decision text, p_decided_by text, p_reason text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_req atl.approval_requests;
begin
  if p_decision is null or p_decision not in ('APPROVE', 'REJECT') then
    raise exception 'decision must be APPROVE or REJECT' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason)
  values (v_tenant, p_request_id, p_decision, p_decided_by, p_reason);
  select * into v_req from atl.approval_requests r where r.tenant_id = v_tenant and r.id = p_request_id;
  return atl._approval_json(v_req);
end $$;
comment on function atl.approval_decide(uuid, text, text, text) is
  'Records APPROVE or REJECT by a subject on a request of the current tenant; the decision trigger enforces every rule. Returns the request with its decisions.';
