create function atl.webhook_create(p_url text, p_format text, p_created_by text) returns jsonb
language plpgsql volatile
as $$
declare
  v_row atl.webhooks;
begin
  if p_format is null or p_format not in ('json', 'slack') then
    raise exception 'format must be json or slack' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_url is null or p_url !~ '^https?://[^\s]+$' or char_length(p_url) > 2048 then
    raise exception 'url must be an http or https URL of at most 2048 characters'
      using errcode = 'AT400', hint = 'validation_failed';
  end if;
  -- A bound per tenant, so one tenant's fan-out cannot crowd the shared delivery worker.
  perform pg_advisory_xact_lock(hashtextextended('atl.webhooks:' || atl._require_tenant(), 0));
  if (select count(*) from atl.webhooks w
      where w.tenant_id = atl.current_tenant() and w.deleted_at is null) >= 10 then
    raise exception 'a tenant may have at most 10 webhooks; delete one first'
      using errcode = 'AT409', hint = 'too_many_webhooks';
  end if;
  insert into atl.webhooks (tenant_id, url, format, secret, created_by)
  values (atl._require_tenant(), p_url, p_format, atl._webhook_secret_new(), p_created_by)
  returning * into v_row;
  return atl._webhook_json(v_row) || jsonb_build_object('secret', v_row.secret);
end $$;
comment on function atl.webhook_create(text, text, text) is
  'Adds a webhook (url, format json|slack) to the current tenant, at most 10 live ones (AT409 too_many_webhooks); returns it with its signing secret, shown this once.';
