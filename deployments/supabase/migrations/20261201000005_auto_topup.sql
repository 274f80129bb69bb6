-- Automatic top-ups: when a settle leaves the balance below the user's threshold, one off-session
-- Stripe payment on the saved card is started. Which settle starts it is decided here, in one
-- statement under the row lock (so any number of workers start at most one at a time); a
-- succeeded payment credits once per payment intent, a failure counts once per attempt, and
-- three failures in a row switch it off.

-- The card Checkout saved (customer and payment method), the newest one per user.
create table if not exists payment_methods (
    user_id        text primary key references users (id),
    customer       text not null,
    payment_method text not null,
    updated_at     timestamptz not null default now()
);

-- The user's rule; `attempt` is the payment in flight (at most one), started at `attempt_at`.
create table if not exists auto_topups (
    user_id    text primary key references users (id),
    threshold  numeric(20, 8) not null check (threshold >= 0),
    amount     numeric(20, 8) not null check (amount > 0),
    enabled    boolean not null default true,
    failures   integer not null default 0,
    last_error text,
    attempt    text,
    attempt_at timestamptz,
    updated_at timestamptz not null default now()
);

-- Every payment started: its id is the Stripe idempotency key, so re-driving a stale attempt
-- asks Stripe for the same payment again, never a second one.
create table if not exists auto_topup_attempts (
    id             text primary key,
    user_id        text not null references users (id),
    amount         numeric(20, 8) not null check (amount > 0),
    customer       text not null,
    payment_method text not null,
    status         text not null default 'pending' check (status in ('pending', 'succeeded', 'failed')),
    payment_intent text unique,
    error          text,
    created_at     timestamptz not null default now(),
    finished_at    timestamptz
);
create index if not exists auto_topup_attempts_user_idx on auto_topup_attempts (user_id, created_at desc);

create or replace function billing_save_payment_method(p_user text, p_customer text, p_payment_method text)
returns void
language sql as $$
    insert into payment_methods (user_id, customer, payment_method) values (p_user, p_customer, p_payment_method)
    on conflict (user_id) do update
        set customer = excluded.customer, payment_method = excluded.payment_method, updated_at = now();
$$;

create or replace function billing_saved_customer(p_user text)
returns table (customer text, payment_method text)
language sql stable as $$
    select m.customer, m.payment_method from payment_methods m where m.user_id = p_user;
$$;

-- Set (or re-enable) the rule: failures start again from zero. 'no_payment_method' without a card.
create or replace function billing_set_auto_topup(p_user text, p_threshold numeric, p_amount numeric)
returns text
language plpgsql as $$
begin
    if not exists (select 1 from payment_methods m where m.user_id = p_user) then
        return 'no_payment_method';
    end if;
    insert into auto_topups (user_id, threshold, amount) values (p_user, round(p_threshold, 8), round(p_amount, 8))
    on conflict (user_id) do update
        set threshold = excluded.threshold, amount = excluded.amount, enabled = true, failures = 0,
            last_error = null, updated_at = now();
    return 'ok';
end;
$$;

create or replace function billing_delete_auto_topup(p_user text)
returns boolean
language plpgsql as $$
begin
    delete from auto_topups a where a.user_id = p_user;
    return found;
end;
$$;

create or replace function billing_get_auto_topup(p_user text)
returns table (threshold numeric, amount numeric, enabled boolean, failures integer, last_error text,
               in_flight boolean)
language sql stable as $$
    select a.threshold, a.amount, a.enabled, a.failures, a.last_error, a.attempt is not null
    from auto_topups a where a.user_id = p_user;
$$;

