-- Users, API keys, the append-only ledger and open reservations.
-- Money is NUMERIC(20, 8): exact, 8 decimal places.

create table if not exists users (
    id          text primary key,
    balance     numeric(20, 8) not null default 0 check (balance >= 0),
    reserved    numeric(20, 8) not null default 0 check (reserved >= 0),
    rpm_limit   integer check (rpm_limit is null or rpm_limit >= 0),
    rph_limit   integer check (rph_limit is null or rph_limit >= 0),
    tpm_limit   integer check (tpm_limit is null or tpm_limit >= 0),
    created_at  timestamptz not null default now()
);

create table if not exists api_keys (
    id          text primary key,
    user_id     text not null references users (id),
    key_hash    text not null unique,
    name        text,
    rpm_limit   integer check (rpm_limit is null or rpm_limit >= 0),
    tpm_limit   integer check (tpm_limit is null or tpm_limit >= 0),
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
create index if not exists api_keys_user_idx on api_keys (user_id);

-- The ledger: every change of a balance is one row here; users.balance is its running sum.
create table if not exists transactions (
    id                bigint generated always as identity primary key,
    user_id           text not null references users (id),
    amount            numeric(20, 8) not null,
    kind              text not null check (kind in ('credit', 'charge')),
    description       text not null,
    model             text,
    request_id        text,
    prompt_tokens     integer,
    completion_tokens integer,
    idempotency_key   text,
    created_at        timestamptz not null default clock_timestamp()
);
create index if not exists transactions_user_idx on transactions (user_id, id desc);
-- One charge per request id, one credit per idempotency key: the database enforces "once".
create unique index if not exists transactions_charge_once
    on transactions (request_id) where kind = 'charge';
create unique index if not exists transactions_credit_once
    on transactions (user_id, idempotency_key) where idempotency_key is not null;

-- Money held for calls in flight; released or turned into a charge when the call ends.
create table if not exists reservations (
    request_id  text primary key,
    user_id     text not null references users (id),
    amount      numeric(20, 8) not null check (amount >= 0),
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index if not exists reservations_expiry_idx on reservations (expires_at);
create index if not exists reservations_user_idx on reservations (user_id);

-- Append-only: the ledger is never rewritten.
create or replace function transactions_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'transactions are append-only' using errcode = 'check_violation';
end;
$$;

drop trigger if exists transactions_no_rewrite on transactions;
create trigger transactions_no_rewrite
    before update or delete on transactions
    for each row execute function transactions_append_only();
