create or replace function atl._chain_row_hash(p_table text, p_row jsonb, p_prev bytea) returns bytea
language sql immutable parallel safe
as $$
  select sha256(p_prev || convert_to(
    ((p_row - 'row_hash' - 'prev_hash' - 'created_at'
       - array(select k from unnest(array['source', 'actor_key_id', 'actor_subject', 'claimed_user_id']) k
               where p_row -> k = 'null'::jsonb))
      || jsonb_build_object('table', p_table,
           'created_at_us', (extract(epoch from (p_row ->> 'created_at')::timestamptz) * 1000000)::bigint))::text,
    'UTF8'))
$$;
comment on function atl._chain_row_hash(text, jsonb, bytea) is
  'Private: SHA-256 of the previous hash and a chained row''s canonical encoding (columns added later are left out while NULL).';
