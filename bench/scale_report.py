"""Markdown for the scaling runs (`bench/scale.py`): subsections of the bench section, target rows."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.report import ms, num, signed_ms

LIMITED = 0.9  # one user below this share of the 16-user throughput: the row lock limits it
TWO_WORKERS = 1.8
IDLE_MARGIN = 0.05  # the gateway idler by more than this share of a core with 1 user: waiting on the lock


def _p50(data: dict[str, Any], target: str, key: str = "p50", scenario: str = "json-c1") -> float | None:
    for r in data.get("results", []):
        if r["target"] == target and r["scenario"] == scenario and r.get(key) is not None:
            return float(r[key])
    return None


def added(data: dict[str, Any], target: str, key: str = "p50", scenario: str = "json-c1") -> float | None:
    """`target`'s p50 (or TTFT p50) minus direct's in one scenario."""
    a, b = _p50(data, target, key, scenario), _p50(data, "direct", key, scenario)
    return None if a is None or b is None else a - b


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def _per_cpu_s(r: dict[str, Any]) -> float | None:
    cpu = r.get("server_cpu_per_req")
    return 1 / cpu if cpu else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def commit_budget(data: dict[str, Any]) -> float | None:
    """The call's 2 commit round trips + 1 ms: the Postgres target for added p50 at 1 connection."""
    c = data.get("commit") or {}
    return None if c.get("call_commits_s") is None else c["call_commits_s"] + 0.001


# --- target rows ---------------------------------------------------------------------------


def _row_embedded(data: dict[str, Any]) -> list[str]:
    a = added(data, "gateway-sqlite")
    ttft = added(data, "gateway-sqlite", "ttft_p50", "stream-c1")
    measured = (
        "not measured (`gateway-sqlite` runs in the full `make bench`)"
        if a is None
        else (f"{signed_ms(a)} ms (added TTFT {signed_ms(ttft)} ms)")
    )
    return [
        "added p50 at 1 connection <= 2 ms on the embedded store",
        measured,
        _verdict(None if a is None else a <= 0.002),
    ]


def _row_postgres(data: dict[str, Any]) -> list[str]:
    a, budget, c = added(data, "gateway"), commit_budget(data), data.get("commit") or {}
    if budget is None:
        measured = f"{signed_ms(a)} ms; commit cost not measured ({c.get('error', 'no data')})"
    else:
        measured = (
            f"{signed_ms(a)} ms vs {ms(budget)} ms = the call's 2 commit round trips "
            f"({ms(c['insert_sync_p50'])} ms synced + {ms(c['insert_async_p50'])} ms unsynced) + 1 ms; "
            f"this disk: {c['wal_sync_method']} {ms(c.get('flush_s'), 3)} ms per flush (pg_test_fsync)"
        )
    return [
        "added p50 at 1 connection on Postgres <= the call's commits + 1 ms",
        measured,
        _verdict(None if a is None or budget is None else a <= budget),
    ]


def _worker_ratios(w: dict[str, Any]) -> dict[str, float | None]:
    """2 workers vs 1: throughput (against the pinned worker, and at the same placement) and
    requests per gateway CPU-second (pinned to core 1, on one account and on one per connection, and
    on cores 0-1)."""
    p1, p2, s1, s2 = (w[k] for k in ("1w-core1", "2w-core1", "1w-cores01", "2w-cores01"))
    return {
        "vs_pinned": _ratio(s2["rps"], p1["rps"]),
        "same_placement": _ratio(s2["rps"], s1["rps"]),
        "cpu_core1": _ratio(_per_cpu_s(p2), _per_cpu_s(p1)),
        "cpu_cores01": _ratio(_per_cpu_s(s2), _per_cpu_s(s1)),
        "cpu_core1_spread": _ratio(_per_cpu_s(w["2w-core1-spread"]), _per_cpu_s(w["1w-core1-spread"])),
    }


