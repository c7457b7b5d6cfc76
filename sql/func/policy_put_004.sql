create function atl.policy_put(
  p_tool_name text, p_trust_level text, p_auto_approve_eligible boolean default false,
  p_approval_ttl_seconds integer default 3600, p_required_approvals integer default null,
  p_endpoint_url text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_row atl.tool_policies;
begin
  if p_trust_level = 'L4' and p_auto_approve_eligible then
    raise exception 'an L4 tool can never be auto-approved' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  insert into atl.tool_policies as t (tenant_id, tool_name, trust_level, auto_approve_eligible,
    approval_ttl_seconds, required_approvals, endpoint_url)
  values (v_tenant, p_tool_name, p_trust_level, coalesce(p_auto_approve_eligible, false),
    coalesce(p_approval_ttl_seconds, 3600), p_required_approvals, p_endpoint_url)
  on conflict (tenant_id, tool_name) do update set
    trust_level = excluded.trust_level, auto_approve_eligible = excluded.auto_approve_eligible,
    approval_ttl_seconds = excluded.approval_ttl_seconds, required_approvals = excluded.required_approvals,
    endpoint_url = excluded.endpoint_url, updated_at = now()
  returning * into v_row;
  return atl._policy_json(v_row);
end $$;
comment on function atl.policy_put(text, text, boolean, integer, integer, text) is
  'Creates or replaces a tool''s policy: trust level L0-L4, auto-approval (never for L4), approval TTL, required approvals, live endpoint.';
