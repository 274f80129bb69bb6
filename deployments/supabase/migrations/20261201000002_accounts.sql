-- Keys with a budget per period, an expiry and a list of allowed models, checked and held in
-- the same statement as the balance; debt (refunds past what was left); usage rollups kept by
-- the settle itself, so /billing/usage never scans the ledger.

alter table api_keys
    add column if not exists budget_amount numeric(20, 8)
        check (budget_amount is null or budget_amount >= 0),
    add column if not exists budget_period text
        check (budget_period is null or budget_period in ('day', 'week', 'month', 'total')),
    -- budget_spent counts what was charged since budget_window (the start of the current period).
    add column if not exists budget_window timestamptz,
    add column if not exists budget_spent numeric(20, 8) not null default 0,
    -- Held for this key's calls in flight; part of users.reserved.
    add column if not exists budget_held numeric(20, 8) not null default 0 check (budget_held >= 0),
    add column if not exists expires_at timestamptz,
    add column if not exists models text[];

-- What refunds took back beyond the balance; later credits pay it first. Blocks calls while > 0.
alter table users add column if not exists debt numeric(20, 8) not null default 0 check (debt >= 0);

alter table reservations add column if not exists key_id text;
alter table requests add column if not exists key_id text;

create table if not exists usage_rollups (
    user_id           text not null references users (id),
    day               date not null,
    model             text not null,
    key_id            text not null default '',
    requests          bigint not null default 0,
    prompt_tokens     bigint not null default 0,
    completion_tokens bigint not null default 0,
    cost              numeric(20, 8) not null default 0,
    primary key (user_id, day, model, key_id)
);

-- Start of the budget period containing p_at, on UTC calendar boundaries (weeks start Monday).
create or replace function key_budget_window(p_period text, p_at timestamptz)
returns timestamptz
language sql immutable as $$
    select case
        when p_period is null then null
        when p_period = 'total' then '-infinity'::timestamptz
        else date_trunc(p_period, p_at at time zone 'UTC') at time zone 'UTC'
    end;
$$;

