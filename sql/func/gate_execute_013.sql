create function atl.gate_execute(
  p_agent_id text, p_tool text, p_args jsonb default '{}', p_workflow text default null,
  p_stage text default null, p_trace_id text default null, p_mode text default null,
  p_idempotency_key text default null, p_approval_request_id uuid default null,
  p_trust_level text default null, p_domain text default null, p_user_id text default null,
  p_live_enabled boolean default false, p_route text default 'sql atl.gate_execute', p_latency_ms integer default 0)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tenant text := atl._require_tenant();
  v_actor atl.api_keys := atl._require_actor(array['agent']);
  v_args jsonb := coalesce(p_args, '{}'::jsonb);
  v_mode text := coalesce(p_mode, 'dry_run');
  v_stage text := coalesce(p_stage, 'execute');
  v_domain text := coalesce(p_domain, 'default');
  v_trace text := coalesce(p_trace_id, replace(gen_random_uuid()::text, '-', ''));
  v_tenant_row atl.tenants;
  v_policy atl.tool_policies;
  v_level text;
  v_required integer;
  v_hash text;
  v_idem atl.idempotency_keys;
  v_req atl.approval_requests;
  v_sandbox text;
  v_result jsonb;
  v_refusal text;
  v_message text;
  v_ok text := case v_mode when 'live' then 'dispatched' else 'allowed' end;
  v_auto_id uuid;
  v_auto_at timestamptz;
