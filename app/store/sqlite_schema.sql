-- The embedded store's schema: the same tables as the Postgres migrations, money as exact text.
create table if not exists users (
    id text primary key, balance text not null default '0', reserved text not null default '0',
    rpm_limit integer, rph_limit integer, tpm_limit integer, debt text not null default '0',
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create table if not exists api_keys (
    id text primary key, user_id text not null references users (id),
    key_hash text not null unique, name text, rpm_limit integer, tpm_limit integer,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), revoked_at text,
    budget_amount text, budget_period text, budget_window text, budget_spent text not null default '0',
    budget_held text not null default '0', expires_at text, models text);
create table if not exists transactions (
    id integer primary key autoincrement, user_id text not null references users (id),
    amount text not null,
    kind text not null check (kind in ('credit', 'charge', 'refund', 'debt_payment')),
    description text not null, model text, request_id text, prompt_tokens integer,
    completion_tokens integer, idempotency_key text,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create index if not exists transactions_user_idx on transactions (user_id, id desc);
create unique index if not exists transactions_charge_once
    on transactions (request_id) where kind = 'charge';
create unique index if not exists transactions_credit_once
    on transactions (user_id, idempotency_key) where idempotency_key is not null;
create table if not exists reservations (
    request_id text primary key, user_id text not null references users (id),
    amount text not null, expires_at real not null, key_id text);
create index if not exists reservations_expiry_idx on reservations (expires_at);
create table if not exists requests (
    request_id text primary key, user_id text not null references users (id), model text,
    deployment text, status text not null check (status in ('held', 'charged', 'released')),
    hold text not null default '0', cost text, uncollected text not null default '0', usage text,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), settled_at text,
    key_id text);
create index if not exists requests_user_idx on requests (user_id, created_at desc);
create trigger if not exists transactions_no_update before update on transactions
    begin select raise(abort, 'transactions are append-only'); end;
create trigger if not exists transactions_no_delete before delete on transactions
    begin select raise(abort, 'transactions are append-only'); end;
create table if not exists usage_rollups (
    user_id text not null references users (id), day text not null, model text not null,
    key_id text not null default '', requests integer not null default 0,
    prompt_tokens integer not null default 0, completion_tokens integer not null default 0,
    cost text not null default '0', primary key (user_id, day, model, key_id));
create table if not exists payments (
    id text primary key, user_id text not null references users (id), payment_intent text unique,
    amount text not null, reversed text not null default '0',
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create table if not exists payment_events (
    id text primary key, type text not null, payment text,
    received_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create table if not exists balance_alerts (
    user_id text not null references users (id), threshold text not null,
    alerted_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    primary key (user_id, threshold));
create table if not exists payment_methods (
    user_id text primary key references users (id), customer text not null,
    payment_method text not null,
    updated_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create table if not exists auto_topups (
    user_id text primary key references users (id), threshold text not null, amount text not null,
    enabled integer not null default 1, failures integer not null default 0, last_error text,
    attempt text, attempt_at real,
    updated_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
create table if not exists auto_topup_attempts (
    id text primary key, user_id text not null references users (id), amount text not null,
    customer text not null, payment_method text not null,
    status text not null default 'pending' check (status in ('pending', 'succeeded', 'failed')),
    payment_intent text unique, error text,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), finished_at text);
