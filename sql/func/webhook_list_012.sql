create function atl.webhook_list() returns jsonb
language sql stable
as $$
  select coalesce(jsonb_agg(atl._webhook_json(w) order by w.created_at desc, w.id desc), '[]'::jsonb)
  from atl.webhooks w
  where w.tenant_id = atl.current_tenant() and w.deleted_at is null
$$;
comment on function atl.webhook_list() is 'The current tenant''s webhooks that are not deleted, newest first, without secrets.';
