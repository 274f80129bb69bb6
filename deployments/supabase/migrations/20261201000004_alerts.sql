-- Low-balance alerts: which thresholds a user's balance is below and was alerted about. A row
-- exists from the downward crossing (the alert) until the balance is seen at or above the
-- threshold again (re-armed), so each crossing alerts once, whichever worker sees it first.

create table if not exists balance_alerts (
    user_id    text not null references users (id),
    threshold  numeric(20, 8) not null,
    alerted_at timestamptz not null default now(),
    primary key (user_id, threshold)
);

-- Against the balance as it is now: re-arm the thresholds it is at or above, and return those
-- it has just fallen below (each returned once, to exactly one caller).
create or replace function billing_alert_crossings(p_user text, p_thresholds numeric[])
returns table (threshold numeric, balance numeric)
language plpgsql as $$
#variable_conflict use_column
declare
    v_balance numeric;
begin
    select u.balance into v_balance from users u where u.id = p_user;
    if not found then
        return;
    end if;
    delete from balance_alerts a where a.user_id = p_user and a.threshold <= v_balance;
    return query
        insert into balance_alerts as a (user_id, threshold)
        select p_user, t from unnest(p_thresholds) t where t > v_balance
        on conflict (user_id, threshold) do nothing
        returning a.threshold, v_balance;
end;
$$;

alter table balance_alerts enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on balance_alerts from %I', r);
            execute format('revoke execute on function billing_alert_crossings(text, numeric[]) from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function billing_alert_crossings(text, numeric[]) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on balance_alerts to service_role;
        grant execute on function billing_alert_crossings(text, numeric[]) to service_role;
    end if;
end;
$$;
