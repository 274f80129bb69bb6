-- The record of each call: what was held, then charged or released, with the usage it was
-- charged on and the deployment that answered (GET /billing/requests/{request_id}).
-- Written by the same functions that move the money, so a call still costs 2 round trips.

create table if not exists requests (
    request_id  text primary key,
    user_id     text not null references users (id),
    model       text,
    deployment  text,
    status      text not null check (status in ('held', 'charged', 'released')),
    hold        numeric(20, 8) not null default 0,
    cost        numeric(20, 8),
    uncollected numeric(20, 8) not null default 0,
    usage       jsonb,
    created_at  timestamptz not null default now(),
    settled_at  timestamptz
);
create index if not exists requests_user_idx on requests (user_id, created_at desc);

drop function if exists billing_reserve(text, text, numeric, numeric, integer, integer, integer);
create or replace function billing_reserve(
    p_user text,
    p_request_id text,
    p_prompt_cost numeric,
    p_output_price numeric,
    p_max_tokens integer,
    p_model_max_output integer,
    p_ttl_seconds integer,
    p_model text default null
) returns table (status text, max_tokens integer, hold numeric, available numeric)
language plpgsql as $$
declare
    v_available numeric;
    v_afford bigint;
    v_tokens bigint;
    v_hold numeric;
begin
    -- A hold lost in a database crash is harmless (the sweeper's job, done early; a charge
    -- still lands without it), so holds skip the wait for the WAL flush. Charges do not.
    perform set_config('synchronous_commit', 'off', true);
    select u.balance - u.reserved into v_available from users u where u.id = p_user for update;
    if not found then
        return query select 'no_account'::text, null::integer, 0::numeric, 0::numeric;
        return;
    end if;
    if v_available <= 0 or v_available < p_prompt_cost then
        return query select 'insufficient'::text, 0, 0::numeric, v_available;
        return;
    end if;
    if p_output_price > 0 then
        v_afford := floor((v_available - p_prompt_cost) / p_output_price);
    end if;
    if p_max_tokens is not null then
        if v_afford is not null and p_max_tokens > v_afford then
            return query select 'insufficient'::text, least(v_afford, 2147483647)::integer,
                0::numeric, v_available;
            return;
        end if;
        v_tokens := p_max_tokens;
    else
        v_tokens := least(v_afford, p_model_max_output);
        if v_tokens is not null and v_tokens < 1 then
            return query select 'insufficient'::text, 0, 0::numeric, v_available;
            return;
        end if;
    end if;
    v_hold := ceil((p_prompt_cost + coalesce(v_tokens, 0) * p_output_price) * 100000000) / 100000000;
    if v_hold > v_available then
        v_hold := v_available;
    end if;
    insert into reservations (request_id, user_id, amount, expires_at)
        values (p_request_id, p_user, v_hold, now() + make_interval(secs => p_ttl_seconds))
        on conflict (request_id) do nothing;
    if not found then
        return query select 'duplicate'::text, null::integer, 0::numeric, v_available;
        return;
    end if;
    insert into requests (request_id, user_id, model, status, hold)
        values (p_request_id, p_user, p_model, 'held', v_hold)
        on conflict (request_id) do nothing;
    update users u set reserved = u.reserved + v_hold where u.id = p_user;
    return query select 'ok'::text, least(v_tokens, 2147483647)::integer, v_hold, v_available;
end;
$$;

-- Charge the actual cost of a finished call and release the rest of its hold, once per
-- request id. Returns status 'charged' or 'duplicate'. A call whose hold already expired is
-- still charged. The charge never exceeds what the user has that is not held for other calls;
-- what it could not collect is written into the ledger row's description and the call record.
drop function if exists billing_settle(text, text, numeric, text, integer, integer, text);
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
    v_balance numeric;
    v_reserved numeric;
    v_cost numeric;
    v_charge numeric;
    v_description text;
    v_tx bigint;
