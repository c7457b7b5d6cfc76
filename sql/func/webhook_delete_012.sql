create function atl.webhook_delete(p_id uuid) returns jsonb
language plpgsql volatile
as $$
declare
  v_row atl.webhooks;
begin
  update atl.webhooks w set deleted_at = coalesce(w.deleted_at, now())
  where w.tenant_id = atl._require_tenant() and w.id = p_id
  returning * into v_row;
  if not found then
    raise exception 'webhook not found' using errcode = 'AT404', hint = 'webhook_not_found';
  end if;
  return atl._webhook_json(v_row);
end $$;
comment on function atl.webhook_delete(uuid) is
  'Soft-deletes a webhook of the current tenant (idempotent; AT404 webhook_not_found otherwise): no new deliveries, pending ones end as failed.';
