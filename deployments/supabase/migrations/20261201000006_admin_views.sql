-- The admin dashboard's spend over time: every account's usage rollups, grouped by day, model or
-- key (billing_usage is the same for one account). Only the service role may call it.

create or replace function billing_usage_all(p_start date, p_end date, p_group text)
returns table (grp text, requests bigint, prompt_tokens bigint, completion_tokens bigint, cost numeric)
language sql stable as $$
    select case p_group when 'day' then r.day::text when 'model' then r.model else r.key_id end,
           sum(r.requests)::bigint, sum(r.prompt_tokens)::bigint, sum(r.completion_tokens)::bigint,
           sum(r.cost)
    from usage_rollups r
    where r.day >= p_start and r.day < p_end
    group by 1 order by 1;
$$;

revoke execute on function billing_usage_all(date, date, text) from public;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke execute on function billing_usage_all(date, date, text) from %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function billing_usage_all(date, date, text) to service_role;
    end if;
end;
$$;
