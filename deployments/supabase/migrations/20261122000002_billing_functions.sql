-- The money logic. Each function is one round trip and one transaction; row locks on `users`
-- serialise everything that touches one user's balance, so there is no check-then-deduct race.

-- Create an account once, crediting its opening balance through the ledger.
create or replace function billing_ensure_user(p_user text, p_balance numeric)
returns table (user_id text, balance numeric, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    -- Rounded once, here: the ledger row and the balance must get the same 8-place amount.
    p_balance := round(p_balance, 8);
    insert into users (id) values (p_user) on conflict (id) do nothing;
    if found then
        if p_balance > 0 then
            insert into transactions (user_id, amount, kind, description)
                values (p_user, p_balance, 'credit', 'opening balance');
            update users set balance = p_balance where id = p_user;
        end if;
        return query select p_user, p_balance::numeric, true;
    else
        return query select u.id, u.balance, false from users u where u.id = p_user;
    end if;
end;
$$;

-- Add (or, for a negative amount, remove) credit; applied once per idempotency key.
create or replace function billing_credit(
    p_user text, p_amount numeric, p_description text, p_idempotency_key text
) returns table (user_id text, balance numeric, applied boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_tx bigint;
begin
    -- Rounded once, here: numeric(20, 8) would otherwise round the ledger row and the new
    -- balance separately, and a half-way amount would leave them a unit apart.
    p_amount := round(p_amount, 8);
    perform 1 from users u where u.id = p_user for update;
    if not found then
        raise exception 'user % not found', p_user using errcode = 'no_data_found';
    end if;
    insert into transactions (user_id, amount, kind, description, idempotency_key)
        values (p_user, p_amount, 'credit', p_description, p_idempotency_key)
        on conflict (user_id, idempotency_key) where idempotency_key is not null do nothing
        returning id into v_tx;
    if v_tx is null then
        return query select u.id, u.balance, false from users u where u.id = p_user;
        return;
    end if;
    -- balance >= reserved keeps held money untouchable by a negative adjustment.
    update users u set balance = u.balance + p_amount where u.id = p_user;
    if (select u.balance < u.reserved from users u where u.id = p_user) then
        raise exception 'adjustment would take held funds' using errcode = 'check_violation';
    end if;
    return query select u.id, u.balance, true from users u where u.id = p_user;
end;
$$;

-- Hold the most a call can cost. Returns status 'ok', 'insufficient', 'no_account' or 'duplicate'.
-- p_max_tokens null: the call is capped at what the balance affords (and the model's limit).
create or replace function billing_reserve(
    p_user text,
    p_request_id text,
    p_prompt_cost numeric,
    p_output_price numeric,
    p_max_tokens integer,
    p_model_max_output integer,
    p_ttl_seconds integer
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
    update users u set reserved = u.reserved + v_hold where u.id = p_user;
    return query select 'ok'::text, least(v_tokens, 2147483647)::integer, v_hold, v_available;
end;
$$;

-- Charge the actual cost of a finished call and release the rest of its hold, once per
-- request id. Returns status 'charged' or 'duplicate'. A call whose hold already expired is
-- still charged. The charge never exceeds what the user has that is not held for other calls.
create or replace function billing_settle(
    p_user text,
    p_request_id text,
    p_cost numeric,
    p_model text,
    p_prompt_tokens integer,
    p_completion_tokens integer,
    p_description text
) returns table (status text, charged numeric, balance numeric)
language plpgsql as $$
declare
    v_hold numeric := 0;
    v_balance numeric;
    v_reserved numeric;
    v_charge numeric;
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
    v_charge := greatest(least(round(p_cost, 8), v_balance - (v_reserved - v_hold)), 0);
    insert into transactions (user_id, amount, kind, description, model, request_id,
                              prompt_tokens, completion_tokens)
        values (p_user, -v_charge, 'charge', p_description, p_model, p_request_id,
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
        returning r.user_id, r.amount
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

-- Accounts whose balance differs from their ledger sum or whose held sum is off. Empty is good.
create or replace function billing_audit()
returns table (user_id text, balance numeric, ledger_sum numeric, reserved numeric, held_sum numeric)
language sql stable as $$
    select u.id, u.balance, coalesce(t.total, 0), u.reserved, coalesce(r.total, 0)
    from users u
    left join (select t.user_id, sum(t.amount) as total from transactions t group by t.user_id) t
        on t.user_id = u.id
    left join (select r.user_id, sum(r.amount) as total from reservations r group by r.user_id) r
        on r.user_id = u.id
    where u.balance <> coalesce(t.total, 0) or u.reserved <> coalesce(r.total, 0);
$$;
