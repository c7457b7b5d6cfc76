create function atl.tenant_settings_put(p_default_trust_level text, p_allowed_domains text[] default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant atl.tenants;
begin
  update atl.tenants t set default_trust_level = p_default_trust_level, allowed_domains = p_allowed_domains
  where t.id = atl._require_tenant()
  returning * into v_tenant;
  return jsonb_build_object('default_trust_level', v_tenant.default_trust_level,
                            'allowed_domains', to_jsonb(v_tenant.allowed_domains));
end $$;
comment on function atl.tenant_settings_put(text, text[]) is
  'Sets the current tenant''s default trust level (for tools without a policy) and the domains it accepts (NULL: any valid domain).';
