-- Eval runs and behavioural drift, scored in SQL.

-- An eval run as the API shows it (results are fetched with the run itself only).
create function atl._eval_run_json(r atl.eval_runs, p_with_results boolean default false) returns jsonb
language sql stable
as $$
  select jsonb_build_object('id', r.id, 'suite_name', r.suite_name, 'model_id', r.model_id, 'provider', r.provider,
    'status', r.status, 'baseline_run_id', r.baseline_run_id, 'drift_threshold', r.drift_threshold,
    'drift_score', r.drift_score, 'drift_metadata', r.drift_metadata, 'pass_rate', r.pass_rate,
    'case_count', r.case_count, 'error', r.error, 'started_at', r.started_at, 'finished_at', r.finished_at)
    || case when p_with_results then jsonb_build_object('results', r.results) else '{}'::jsonb end
$$;
comment on function atl._eval_run_json(atl.eval_runs, boolean) is 'Private: an eval run as JSON, with its per-case results when asked.';

-- Drift between two result sets: over the union of case ids, a case on one
-- side only or with a flipped pass/fail counts 1, else |score difference|;
-- the score is 100 x the mean, two decimals; no cases: 0.
create function atl.eval_drift(p_results jsonb, p_baseline jsonb) returns jsonb
language sql immutable parallel safe
as $$
  with cases as (
    select coalesce(r.key, b.key) as case_id, r.value as run, b.value as baseline,
           case
             when r.key is null or b.key is null then 1::numeric
             when (r.value ->> 'passed')::boolean <> (b.value ->> 'passed')::boolean then 1::numeric
             else abs((r.value ->> 'score')::numeric - (b.value ->> 'score')::numeric)
           end as distance
    from jsonb_each(coalesce(p_results, '{}')) r
    full join jsonb_each(coalesce(p_baseline, '{}')) b on b.key = r.key
  )
  select jsonb_build_object(
    'drift_score', coalesce(round(100 * avg(distance), 2), 0),
    'union_count', count(*),
    'changed_count', count(*) filter (where distance > 0),
    'changed', coalesce(jsonb_agg(jsonb_build_object('case_id', case_id, 'distance', distance,
                                                     'baseline', baseline, 'run', run)
                                  order by distance desc, case_id) filter (where distance > 0), '[]'::jsonb))
  from cases
$$;
comment on function atl.eval_drift(jsonb, jsonb) is
  'Drift of per-case results against a baseline: 100 x mean distance over the union of cases (1 for a one-sided case or flipped pass/fail, else |score difference|), with the changed cases.';

-- Starts a run of the current tenant.
create function atl.eval_run_start(
  p_suite_name text, p_model_id text, p_provider text, p_baseline_run_id uuid default null,
  p_drift_threshold numeric default 10)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_baseline atl.eval_runs;
  v_run atl.eval_runs;
begin
  if p_baseline_run_id is not null then
    select * into v_baseline from atl.eval_runs r where r.tenant_id = v_tenant and r.id = p_baseline_run_id;
    if not found then
      raise exception 'baseline run not found' using errcode = 'AT404', hint = 'baseline_not_found';
    end if;
    if v_baseline.suite_name <> p_suite_name then
      raise exception 'the baseline run belongs to suite %', v_baseline.suite_name using errcode = 'AT400', hint = 'baseline_suite_mismatch';
    end if;
  end if;
  insert into atl.eval_runs (tenant_id, suite_name, model_id, provider, baseline_run_id, drift_threshold)
  values (v_tenant, p_suite_name, p_model_id, p_provider, p_baseline_run_id, coalesce(p_drift_threshold, 10))
  returning * into v_run;
  return atl._eval_run_json(v_run);
end $$;
comment on function atl.eval_run_start(text, text, text, uuid, numeric) is
  'Starts an eval run (status running) of a suite against a model/provider, optionally with a baseline run of the same suite and a drift threshold (default 10).';