-- Statuses beyond the old ones: 'key_revoked', 'key_expired', 'model_not_allowed',
-- 'key_budget' (the key's budget, not the balance, cannot cover the call) and 'debt'.
drop function if exists billing_reserve(text, text, numeric, numeric, integer, integer, integer, text);
create or replace function billing_reserve(
    p_user text,
    p_request_id text,
    p_prompt_cost numeric,
    p_output_price numeric,
    p_max_tokens integer,
    p_model_max_output integer,
    p_ttl_seconds integer,
    p_model text default null,
    p_key_id text default null
) returns table (status text, max_tokens integer, hold numeric, available numeric)
language plpgsql as $$
declare
    v_available numeric;
    v_debt numeric;
    v_key record;
    v_window timestamptz;
    v_spent numeric;
    v_key_available numeric;
    v_limit numeric;
    v_short text := 'insufficient';
    v_afford bigint;
    v_tokens bigint;
    v_hold numeric;
begin
    perform set_config('synchronous_commit', 'off', true);
    -- Lock order everywhere: the user's row, then the key's.
    select u.balance - u.reserved, u.debt into v_available, v_debt
        from users u where u.id = p_user for update;
    if not found then
        return query select 'no_account'::text, null::integer, 0::numeric, 0::numeric;
        return;
    end if;
    if p_key_id is not null then
        select k.* into v_key from api_keys k where k.id = p_key_id and k.user_id = p_user for update;
        if not found or v_key.revoked_at is not null then
            return query select 'key_revoked'::text, null::integer, 0::numeric, 0::numeric;
            return;
        end if;
        if v_key.expires_at is not null and v_key.expires_at <= now() then
            return query select 'key_expired'::text, null::integer, 0::numeric, 0::numeric;
            return;
        end if;
        if v_key.models is not null and (p_model is null or not (p_model = any (v_key.models))) then
            return query select 'model_not_allowed'::text, null::integer, 0::numeric, 0::numeric;
            return;
        end if;
        if v_key.budget_amount is not null then
            v_window := key_budget_window(v_key.budget_period, now());
            v_spent := case when v_key.budget_window = v_window then v_key.budget_spent else 0 end;
            v_key_available := greatest(v_key.budget_amount - v_spent - v_key.budget_held, 0);
        end if;
    end if;
    if v_debt > 0 then
        return query select 'debt'::text, 0, 0::numeric, v_available;
        return;
    end if;
    v_limit := v_available;
    if v_key_available is not null and v_key_available < v_available then
        v_limit := v_key_available;
        v_short := 'key_budget';
    end if;
    if v_limit <= 0 or v_limit < p_prompt_cost then
        return query select v_short, 0, 0::numeric, v_limit;
        return;
    end if;
    if p_output_price > 0 then
        v_afford := floor((v_limit - p_prompt_cost) / p_output_price);
    end if;
    if p_max_tokens is not null then
        if v_afford is not null and p_max_tokens > v_afford then
            return query select v_short, least(v_afford, 2147483647)::integer, 0::numeric, v_limit;
            return;
        end if;
        v_tokens := p_max_tokens;
    else
        v_tokens := least(v_afford, p_model_max_output);
        if v_tokens is not null and v_tokens < 1 then
            return query select v_short, 0, 0::numeric, v_limit;
            return;
        end if;
    end if;
    v_hold := ceil((p_prompt_cost + coalesce(v_tokens, 0) * p_output_price) * 100000000) / 100000000;
    if v_hold > v_limit then
        v_hold := v_limit;
    end if;
    insert into reservations (request_id, user_id, amount, expires_at, key_id)
        values (p_request_id, p_user, v_hold, now() + make_interval(secs => p_ttl_seconds), p_key_id)
        on conflict (request_id) do nothing;
    if not found then
        return query select 'duplicate'::text, null::integer, 0::numeric, v_limit;
        return;
    end if;
    insert into requests (request_id, user_id, model, status, hold, key_id)
        values (p_request_id, p_user, p_model, 'held', v_hold, p_key_id)
        on conflict (request_id) do nothing;
    update users u set reserved = u.reserved + v_hold where u.id = p_user;
    if p_key_id is not null then
        update api_keys k set budget_held = k.budget_held + v_hold,
            budget_spent = coalesce(v_spent, k.budget_spent),
            budget_window = coalesce(v_window, k.budget_window)
            where k.id = p_key_id;
    end if;
    return query select 'ok'::text, least(v_tokens, 2147483647)::integer, v_hold, v_limit;
end;
$$;

-- As before, plus: the charge counts against the key's budget (never past it, as never past
-- the balance) and lands in the usage rollup of its user, day, model and key.
drop function if exists billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb);
create or replace function billing_settle(
    p_user text,
    p_request_id text,
    p_cost numeric,
    p_model text,
    p_prompt_tokens integer,
    p_completion_tokens integer,
    p_description text,
    p_deployment text default null,
    p_usage jsonb default null
) returns table (status text, charged numeric, balance numeric)
language plpgsql as $$
declare
    v_hold numeric := 0;
    v_key text;
    v_k record;
    v_window timestamptz;
    v_spent numeric;
    v_balance numeric;
    v_reserved numeric;
    v_cost numeric;
    v_charge numeric;
    v_description text;
    v_tx bigint;