-- Start a payment if the balance is below the threshold and none is in flight; returns the
-- attempt to charge (nothing otherwise). An attempt in flight for longer than p_stale_seconds
-- (its process died, or Stripe's answer was lost) is handed out again, under its own id.
create or replace function billing_auto_topup_claim(p_user text, p_attempt text, p_stale_seconds integer)
returns table (attempt text, amount numeric, customer text, payment_method text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_rule record;
    v_balance numeric;
    v_card record;
begin
    select a.* into v_rule from auto_topups a where a.user_id = p_user for update;
    if not found or not v_rule.enabled then
        return;
    end if;
    if v_rule.attempt is not null then
        if v_rule.attempt_at > now() - make_interval(secs => p_stale_seconds) then
            return;
        end if;
        update auto_topups a set attempt_at = now() where a.user_id = p_user;
        return query select t.id, t.amount, t.customer, t.payment_method
            from auto_topup_attempts t where t.id = v_rule.attempt;
        return;
    end if;
    select u.balance into v_balance from users u where u.id = p_user;
    if v_balance >= v_rule.threshold then
        return;
    end if;
    select m.* into v_card from payment_methods m where m.user_id = p_user;
    if not found then
        return;
    end if;
    insert into auto_topup_attempts (id, user_id, amount, customer, payment_method)
        values (p_attempt, p_user, v_rule.amount, v_card.customer, v_card.payment_method);
    update auto_topups a set attempt = p_attempt, attempt_at = now() where a.user_id = p_user;
    return query select p_attempt, v_rule.amount, v_card.customer, v_card.payment_method;
end;
$$;

-- A succeeded payment of an attempt (Stripe's answer, or its webhook, or both): credited once per
-- payment intent, whatever the attempt's state (money was taken); the rule's failures reset.
create or replace function billing_auto_topup_succeeded(
    p_attempt text, p_payment_intent text, p_amount numeric, p_event_id text, p_event_type text
) returns table (status text, user_id text, balance numeric, failures integer, enabled boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_user text;
    v_balance numeric;
begin
    select t.user_id into v_user from auto_topup_attempts t where t.id = p_attempt;
    if not found then
        return query select 'unknown'::text, null::text, 0::numeric, 0, false;
        return;
    end if;
    -- Lock order: the user, then the attempt, then the rule (as billing_credit locks the user).
    perform 1 from users u where u.id = v_user for update;
    perform 1 from auto_topup_attempts t where t.id = p_attempt for update;
    if p_event_id is not null then
        insert into payment_events (id, type, payment) values (p_event_id, p_event_type, p_payment_intent)
            on conflict (id) do nothing;
        if not found then
            return query select 'duplicate'::text, v_user, u.balance, 0, true from users u where u.id = v_user;
            return;
        end if;
    end if;
    update auto_topup_attempts t set status = 'succeeded', payment_intent = p_payment_intent,
        error = null, finished_at = coalesce(t.finished_at, now())
        where t.id = p_attempt and t.status <> 'succeeded';
    update auto_topups a set attempt = null, attempt_at = null, failures = 0, last_error = null
        where a.user_id = v_user and a.attempt = p_attempt;
    insert into payments (id, user_id, payment_intent, amount)
        values (p_payment_intent, v_user, p_payment_intent, round(p_amount, 8))
        on conflict do nothing;
    if not found then
        return query select 'duplicate'::text, v_user, u.balance, 0, true from users u where u.id = v_user;
        return;
    end if;
    select c.balance into v_balance from billing_credit(
        v_user, p_amount, 'Stripe auto top-up ' || p_payment_intent, 'stripe:' || p_payment_intent) c;
    return query select 'credited'::text, v_user, v_balance, 0, true;
end;
$$;

-- A failed payment of an attempt: counted once per attempt (Stripe's answer and its webhook both
-- report it), and never after it succeeded; p_max_failures in a row switch the rule off.
create or replace function billing_auto_topup_failed(
    p_attempt text, p_payment_intent text, p_error text, p_event_id text, p_event_type text,
    p_max_failures integer
) returns table (status text, user_id text, balance numeric, failures integer, enabled boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_att record;
    v_rule record;
begin
    select t.* into v_att from auto_topup_attempts t where t.id = p_attempt for update;
    if not found then
        return query select 'unknown'::text, null::text, 0::numeric, 0, false;
        return;
    end if;
    if p_event_id is not null then
        insert into payment_events (id, type, payment) values (p_event_id, p_event_type, p_payment_intent)
            on conflict (id) do nothing;
        if not found then
            return query select 'duplicate'::text, v_att.user_id, 0::numeric, 0, true;
            return;
        end if;
    end if;
    if v_att.status <> 'pending' then
        return query select 'duplicate'::text, v_att.user_id, 0::numeric, 0, true;
        return;
    end if;
    update auto_topup_attempts t set status = 'failed', error = left(p_error, 500),
        payment_intent = coalesce(p_payment_intent, t.payment_intent), finished_at = now()
        where t.id = p_attempt;
    update auto_topups a set attempt = null, attempt_at = null, failures = a.failures + 1,
        last_error = left(p_error, 500), enabled = a.failures + 1 < p_max_failures
        where a.user_id = v_att.user_id and a.attempt = p_attempt
        returning a.failures, a.enabled into v_rule;
    if not found then
        return query select 'counted'::text, v_att.user_id, 0::numeric, 0, false;
        return;
    end if;
    return query select 'counted'::text, v_att.user_id, 0::numeric, v_rule.failures, v_rule.enabled;
end;
$$;

alter table payment_methods enable row level security;
alter table auto_topups enable row level security;
alter table auto_topup_attempts enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on payment_methods, auto_topups, auto_topup_attempts from %I', r);
            execute format('revoke execute on function billing_save_payment_method(text, text, text), '
                'billing_saved_customer(text), billing_set_auto_topup(text, numeric, numeric), '
                'billing_delete_auto_topup(text), billing_get_auto_topup(text), '
                'billing_auto_topup_claim(text, text, integer), '
                'billing_auto_topup_succeeded(text, text, numeric, text, text), '
                'billing_auto_topup_failed(text, text, text, text, text, integer) from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function billing_save_payment_method(text, text, text), billing_saved_customer(text),
    billing_set_auto_topup(text, numeric, numeric), billing_delete_auto_topup(text),
    billing_get_auto_topup(text), billing_auto_topup_claim(text, text, integer),
    billing_auto_topup_succeeded(text, text, numeric, text, text),
    billing_auto_topup_failed(text, text, text, text, text, integer) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on payment_methods, auto_topups, auto_topup_attempts to service_role;
        grant execute on function billing_save_payment_method(text, text, text), billing_saved_customer(text),
            billing_set_auto_topup(text, numeric, numeric), billing_delete_auto_topup(text),
            billing_get_auto_topup(text), billing_auto_topup_claim(text, text, integer),
            billing_auto_topup_succeeded(text, text, numeric, text, text),
            billing_auto_topup_failed(text, text, text, text, text, integer) to service_role;
    end if;
end;
$$;