-- Completes a run: scores drift against the baseline (the given run, else the
-- suite's pinned run, else its latest passed run), failed over the threshold.
-- p_status 'error' records an error instead.
create function atl.eval_run_complete(p_run_id uuid, p_results jsonb default null, p_status text default null,
                                      p_error text default null)
returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_run atl.eval_runs;
  v_baseline atl.eval_runs;
  v_source text := 'none';
  v_drift jsonb;
  v_bad text;
  v_cases integer;
begin
  select * into v_run from atl.eval_runs r where r.tenant_id = v_tenant and r.id = p_run_id for update;
  if not found then
    raise exception 'eval run not found' using errcode = 'AT404', hint = 'run_not_found';
  end if;
  if v_run.status <> 'running' then
    raise exception 'this run is already %', v_run.status using errcode = 'AT409', hint = 'run_not_running';
  end if;
  if p_status = 'error' then
    update atl.eval_runs r set status = 'error', error = left(coalesce(p_error, 'error'), 2000), finished_at = clock_timestamp()
    where r.tenant_id = v_tenant and r.id = p_run_id returning * into v_run;
    return atl._eval_run_json(v_run);
  elsif p_status is not null then
    raise exception 'status may only be error; passed or failed is decided by drift' using errcode = 'AT400', hint = 'validation_failed';
  end if;

  if p_results is null or jsonb_typeof(p_results) <> 'object' then
    raise exception 'results must be an object of {"case_id": {"passed": bool, "score": 0..1}}' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  select count(*) into v_cases from jsonb_object_keys(p_results);
  if v_cases > 10000 then
    raise exception 'at most 10000 cases per run' using errcode = 'AT400', hint = 'validation_failed';
  end if;
  select e.key into v_bad from jsonb_each(p_results) e
  where jsonb_typeof(e.value) <> 'object'
     or jsonb_typeof(e.value -> 'passed') is distinct from 'boolean'
     or jsonb_typeof(e.value -> 'score') is distinct from 'number'
     or (e.value ->> 'score')::numeric not between 0 and 1
     or char_length(e.key) not between 1 and 200
  limit 1;
  if found then
    raise exception 'case %: each result must be {"passed": true|false, "score": 0..1}', v_bad using errcode = 'AT400', hint = 'validation_failed';
  end if;

  if v_run.baseline_run_id is not null then
    select * into v_baseline from atl.eval_runs r where r.tenant_id = v_tenant and r.id = v_run.baseline_run_id;
    v_source := 'given';
  else
    select r.* into v_baseline from atl.eval_baselines b
    join atl.eval_runs r on r.tenant_id = b.tenant_id and r.id = b.run_id
    where b.tenant_id = v_tenant and b.suite_name = v_run.suite_name;
    if found then
      v_source := 'pinned';
    else
      select * into v_baseline from atl.eval_runs r
      where r.tenant_id = v_tenant and r.suite_name = v_run.suite_name and r.status = 'passed' and r.id <> p_run_id
      order by r.finished_at desc, r.id desc limit 1;
      if found then
        v_source := 'latest_passed';
      end if;
    end if;
  end if;

  if v_source = 'none' then
    v_drift := jsonb_build_object('drift_score', 0, 'union_count', v_cases, 'changed_count', 0, 'changed', '[]'::jsonb);
  else
    v_drift := atl.eval_drift(p_results, v_baseline.results);
  end if;

  update atl.eval_runs r set
    results = p_results,
    baseline_run_id = v_baseline.id,
    drift_score = (v_drift ->> 'drift_score')::numeric,
    status = case when (v_drift ->> 'drift_score')::numeric > r.drift_threshold then 'failed' else 'passed' end,
    case_count = v_cases,
    pass_rate = (select round(avg(case when (e.value ->> 'passed')::boolean then 1 else 0 end), 4) from jsonb_each(p_results) e),
    drift_metadata = jsonb_build_object('baseline_run_id', v_baseline.id, 'baseline_source', v_source,
      'threshold', r.drift_threshold, 'case_count', v_cases,
      'baseline_case_count', (select count(*) from jsonb_object_keys(coalesce(v_baseline.results, '{}'))))
      || (v_drift - 'drift_score'),
    finished_at = clock_timestamp()
  where r.tenant_id = v_tenant and r.id = p_run_id
  returning * into v_run;
  return atl._eval_run_json(v_run);
end $$;
comment on function atl.eval_run_complete(uuid, jsonb, text, text) is
  'Completes a running eval run with per-case results: drift against the given, pinned or latest passed baseline; failed over the threshold, else passed. p_status => ''error'' records an error instead.';

-- One run with its results.
create function atl.eval_run_get(p_run_id uuid) returns jsonb
language plpgsql stable
as $$
declare
  v_run atl.eval_runs;
begin
  select * into v_run from atl.eval_runs r where r.tenant_id = atl.current_tenant() and r.id = p_run_id;
  if not found then
    raise exception 'eval run not found' using errcode = 'AT404', hint = 'run_not_found';
  end if;
  return atl._eval_run_json(v_run, true);
end $$;
comment on function atl.eval_run_get(uuid) is 'One eval run of the current tenant with its results (AT404 run_not_found otherwise).';

-- The current tenant's runs, newest first, keyset-paged.
create function atl.eval_run_list(
  p_suite_name text default null, p_model_id text default null, p_provider text default null,
  p_status text default null, p_before_started_at timestamptz default null, p_before_id uuid default null,
  p_limit integer default 50)
returns setof jsonb
language sql stable
as $$
  select atl._eval_run_json(r) from atl.eval_runs r
  where r.tenant_id = atl.current_tenant()
    and (p_suite_name is null or r.suite_name = p_suite_name)
    and (p_model_id is null or r.model_id = p_model_id)
    and (p_provider is null or r.provider = p_provider)
    and (p_status is null or r.status = p_status)
    and (p_before_started_at is null
         or (r.started_at, r.id) < (p_before_started_at, coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)))
  order by r.started_at desc, r.id desc
  limit least(greatest(coalesce(p_limit, 50), 1), 1000)
