create function atl.policy_delete(p_tool_name text) returns jsonb
language plpgsql volatile
as $$
declare
  v_row atl.tool_policies;
begin
  delete from atl.tool_policies p where p.tenant_id = atl._require_tenant() and p.tool_name = p_tool_name
  returning * into v_row;
  if not found then
    raise exception 'no policy for this tool' using errcode = 'AT404', hint = 'policy_not_found';
  end if;
  return atl._policy_json(v_row);
end $$;
comment on function atl.policy_delete(text) is 'Deletes a tool''s policy (AT404 policy_not_found when there is none).';