begin
    delete from reservations r where r.request_id = p_request_id and r.user_id = p_user
        returning r.amount, r.key_id into v_hold, v_key;
    v_hold := coalesce(v_hold, 0);
    select u.balance, u.reserved into v_balance, v_reserved from users u where u.id = p_user for update;
    if not found then
        raise exception 'user % not found', p_user using errcode = 'no_data_found';
    end if;
    if v_key is null then
        -- The hold expired and was swept: the call record still knows the key.
        select q.key_id into v_key from requests q where q.request_id = p_request_id and q.user_id = p_user;
    end if;
    v_cost := round(p_cost, 8);
    v_charge := greatest(least(v_cost, v_balance - (v_reserved - v_hold)), 0);
    if v_key is not null then
        select k.* into v_k from api_keys k where k.id = v_key for update;
        if found and v_k.budget_amount is not null then
            v_window := key_budget_window(v_k.budget_period, now());
            v_spent := case when v_k.budget_window = v_window then v_k.budget_spent else 0 end;
            v_charge := greatest(least(v_charge,
                v_k.budget_amount - v_spent - (v_k.budget_held - v_hold)), 0);
        end if;
    end if;
    v_description := p_description;
    if v_charge < v_cost then
        v_description := p_description || ' (uncollected ' || (v_cost - v_charge)::text || ')';
    end if;
    insert into transactions (user_id, amount, kind, description, model, request_id,
                              prompt_tokens, completion_tokens)
        values (p_user, -v_charge, 'charge', v_description, p_model, p_request_id,
                p_prompt_tokens, p_completion_tokens)
        on conflict (request_id) where kind = 'charge' do nothing
        returning id into v_tx;
    if v_tx is null then
        update users u set reserved = u.reserved - v_hold where u.id = p_user;
        if v_key is not null then
            update api_keys k set budget_held = greatest(k.budget_held - v_hold, 0) where k.id = v_key;
        end if;
        return query select 'duplicate'::text,
            (select -t.amount from transactions t where t.request_id = p_request_id and t.kind = 'charge'),
            (select u.balance from users u where u.id = p_user);
        return;
    end if;
    update users u set balance = u.balance - v_charge, reserved = u.reserved - v_hold
        where u.id = p_user returning u.balance into v_balance;
    if v_key is not null then
        update api_keys k set budget_held = greatest(k.budget_held - v_hold, 0),
            budget_spent = coalesce(v_spent, 0) + v_charge,
            budget_window = v_window
            where k.id = v_key;
    end if;
    insert into requests as q (request_id, user_id, model, deployment, status, hold, cost,
                               uncollected, usage, settled_at, key_id)
        values (p_request_id, p_user, p_model, p_deployment, 'charged', v_hold, v_charge,
                v_cost - v_charge, p_usage, now(), v_key)
        on conflict (request_id) do update set
            status = 'charged', deployment = excluded.deployment, cost = excluded.cost,
            uncollected = excluded.uncollected, usage = excluded.usage, settled_at = now(),
            model = coalesce(q.model, excluded.model);
    insert into usage_rollups as r (user_id, day, model, key_id, requests, prompt_tokens,
                                    completion_tokens, cost)
        values (p_user, (now() at time zone 'UTC')::date, coalesce(p_model, ''), coalesce(v_key, ''),
                1, coalesce(p_prompt_tokens, 0), coalesce(p_completion_tokens, 0), v_charge)
        on conflict (user_id, day, model, key_id) do update set
            requests = r.requests + 1,
            prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = r.completion_tokens + excluded.completion_tokens,
            cost = r.cost + excluded.cost;
    return query select 'charged'::text, v_charge, v_balance;
end;
$$;

create or replace function billing_release(p_user text, p_request_id text)
returns boolean
language plpgsql as $$
declare
    v_hold numeric;
    v_key text;
begin
    perform set_config('synchronous_commit', 'off', true);
    delete from reservations r where r.request_id = p_request_id and r.user_id = p_user
        returning r.amount, r.key_id into v_hold, v_key;
    if v_hold is null then
        return false;
    end if;
    update users u set reserved = u.reserved - v_hold where u.id = p_user;
    if v_key is not null then
        update api_keys k set budget_held = greatest(k.budget_held - v_hold, 0) where k.id = v_key;
    end if;
    update requests q set status = 'released', settled_at = now()
        where q.request_id = p_request_id and q.status = 'held';
    return true;
end;
$$;

create or replace function billing_sweep_expired()
returns integer
language plpgsql as $$
declare
    v_count integer;
