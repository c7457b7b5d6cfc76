create function atl._policy_json(p atl.tool_policies) returns jsonb
language sql stable
as $$
  select jsonb_build_object('tool_name', p.tool_name, 'trust_level', p.trust_level,
    'auto_approve_eligible', p.auto_approve_eligible, 'approval_ttl_seconds', p.approval_ttl_seconds,
    'required_approvals', coalesce(p.required_approvals, case p.trust_level when 'L4' then 2 else 1 end),
    'endpoint_url', p.endpoint_url, 'updated_at', p.updated_at)
$$;
comment on function atl._policy_json(atl.tool_policies) is 'Private: a tool policy as JSON, required_approvals resolved to its level default.';