begin
  if v_mode not in ('dry_run', 'live') then
    raise exception 'mode must be dry_run or live' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if jsonb_typeof(v_args) <> 'object' then
    raise exception 'args must be a JSON object' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_trust_level is not null and p_trust_level not in ('L0', 'L1', 'L2', 'L3', 'L4') then
    raise exception 'trust_level must be one of L0, L1, L2, L3, L4' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_tool is null or p_tool !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' or char_length(p_tool) > 128 then
    raise exception 'tool must be 1 to 128 characters of letters, digits and _.:-' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_agent_id is null or p_agent_id !~ '^[A-Za-z0-9][A-Za-z0-9@._:+-]*$' or char_length(p_agent_id) > 200 then
    raise exception 'agent_id must be 1 to 200 characters of letters, digits and @._:+-' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  if p_agent_id <> v_actor.subject and not (p_agent_id = any (coalesce(v_actor.agents, '{}'))) then
    raise exception 'this key may not act as agent %', p_agent_id using errcode = 'AT403', hint = 'agent_mismatch';
  end if;

  -- The same key returns the first answer and writes nothing. A concurrent
  -- retry waits on the key's unique index until the first call commits.
  if p_idempotency_key is not null then
    v_hash := md5(jsonb_build_array(p_agent_id, p_tool, v_args, p_workflow, v_stage, v_mode,
                                    p_approval_request_id, p_trust_level, v_domain)::text);
    insert into atl.idempotency_keys (tenant_id, key, request_hash) values (v_tenant, p_idempotency_key, v_hash)
    on conflict (tenant_id, key) do nothing;
    if not found then
      select * into v_idem from atl.idempotency_keys i where i.tenant_id = v_tenant and i.key = p_idempotency_key;
      if v_idem.request_hash <> v_hash then
        raise exception 'this idempotency_key was used for a different call' using errcode = 'AT409', hint = 'idempotency_key_reused';
      end if;
      return jsonb_build_object('http_status', v_idem.http_status, 'body', v_idem.response, 'replayed', true);
    end if;
  end if;

  select * into v_tenant_row from atl.tenants t where t.id = v_tenant;
  if v_domain !~ '^[a-z0-9][a-z0-9_.-]{0,62}$'
     or (v_tenant_row.allowed_domains is not null and v_domain <> all (v_tenant_row.allowed_domains)) then
    raise exception 'domain % is not accepted by this tenant', v_domain using errcode = 'AT400', hint = 'domain_not_allowed';
  end if;
  select * into v_policy from atl.tool_policies p where p.tenant_id = v_tenant and p.tool_name = p_tool;
  -- 'L0' < 'L1' < ... < 'L4' as text.
  v_level := greatest(coalesce(v_policy.trust_level, v_tenant_row.default_trust_level, 'L3'), coalesce(p_trust_level, 'L0'));
  -- An L4 call always needs two distinct people, whatever a policy says.
  v_required := case v_level when 'L4' then greatest(coalesce(v_policy.required_approvals, 2), 2)
                else coalesce(v_policy.required_approvals, 1) end;

  if v_mode = 'live' and not coalesce(p_live_enabled, false) then
    v_refusal := 'live_disabled';
    v_message := 'live mode is switched off (LIVE_ENABLED=false); use dry_run';
    v_result := atl._gate_record(v_tenant, v_actor.id, 403, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
  elsif v_mode = 'live' and v_policy.endpoint_url is null then
    v_refusal := 'no_endpoint';
    v_message := 'live mode needs an endpoint_url in this tool''s policy';
    v_result := atl._gate_record(v_tenant, v_actor.id, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, p_approval_request_id, null, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
  elsif v_level in ('L0', 'L1', 'L2') then
    if v_level = 'L2' then
      v_sandbox := 'sbx_' || replace(gen_random_uuid()::text, '-', '');
    end if;
    v_result := atl._gate_record(v_tenant, v_actor.id, 200, jsonb_build_object('status', v_ok), 'ok', v_ok,
      p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, null, v_sandbox, v_trace, v_mode,
      v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
  elsif p_approval_request_id is null then
    -- Hold the exact call for humans.
    insert into atl.approval_requests (tenant_id, domain, agent_id, tool_name, action_type, action_payload,
      trust_level, requested_by, requested_by_key_id, trace_id, expires_at, auto_approve_eligible,
      required_approvals, mode, endpoint_url)
    values (v_tenant, v_domain, p_agent_id, p_tool,
      'COMMIT_' || upper(regexp_replace(p_tool, '[^A-Za-z0-9]+', '_', 'g')),
      jsonb_build_object('tool', p_tool, 'args', v_args), v_level, v_actor.subject, v_actor.id, v_trace,
      now() + make_interval(secs => coalesce(v_policy.approval_ttl_seconds, 3600)),
      v_level = 'L3' and coalesce(v_policy.auto_approve_eligible, false), v_required, v_mode,
      case v_mode when 'live' then v_policy.endpoint_url end)
    returning * into v_req;
    perform atl._change_append('approval', v_req.id::text, 'created',
      atl._approval_state(v_req) || atl._approval_terms(v_req), v_actor.id, v_actor.subject);
    if v_req.auto_approve_eligible then
      insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by, reason, decided_by_role)
      values (v_tenant, v_req.id, 'APPROVE', 'system:auto-approve', 'policy marks this L3 tool auto-approve eligible', 'system')
      returning id, created_at into v_auto_id, v_auto_at;
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id
      returning * into v_req;
      perform atl._change_append('approval', v_req.id::text, 'decided', atl._approval_state(v_req)
        || jsonb_build_object('decision_id', v_auto_id, 'decision', 'APPROVE', 'decided_by', 'system:auto-approve',
                              'decided_by_key_id', null, 'reason', 'policy marks this L3 tool auto-approve eligible',
                              'decided_by_role', 'system', 'created_at', v_auto_at),
        null, 'system:auto-approve');
      perform atl._change_append('approval', v_req.id::text, 'consumed', atl._approval_state(v_req), v_actor.id, v_actor.subject);
      v_result := atl._gate_record(v_tenant, v_actor.id, 200, jsonb_build_object('status', v_ok, 'auto_approved', true),
        'ok', v_ok, p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    else
      v_result := atl._gate_record(v_tenant, v_actor.id, 202,
        jsonb_build_object('status', 'pending_approval', 'expires_at', v_req.expires_at,
                           'required_approvals', v_req.required_approvals),
        'pending_approval', 'pending_approval',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null);
    end if;
  else
    -- Run on an approval. The row lock makes one of two concurrent calls win
    -- and the other see it consumed.
    select * into v_req from atl.approval_requests r
    where r.tenant_id = v_tenant and r.id = p_approval_request_id
    for update;
    if not found then
      raise exception 'approval request not found' using errcode = 'AT404', hint = 'approval_not_found';
    end if;
    if v_req.status <> 'APPROVED' then
      v_refusal := 'approval_not_approved';
      v_message := format('approval request is %s', v_req.status);
    elsif v_req.consumed_at is not null then
      v_refusal := 'approval_consumed';
      v_message := 'this approval has already been used; an approval runs once';
    elsif v_req.expires_at <= clock_timestamp() then
      v_refusal := 'approval_expired';
      v_message := format('this approval expired at %s', v_req.expires_at);
    elsif v_req.agent_id <> p_agent_id then
      v_refusal := 'approval_agent_mismatch';
      v_message := 'the approval was given to another agent';
    -- The same text, not just equal jsonb (100 and 100.0 are equal but forward differently).
    elsif v_req.action_payload::text <> jsonb_build_object('tool', p_tool, 'args', v_args)::text then
      v_refusal := 'approval_payload_mismatch';
      v_message := 'the approval was given for a different tool or args';
    elsif v_req.domain <> v_domain or v_req.mode <> v_mode then
      v_refusal := 'approval_payload_mismatch';
      v_message := format('the approval was given for domain %s in mode %s', v_req.domain, v_req.mode);
    elsif v_req.mode = 'live' and v_req.endpoint_url is distinct from v_policy.endpoint_url then
      v_refusal := 'approval_stale';
      v_message := 'the tool''s endpoint changed since the approval; ask again';
    elsif v_level > v_req.trust_level or v_required > v_req.approvals then
      v_refusal := 'approval_stale';
      v_message := format('the policy now asks for %s with %s approvals; this approval gave %s with %s; ask again',
                          v_level, v_required, v_req.trust_level, v_req.approvals);
    end if;
    if v_refusal is not null then
      v_result := atl._gate_record(v_tenant, v_actor.id, 409, atl._gate_refusal(v_refusal, v_message), 'denied', 'refused',
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, v_refusal);
    else
      update atl.approval_requests r set consumed_at = clock_timestamp()
      where r.tenant_id = v_tenant and r.id = v_req.id
      returning * into v_req;
      perform atl._change_append('approval', v_req.id::text, 'consumed', atl._approval_state(v_req), v_actor.id, v_actor.subject);
      v_result := atl._gate_record(v_tenant, v_actor.id, 200, jsonb_build_object('status', v_ok), 'ok', v_ok,
        p_agent_id, p_workflow, v_level, v_stage, p_tool, v_args, v_req.id, null, v_trace, v_mode,
        v_domain, p_route, p_user_id, p_latency_ms, null, v_mode <> 'live');
    end if;
  end if;

  if v_mode = 'live' and (v_result ->> 'http_status')::int = 200 then
    v_result := v_result || jsonb_build_object('live', jsonb_build_object('endpoint_url', v_policy.endpoint_url,
                                                 'event_id', v_result -> 'body' ->> 'event_id', 'args', v_args));
  end if;
  if p_idempotency_key is not null then
    if (v_result ->> 'http_status')::int < 300 then
      update atl.idempotency_keys i set http_status = (v_result ->> 'http_status')::int, response = v_result -> 'body'
      where i.tenant_id = v_tenant and i.key = p_idempotency_key;
    else
      -- A refusal is not remembered: the same key may succeed once the approval arrives.
      delete from atl.idempotency_keys i where i.tenant_id = v_tenant and i.key = p_idempotency_key;
    end if;
  end if;
  return v_result;
end $$;
comment on function atl.gate_execute(text, text, jsonb, text, text, text, text, text, uuid, text, text, text, boolean, text, integer) is
  'The gate, as the acting agent key (as itself or one of its agents, else AT403 agent_mismatch): decides one tool call (L0-L2 pass, L3/L4 held, or run once on an approval bound to this agent, tool, args, domain and mode while the policy asks no more: approval_stale), records its event (source gate) and audit row, honours idempotency keys. Returns {"http_status", "body"[, "live"]}; live.args is the canonical text to forward.';