$$;
comment on function atl.eval_run_list(text, text, text, text, timestamptz, uuid, integer) is
  'The current tenant''s eval runs newest first, filtered by suite, model, provider, status; keyset cursor (started_at, id).';

-- Pins a finished run as its suite's baseline.
create function atl.eval_baseline_pin(p_suite_name text, p_run_id uuid) returns jsonb
language plpgsql volatile
as $$
declare
  v_tenant text := atl._require_tenant();
  v_run atl.eval_runs;
begin
  select * into v_run from atl.eval_runs r where r.tenant_id = v_tenant and r.id = p_run_id;
  if not found then
    raise exception 'eval run not found' using errcode = 'AT404', hint = 'run_not_found';
  end if;
  if v_run.suite_name <> p_suite_name then
    raise exception 'the run belongs to suite %', v_run.suite_name using errcode = 'AT400', hint = 'baseline_suite_mismatch';
  end if;
  if v_run.status not in ('passed', 'failed') then
    raise exception 'only a completed run can be a baseline' using errcode = 'AT409', hint = 'run_not_completed';
  end if;
  insert into atl.eval_baselines as b (tenant_id, suite_name, run_id) values (v_tenant, p_suite_name, p_run_id)
  on conflict (tenant_id, suite_name) do update set run_id = excluded.run_id, pinned_at = now();
  return jsonb_build_object('suite_name', p_suite_name, 'run_id', p_run_id);
end $$;
comment on function atl.eval_baseline_pin(text, uuid) is 'Pins a completed run as the baseline of its suite; later runs without a baseline_run_id compare with it.';

revoke all on all functions in schema atl from public;
grant execute on function atl._eval_run_json(atl.eval_runs, boolean), atl.eval_drift(jsonb, jsonb),
  atl.eval_run_start(text, text, text, uuid, numeric), atl.eval_run_complete(uuid, jsonb, text, text),
  atl.eval_run_get(uuid), atl.eval_run_list(text, text, text, text, timestamptz, uuid, integer),
  atl.eval_baseline_pin(text, uuid)
  to {{ .app_role }};

---- create above / drop below ----

drop function atl.eval_baseline_pin(text, uuid);
drop function atl.eval_run_list(text, text, text, text, timestamptz, uuid, integer);
drop function atl.eval_run_get(uuid);
drop function atl.eval_run_complete(uuid, jsonb, text, text);
drop function atl.eval_run_start(text, text, text, uuid, numeric);
drop function atl.eval_drift(jsonb, jsonb);
drop function atl._eval_run_json(atl.eval_runs, boolean);
