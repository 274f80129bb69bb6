-- Only the service role (which bypasses RLS) may read or change accounts, keys and money.
-- With RLS on and no policies, Supabase's anon and authenticated roles see nothing.
alter table users enable row level security;
alter table api_keys enable row level security;
alter table transactions enable row level security;
alter table reservations enable row level security;

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on users, api_keys, transactions, reservations from %I', r);
            execute format('revoke execute on function billing_ensure_user(text, numeric), '
                'billing_credit(text, numeric, text, text), '
                'billing_reserve(text, text, numeric, numeric, integer, integer, integer), '
                'billing_settle(text, text, numeric, text, integer, integer, text), '
                'billing_release(text, text), billing_sweep_expired(), billing_audit() from %I', r);
        end if;
    end loop;
end;
$$;

revoke execute on function billing_ensure_user(text, numeric),
    billing_credit(text, numeric, text, text),
    billing_reserve(text, text, numeric, numeric, integer, integer, integer),
    billing_settle(text, text, numeric, text, integer, integer, text),
    billing_release(text, text), billing_sweep_expired(), billing_audit() from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on users, api_keys, transactions, reservations to service_role;
        grant execute on function billing_ensure_user(text, numeric),
            billing_credit(text, numeric, text, text),
            billing_reserve(text, text, numeric, numeric, integer, integer, integer),
            billing_settle(text, text, numeric, text, integer, integer, text),
            billing_release(text, text), billing_sweep_expired(), billing_audit() to service_role;
    end if;
end;
$$;
