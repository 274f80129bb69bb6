-- Stripe payments: a paid Checkout session credits once; refunds and disputes take the credit
-- back (what is left of the balance is debited, the rest becomes debt that later credits pay
-- first). Every balance change is still one ledger row, so balance == ledger sum holds.

alter table transactions drop constraint if exists transactions_kind_check;
alter table transactions add constraint transactions_kind_check
    check (kind in ('credit', 'charge', 'refund', 'debt_payment'));

-- One row per paid Checkout session; `reversed` is what refunds and disputes took back so far.
create table if not exists payments (
    id             text primary key,
    user_id        text not null references users (id),
    payment_intent text unique,
    amount         numeric(20, 8) not null check (amount > 0),
    reversed       numeric(20, 8) not null default 0 check (reversed >= 0),
    created_at     timestamptz not null default now()
);

-- Every Stripe event acted on, by its id: a redelivery is recognised and changes nothing.
create table if not exists payment_events (
    id          text primary key,
    type        text not null,
    payment     text,
    received_at timestamptz not null default now()
);

-- Credits pay the debt first: the credit row, then a debt_payment row for what went to the debt.
drop function if exists billing_credit(text, numeric, text, text);
create or replace function billing_credit(
    p_user text, p_amount numeric, p_description text, p_idempotency_key text
) returns table (user_id text, balance numeric, applied boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_tx bigint;
    v_debt numeric;
    v_paid numeric := 0;
begin
    p_amount := round(p_amount, 8);
    select u.debt into v_debt from users u where u.id = p_user for update;
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
    if p_amount > 0 and v_debt > 0 then
        v_paid := least(v_debt, p_amount);
        insert into transactions (user_id, amount, kind, description)
            values (p_user, -v_paid, 'debt_payment', 'paid towards debt from ' || p_description);
    end if;
    update users u set balance = u.balance + p_amount - v_paid, debt = u.debt - v_paid where u.id = p_user;
    if (select u.balance < u.reserved from users u where u.id = p_user) then
        raise exception 'adjustment would take held funds' using errcode = 'check_violation';
    end if;
    return query select u.id, u.balance, true from users u where u.id = p_user;
end;
$$;

-- A paid Checkout session: credit its user once, whichever event (or redelivery) says so.
create or replace function billing_payment_credit(
    p_user text, p_session text, p_payment_intent text, p_amount numeric, p_event_id text,
    p_event_type text
) returns table (applied boolean, balance numeric)
language plpgsql as $$
begin
    insert into payment_events (id, type, payment) values (p_event_id, p_event_type, p_session)
        on conflict (id) do nothing;
    if not found then
        return query select false, (select u.balance from users u where u.id = p_user);
        return;
    end if;
    insert into payments (id, user_id, payment_intent, amount)
        values (p_session, p_user, p_payment_intent, round(p_amount, 8))
        on conflict (id) do nothing;
    if not found then
        return query select false, (select u.balance from users u where u.id = p_user);
        return;
    end if;
    return query select c.applied, c.balance
        from billing_credit(p_user, p_amount, 'Stripe payment ' || p_session, 'stripe:' || p_session) c;
end;
$$;

-- A refund or dispute of a payment. p_cumulative: p_amount is the total refunded so far (a
-- charge's amount_refunded); otherwise it is an amount to take back (a dispute). What the
-- balance still has (beyond holds for calls in flight) is debited; the rest becomes debt.
create or replace function billing_payment_reverse(
    p_payment_intent text, p_amount numeric, p_cumulative boolean, p_event_id text, p_event_type text
) returns table (status text, user_id text, taken numeric, debt numeric, balance numeric)
language plpgsql as $$
#variable_conflict use_column
declare
    v_pay record;
    v_delta numeric;
    v_take numeric;
    v_available numeric;
begin
    select p.* into v_pay from payments p where p.payment_intent = p_payment_intent;
    if not found then
        return query select 'unknown_payment'::text, null::text, 0::numeric, 0::numeric, 0::numeric;
        return;
    end if;
    -- Lock order: the user, then the payment.
    select u.balance - u.reserved into v_available from users u where u.id = v_pay.user_id for update;
    select p.* into v_pay from payments p where p.id = v_pay.id for update;
    insert into payment_events (id, type, payment) values (p_event_id, p_event_type, v_pay.id)
        on conflict (id) do nothing;
    if not found then
        return query select 'duplicate'::text, v_pay.user_id, 0::numeric, u.debt, u.balance
            from users u where u.id = v_pay.user_id;
        return;
    end if;
    if p_cumulative then
        v_delta := least(round(p_amount, 8), v_pay.amount) - v_pay.reversed;
    else
        v_delta := least(round(p_amount, 8), v_pay.amount - v_pay.reversed);
    end if;
    v_delta := greatest(v_delta, 0);
    v_take := least(v_delta, greatest(v_available, 0));
    if v_take > 0 then
        insert into transactions (user_id, amount, kind, description)
            values (v_pay.user_id, -v_take, 'refund',
                    replace(p_event_type, '.', ' ') || ' of Stripe payment ' || v_pay.id);
    end if;
    update payments p set reversed = p.reversed + v_delta where p.id = v_pay.id;
    update users u set balance = u.balance - v_take, debt = u.debt + (v_delta - v_take)
        where u.id = v_pay.user_id;
    return query select 'applied'::text, v_pay.user_id, v_take, u.debt, u.balance
        from users u where u.id = v_pay.user_id;
end;
$$;

alter table payments enable row level security;
alter table payment_events enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on payments, payment_events from %I', r);
            execute format('revoke execute on function billing_credit(text, numeric, text, text), '
                'billing_payment_credit(text, text, text, numeric, text, text), '
                'billing_payment_reverse(text, numeric, boolean, text, text) from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function billing_credit(text, numeric, text, text),
    billing_payment_credit(text, text, text, numeric, text, text),
    billing_payment_reverse(text, numeric, boolean, text, text) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on payments, payment_events to service_role;
        grant execute on function billing_credit(text, numeric, text, text),
            billing_payment_credit(text, text, text, numeric, text, text),
            billing_payment_reverse(text, numeric, boolean, text, text) to service_role;
    end if;
end;
$$;
