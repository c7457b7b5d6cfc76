create function atl.policy_list() returns jsonb
language sql stable
as $$
  select jsonb_build_object(
    'default_trust_level', (select t.default_trust_level from atl.tenants t where t.id = atl.current_tenant()),
    'allowed_domains', (select to_jsonb(t.allowed_domains) from atl.tenants t where t.id = atl.current_tenant()),
    'items', coalesce((select jsonb_agg(atl._policy_json(p) order by p.tool_name)
                       from atl.tool_policies p where p.tenant_id = atl.current_tenant()), '[]'::jsonb))
$$;
comment on function atl.policy_list() is 'The current tenant''s default trust level, allowed domains and every tool policy.';