begin
    with expired as (
        delete from reservations r where r.expires_at < now()
        returning r.request_id, r.user_id, r.amount, r.key_id
    ), marked as (
        update requests q set status = 'released', settled_at = now()
        from expired e where q.request_id = e.request_id and q.status = 'held'
    ), per_user as (
        select e.user_id, sum(e.amount) as total, count(*) as n from expired e group by e.user_id
    ), per_key as (
        select e.key_id, sum(e.amount) as total from expired e where e.key_id is not null
        group by e.key_id
    ), keys as (
        update api_keys k set budget_held = greatest(k.budget_held - p.total, 0)
        from per_key p where k.id = p.key_id
    ), upd as (
        update users u set reserved = u.reserved - p.total from per_user p where u.id = p.user_id
        returning p.n
    )
    select coalesce(sum(upd.n), 0)::integer into v_count from upd;
    return v_count;
end;
$$;

-- Usage between two days (inclusive start, exclusive end), grouped by 'day', 'model' or 'key'.
create or replace function billing_usage(p_user text, p_start date, p_end date, p_group text)
returns table (grp text, requests bigint, prompt_tokens bigint, completion_tokens bigint, cost numeric)
language sql stable as $$
    select case p_group when 'day' then r.day::text when 'model' then r.model else r.key_id end,
           sum(r.requests)::bigint, sum(r.prompt_tokens)::bigint, sum(r.completion_tokens)::bigint,
           sum(r.cost)
    from usage_rollups r
    where r.user_id = p_user and r.day >= p_start and r.day < p_end
    group by 1 order by 1;
$$;

-- A key's budget, expiry and model list (null clears each); a new budget counts from now.
create or replace function billing_set_key_policy(
    p_user text, p_key_id text, p_budget numeric, p_period text, p_expires_at timestamptz,
    p_models text[]
) returns boolean
language plpgsql as $$
begin
    update api_keys k set budget_amount = round(p_budget, 8), budget_period = p_period,
        budget_spent = 0, budget_window = key_budget_window(p_period, now()),
        expires_at = p_expires_at, models = p_models
        where k.id = p_key_id and k.user_id = p_user;
    return found;
end;
$$;

-- Keys by owner or by hash, with what they spent in the current period.
create or replace function billing_api_keys(p_user text default null, p_key_hash text default null)
returns table (id text, user_id text, name text, revoked_at timestamptz, rpm_limit integer,
               tpm_limit integer, budget_amount numeric, budget_period text, budget_spent numeric,
               expires_at timestamptz, models text[], created_at timestamptz)
language sql stable as $$
    select k.id, k.user_id, k.name, k.revoked_at, k.rpm_limit, k.tpm_limit, k.budget_amount,
           k.budget_period,
           case when k.budget_window = key_budget_window(k.budget_period, now())
                then k.budget_spent else 0 end,
           k.expires_at, k.models, k.created_at
    from api_keys k
    where (p_user is null or k.user_id = p_user) and (p_key_hash is null or k.key_hash = p_key_hash)
      and (p_user is not null or p_key_hash is not null)
    order by k.created_at, k.id;
$$;

alter table usage_rollups enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on usage_rollups from %I', r);
            execute format('revoke execute on function '
                'billing_reserve(text, text, numeric, numeric, integer, integer, integer, text, text), '
                'billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb), '
                'billing_usage(text, date, date, text), '
                'billing_set_key_policy(text, text, numeric, text, timestamptz, text[]), '
                'billing_api_keys(text, text), '
                'key_budget_window(text, timestamptz) from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function
    billing_reserve(text, text, numeric, numeric, integer, integer, integer, text, text),
    billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb),
    billing_usage(text, date, date, text),
    billing_set_key_policy(text, text, numeric, text, timestamptz, text[]),
    billing_api_keys(text, text),
    key_budget_window(text, timestamptz) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on usage_rollups to service_role;
        grant execute on function
            billing_reserve(text, text, numeric, numeric, integer, integer, integer, text, text),
            billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb),
            billing_usage(text, date, date, text),
            billing_set_key_policy(text, text, numeric, text, timestamptz, text[]),
            billing_api_keys(text, text),
            key_budget_window(text, timestamptz) to service_role;
    end if;
end;
$$;