begin
    delete from reservations r where r.request_id = p_request_id and r.user_id = p_user
        returning r.amount into v_hold;
    v_hold := coalesce(v_hold, 0);
    select u.balance, u.reserved into v_balance, v_reserved from users u where u.id = p_user for update;
    if not found then
        raise exception 'user % not found', p_user using errcode = 'no_data_found';
    end if;
    -- round() first: the ledger row and the balance must move by the same 8-place amount.
    v_cost := round(p_cost, 8);
    v_charge := greatest(least(v_cost, v_balance - (v_reserved - v_hold)), 0);
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
        -- Already charged: only give back a hold that a retried reserve may have left.
        update users u set reserved = u.reserved - v_hold where u.id = p_user;
        return query select 'duplicate'::text,
            (select -t.amount from transactions t where t.request_id = p_request_id and t.kind = 'charge'),
            (select u.balance from users u where u.id = p_user);
        return;
    end if;
    update users u set balance = u.balance - v_charge, reserved = u.reserved - v_hold
        where u.id = p_user returning u.balance into v_balance;
    insert into requests as q (request_id, user_id, model, deployment, status, hold, cost,
                               uncollected, usage, settled_at)
        values (p_request_id, p_user, p_model, p_deployment, 'charged', v_hold, v_charge,
                v_cost - v_charge, p_usage, now())
        on conflict (request_id) do update set
            status = 'charged', deployment = excluded.deployment, cost = excluded.cost,
            uncollected = excluded.uncollected, usage = excluded.usage, settled_at = now(),
            model = coalesce(q.model, excluded.model);
    return query select 'charged'::text, v_charge, v_balance;
end;
$$;

-- Give back a hold without charging (the call failed upstream). True if a hold was released.
create or replace function billing_release(p_user text, p_request_id text)
returns boolean
language plpgsql as $$
declare
    v_hold numeric;
begin
    perform set_config('synchronous_commit', 'off', true);  -- as for holds: losing it is harmless
    delete from reservations r where r.request_id = p_request_id and r.user_id = p_user
        returning r.amount into v_hold;
    if v_hold is null then
        return false;
    end if;
    update users u set reserved = u.reserved - v_hold where u.id = p_user;
    update requests q set status = 'released', settled_at = now()
        where q.request_id = p_request_id and q.status = 'held';
    return true;
end;
$$;

-- Release holds left by crashed workers. Returns how many were released.
create or replace function billing_sweep_expired()
returns integer
language plpgsql as $$
declare
    v_count integer;
begin
    with expired as (
        delete from reservations r where r.expires_at < now()
        returning r.request_id, r.user_id, r.amount
    ), marked as (
        update requests q set status = 'released', settled_at = now()
        from expired e where q.request_id = e.request_id and q.status = 'held'
    ), per_user as (
        select e.user_id, sum(e.amount) as total, count(*) as n from expired e group by e.user_id
    ), upd as (
        update users u set reserved = u.reserved - p.total from per_user p where u.id = p.user_id
        returning p.n
    )
    select coalesce(sum(upd.n), 0)::integer into v_count from upd;
    return v_count;
end;
$$;

-- One call's record, for its own user only.
create or replace function billing_request(p_user text, p_request_id text)
returns table (request_id text, status text, model text, deployment text, hold numeric,
               cost numeric, uncollected numeric, usage jsonb, created_at timestamptz,
               settled_at timestamptz)
language sql stable as $$
    select q.request_id, q.status, q.model, q.deployment, q.hold, q.cost, q.uncollected, q.usage,
           q.created_at, q.settled_at
    from requests q where q.request_id = p_request_id and q.user_id = p_user;
$$;

alter table requests enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on requests from %I', r);
            execute format('revoke execute on function '
                'billing_reserve(text, text, numeric, numeric, integer, integer, integer, text), '
                'billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb), '
                'billing_request(text, text) from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function
    billing_reserve(text, text, numeric, numeric, integer, integer, integer, text),
    billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb),
    billing_request(text, text) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on requests to service_role;
        grant execute on function
            billing_reserve(text, text, numeric, numeric, integer, integer, integer, text),
            billing_settle(text, text, numeric, text, integer, integer, text, text, jsonb),
            billing_request(text, text) to service_role;
    end if;
end;
$$;