def _row_workers(data: dict[str, Any]) -> list[str]:
    name = "two workers >= 1.8x one worker"
    w = (data.get("scale") or {}).get("workers")
    if not w:
        return [name, "not measured (`make bench` or `bench/run.py --only-scale`)", "-"]
    r = _worker_ratios(w)
    measured = (
        f"on cores 0-1 (shared with the client and the fake provider): 2 workers "
        f"{num(w['2w-cores01']['rps'], '.0f')} req/s = {num(r['vs_pinned'], '.2f')}x 1 worker pinned to "
        f"core 1, {num(r['same_placement'], '.2f')}x 1 worker on cores 0-1; requests per gateway "
        f"CPU-second 2 vs 1 worker: {num(r['cpu_core1'], '.2f')}x on core 1 "
        f"({num(r['cpu_core1_spread'], '.2f')}x, one account per connection), "
        f"{num(r['cpu_cores01'], '.2f')}x on cores 0-1"
    )
    if r["vs_pinned"] is not None and r["vs_pinned"] >= TWO_WORKERS:
        verdict = "met"
    else:
        verdict = "not measurable on 2 cores (see *Two workers vs one*)"
    return [name, measured, verdict]


def lock_limits(h: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether the row lock limits one user's throughput, and why: 1 user clearly slower than 16
    while the gateway sat idler (less busy or runnable), i.e. waiting on Postgres, not on a CPU."""
    one, many = h["one"], h["many"]
    ratio = _ratio(one["rps"], many["rps"])
    idle = many.get("server_demand", 0.0) - one.get("server_demand", 0.0)
    if ratio is None:
        return None, "no throughput measured"
    if ratio >= LIMITED:
        return False, f"1 user at {ratio:.2f}x the throughput of {h['users']}: the row lock does not limit it"
    if idle > IDLE_MARGIN:
        return True, (
            f"**1 user {1 - ratio:.0%} slower than {h['users']}, the gateway {idle:.0%} of a core idler**: "
            "the row lock limits it"
        )
    return False, (
        f"1 user {1 - ratio:.0%} slower than {h['users']}, but the gateway was as busy or runnable "
        f"({one['server_demand']:.0%} vs {many['server_demand']:.0%} of a core): it was short of CPU "
        f"({one['server_util']:.0%} vs {many['server_util']:.0%} of core 1 for itself, CPU per request "
        f"{ms(one['server_cpu_per_req'], 3)} vs {ms(many['server_cpu_per_req'], 3)} ms), "
        "not waiting on the lock"
    )


def _row_hot(data: dict[str, Any]) -> list[str]:
    name = "one hot user: throughput and exactness"
    h = (data.get("scale") or {}).get("hot_user")
    if not h:
        return [name, "not measured (`make bench` or `bench/run.py --only-scale`)", "-"]
    one, many, b = h["one"], h["many"], h["books"]
    lock = (one.get("waits") or {}).get("lock")
    limited, why = lock_limits(h)
    measured = (
        f"{h['users']} connections: 1 user {num(one['rps'], '.0f')} req/s vs {h['users']} users "
        f"{num(many['rps'], '.0f')} (CPU/req {ms(one['server_cpu_per_req'], 3)} vs "
        f"{ms(many['server_cpu_per_req'], 3)} ms; backends waiting on a lock {num(lock, '.2f')}): {why}; "
        f"{_books_line(b)}"
    )
    if not b["exact"] or limited:
        return [name, measured, "**not met**"]
    return [name, measured, "-" if limited is None else "met"]


def _books_line(b: dict[str, Any]) -> str:
    failed = [k for k, ok in b["checks"].items() if not ok]
    same = "yes" if b["checks"]["balance == start - sum(charges)"] else "**NO**"
    audit = "clean" if b["audit_rows"] == 0 else f"{b['audit_rows']} rows"
    line = (
        f"{b['calls']} calls, {b['charges']} ledger charges, balance {b['balance']} == start {b['start']} "
        f"- sum(charges) {b['charged']}: {same}, audit {audit}, holds left {b['holds']}"
    )
    return line + (f"; **failed: {', '.join(failed)}**" if failed else "")


def target_rows(data: dict[str, Any]) -> list[list[str]]:
    """[target, measured, verdict] for the four targets of the scaling runs."""
    return [_row_embedded(data), _row_postgres(data), _row_workers(data), _row_hot(data)]


# --- the subsections -----------------------------------------------------------------------


def _commit_section(data: dict[str, Any]) -> list[str]:
    c = data.get("commit") or {}
    out = ["### Commit cost of this disk", ""]
    if "call_commits_s" not in c:
        return [*out, f"Not measured: {c.get('error', 'no data')}.", ""]
    ops = c.get("fsync_ops") or {}
    flushes = ", ".join(f"{m} {v:.0f}/s ({1e6 / v:.0f} µs)" for m, v in ops.items() if v)
    flushes = flushes or f"not measured ({c.get('fsync_error')})"
    fs = "the filesystem of" if c["same_filesystem"] else "**not** on the filesystem of (none writable found)"
    a, budget = added(data, "gateway"), commit_budget(data)
    out += [
        f"Postgres {c['server_version']}, `wal_sync_method = {c['wal_sync_method']}`. `pg_test_fsync` "
        f"(one 8 kB write and a flush; in `{c['fsync_dir']}`, {fs} the data directory "
        f"`{c['data_directory']}`): "
        f"{flushes}.",
        "",
        f"Round trips over asyncpg at 1 connection on a fresh database (p50 of {c['round_trips']:.0f} each, "
        f"interleaved): `SELECT 1` {ms(c['select1_p50'], 3)} ms; `INSERT` of one small row in its own "
        f"transaction, `synchronous_commit = on` {ms(c['insert_sync_p50'], 3)} ms, `off` "
        f"{ms(c['insert_async_p50'], 3)} ms.",
        "",
        "A gateway call commits twice, each commit one statement and one round trip: the reserve "
        "(`billing_reserve` sets `synchronous_commit = off` for its transaction: a lost hold is harmless) "
        f"and the settle (waits for the WAL flush). **The call's 2 commits cost {ms(c['call_commits_s'])} ms "
        f"on this disk** (2 synced commits would cost {ms(2 * c['insert_sync_p50'])} ms). The target for the "
        f"added p50 at 1 connection on Postgres is that + 1 ms = {ms(budget)} ms; measured "
        f"{signed_ms(a)} ms.",
        "",
    ]
    return out


def _embedded_section(data: dict[str, Any]) -> list[str]:
    a = added(data, "gateway-sqlite")
    if a is None:
        return []
    ttft = added(data, "gateway-sqlite", "ttft_p50", "stream-c1")
    return [
        "### Embedded store",
        "",
        "*gateway, embedded SQLite store* in the 1-connection tables above: the same gateway started "
        "without `DATABASE_URL` (the SQLite file in its `DATA_DIR`; rate limits still in Redis, metrics on). "
        f"Added p50 {signed_ms(a)} ms, added TTFT {signed_ms(ttft)} ms (on Postgres: "
        f"{signed_ms(added(data, 'gateway'))} ms and "
        f"{signed_ms(added(data, 'gateway', 'ttft_p50', 'stream-c1'))} ms).",
        "",
    ]


_HEADER = [
    "run",
    "req/s",
    "p50 ms",
    "p99 ms",
    "gateway CPU/req ms",
    "req per gateway CPU-s",
    "gateway CPU (per worker)",
    "gateway busy or runnable",
    "Postgres + Redis CPU/req ms",
    "Redis",
    "lock waits",
    "WAL waits",
    "client + fake",
    "other",
    "errors",
]


def _phase_row(label: str, r: dict[str, Any]) -> list[str]:
    waits = r.get("waits") or {}
    workers = " + ".join(f"{w:.0%}" for w in r["worker_util"])
    return [
        label,
        num(r["rps"], ".1f"),
        ms(r["p50"]),
        ms(r["p99"]),
        ms(r["server_cpu_per_req"], 3),
        num(_per_cpu_s(r), ".0f"),
        f"{r['server_util']:.0%} ({workers})",
        f"{r['server_demand']:.0%}",
        ms(r["services_cpu_per_req"], 3),
        f"{r['redis_util']:.0%}",
        num(waits.get("lock"), ".2f"),
        num(waits.get("wal"), ".2f"),
        f"{r['client_util'] + r['fake_util']:.0%}",
        f"{r['other_util']:.0%}",
        str(r["errors"]),
    ]


_WORKER_RUNS = {
    "1w-core1": "1 worker, core 1",
    "2w-core1": "2 workers, core 1",
    "1w-core1-spread": "1 worker, core 1, one account per connection",
    "2w-core1-spread": "2 workers, core 1, one account per connection",
    "1w-cores01": "1 worker, cores 0-1",
    "2w-cores01": "2 workers, cores 0-1",
}


def _workers_section(s: dict[str, Any]) -> list[str]:
    w = s["workers"]
    r = _worker_ratios(w)
    return [
        "### Two workers vs one",
        "",
        f"Non-streaming, {w['1w-core1']['conns']} connections per worker "
        f"({w['1w-core1']['conns']} to 1 worker, {w['2w-core1']['conns']} to 2, spread evenly: see *per "
        "worker*; an event loop's CPU per request falls as it finds more sockets ready per wake-up, so "
        "each worker gets as many as the single one), "
        "on one key of one account (on core 1 also on one account and key per connection), Postgres "
        "billing, Redis limits; per run "
        f"{s['duration']:g} s measured in {s['rounds']} rounds, each after {s['warmup']:g} s of warm-up, "
        "the 1-worker and the 2-worker gateway (both running) taking turns. This machine has 2 cores and "
        'the load generator and the fake provider need CPU too, so "2 workers on 2 cores" cannot be '
        "isolated here; what can be measured: *core 1*: both gateways pinned to core 1 (client and fake "
        "provider on core 0), where 2 workers can only share the core and the CPU per request shows "
        "whether a second worker costs anything (if it stays the same, nothing inside the gateway "
        "serialises the workers); *cores 0-1*: gateway, client and fake provider all allowed on both "
        "cores (`taskset -c 0,1`), the throughput 2 workers get when they compete with the client side. "
        "*lock waits* / *WAL waits*: mean number of the database's active backends waiting on a lock "
        "(here: the account's and the key's rows) / on the WAL, from `pg_stat_activity` every "
        f"{s['wait_sample_s'] * 1000:.0f} ms. *Redis*: `redis-server`'s CPU as a share of a core (shared "
        "with anything else using it).",
        "",
        report.table(_HEADER, [_phase_row(label, w[key]) for key, label in _WORKER_RUNS.items()]),
        "",
        f"Throughput, 2 workers vs 1 on cores 0-1: {num(r['vs_pinned'], '.2f')}x against the worker pinned "
        f"to core 1, {num(r['same_placement'], '.2f')}x against 1 worker on cores 0-1. Requests per "
        f"gateway CPU-second, 2 workers vs 1: {num(r['cpu_core1'], '.2f')}x on core 1 "
        f"({num(r['cpu_core1_spread'], '.2f')}x with one account per connection, where no row is shared), "
        f"{num(r['cpu_cores01'], '.2f')}x on cores 0-1. Two event loops sharing a core are switched in "
        "and out, so some rise of the CPU per request there comes from the placement; a resource the "
        "workers share shows as *lock waits* (in the runs on one account; see *One hot user*) or as "
        "Redis' or Postgres' CPU per request.",
        "",
    ]


def _hot_section(s: dict[str, Any]) -> list[str]:
    h = s["hot_user"]
    one, many, b = h["one"], h["many"], h["books"]
    checks = "; ".join(f"{k}: {'yes' if ok else '**NO**'}" for k, ok in b["checks"].items())
    return [
        "### One hot user",
        "",
        f"Every call locks its account's balance row (and its key's row) in Postgres, in the reserve and "
        f"in the settle, until the commit. One gateway (one worker on core 1, Postgres), non-streaming, "
        f"{h['users']} connections: spread over {h['users']} accounts (one account and key per "
        "connection) and all on one account and key, in alternating rounds as above. The main "
        "benchmark's scenarios also send every call with one key of one account.",
        "",
        report.table(_HEADER, [_phase_row(f"{h['users']} users", many), _phase_row("1 user", one)]),
        "",
        f"{lock_limits(h)[1]}. *gateway busy or runnable*: its CPU plus the time its event loop waited "
        "for a CPU (`/proc/<pid>/schedstat`), as a share of a core; the rest of the time it had nothing to "
        "do but wait (for the provider, Postgres or the lock).",
        "",
        f"The hot account after its run (every settle landed; read through `GET /admin/users/{{id}}` and in "
        f"Postgres): {_books_line(b)}. Checks: {checks}. Call records: "
        + ", ".join(f"{k} {v}" for k, v in sorted(b["requests"].items()))
        + ".",
        "",
    ]


def render(data: dict[str, Any]) -> str:
    """The subsections: commit cost, embedded store, two workers vs one, one hot user."""
    s = data.get("scale")
    lines = [*_commit_section(data), *_embedded_section(data)] if data.get("commit") else []
    if s and "workers" in s:
        lines += [*_workers_section(s), *_hot_section(s)]
    elif s:
        lines += ["### Scaling", "", f"Not measured: {s.get('error')}.", ""]
    else:
        lines += [
            "### Scaling, one hot user, commit cost",
            "",
            "Not measured in this run (`--quick` skips them; `bench/run.py --only-scale` runs them alone).",
            "",
        ]
    return "\n".join(lines)
