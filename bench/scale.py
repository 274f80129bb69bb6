"""Scaling, one hot user, the embedded store and the disk's commit cost: `make bench` beyond one worker.

`run_scale` runs after the gateway's own scenarios (skipped by `--quick`); `run_only` is the same
on its own (`bench/run.py --only-scale`). Its data goes to the bench data as `commit` (see
`bench/commit_cost.py`) and `scale`; `render` and `target_rows` turn it into markdown
(`bench/scale_report.py`).

- the embedded store: a gateway without `DATABASE_URL` (SQLite, limits still in Redis) on the
  1-connection scenarios, as the diagnostic target `gateway-sqlite`;
- one hot user: 16 connections on one account vs 16 connections spread over 16 accounts, then
  that one account's books, read through the admin API and in Postgres;
- two workers vs one: a 1-worker and a 2-worker gateway side by side, both pinned to core 1 (the
  CPU per request, which the placement does not hide), then both with client, fake provider and
  gateway allowed on both cores (the throughput 2 cores allow).

Compared loads run in alternating rounds (`bench/phases.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import books, commit_cost, phases, procs, report, targets
from bench.loadgen import RequestSpec
from bench.measure import (
    CLIENT_CPUS,
    NOSYNC_SCENARIOS,
    SERVER_CPUS,
    free_port,
    run_async,
    run_target,
)
from bench.scale_report import render, target_rows

__all__ = ["Context", "render", "run_only", "run_scale", "target_rows"]

BOTH_CPUS = {0, 1}
# Connections per worker: as many requests in flight for each worker with 2 as with 1 (the CPU
# per request falls as an event loop finds more sockets ready per wake-up).
CONNS_PER_WORKER = 32
HOT_CONNS = 16
ROUNDS = 2  # compared loads alternate: A B A B


@dataclass
class Context:
    """What `run_bench` (or `run_only`) shares with the scaling runs."""

    processes: procs.Processes
    work: Path
    fake: targets.Target
    fake_root: int
    quick: bool
    warmup: float  # the main scenarios' warm-up and duration (for `gateway-sqlite`)
    duration: float
    results: list[dict[str, Any]]
    notes: dict[str, list[str]]
    databases: list[str | None] = field(default_factory=list)

    @property
    def phase(self) -> tuple[float, float]:
        """Warm-up and measured seconds of one scaling phase."""
        return (0.5, 2.0) if self.quick else (1.0, 5.0)


# --- gateways ----------------------------------------------------------------------------


async def _worker_pids(root: str, n: int, timeout: float = 90) -> set[int]:
    """pids that answer `/health/system` over fresh connections, until `n` have (or `timeout`)."""
    seen: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def ask() -> None:
            async with session.get(root + "/health/system") as resp:
                seen.add(int(json.loads(await resp.read())["pid"]))

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen) < n:
            await asyncio.gather(*(ask() for _ in range(16)))
            await asyncio.sleep(0.2)
    return seen


def start(
    ctx: Context, name: str, *, database: str | None, cpus: set[int], workers: int, fake: targets.Target
) -> targets.Target:
    """A gateway as in the benchmark; with 2 workers, returns once both answer."""
    gw = targets.start_gateway(
        ctx.processes,
        ctx.work,
        api_base=fake.base,
        port=free_port(),
        database=database,
        cpus=cpus,
        name=name,
        workers=workers,
    )
    if workers > 1:
        answered = run_async(lambda: _worker_pids(gw.base.removesuffix("/v1"), workers))
        if len(answered) < workers:
            raise RuntimeError(f"{name}: only {len(answered)} of {workers} workers answered")
    return gw


def stop(ctx: Context, gw: targets.Target) -> None:
    assert gw.child is not None
    ctx.processes.stop(gw.child)


# --- measured loads ------------------------------------------------------------------------


def run_loads(
    ctx: Context,
    loads: dict[str, phases.Load],
    *,
    fake_root: int,
) -> dict[str, dict[str, Any]]:
    """`phases.alternate` in ROUNDS rounds of the scaling runs' durations; prints a line per load."""
    warmup, duration = ctx.phase
    out = run_async(
        lambda: phases.alternate(loads, rounds=ROUNDS, warmup=warmup, duration=duration, fake_root=fake_root)
    )
    for label, r in out.items():
        waits = r["waits"] or {}
        print(
            f"  {label:<22} {r['rps']:7.1f} req/s  p50 {r['p50'] * 1000:6.2f} ms  "
            f"cpu/req {(r['server_cpu_per_req'] or 0) * 1000:.3f} ms  gateway {r['server_util']:.0%} "
            f"(workers {', '.join(f'{w:.0%}' for w in r['worker_util'])})  lock waits "
            f"{waits.get('lock', 0):.2f}  other {r['other_util']:.0%}  errors {r['errors']}",
            flush=True,
        )
    return out


def chat(target: targets.Target, key: str) -> RequestSpec:
    return RequestSpec.chat(target.base, key, target.models["bench-json"], stream=False)


# --- the parts ----------------------------------------------------------------------------


def run_sqlite(ctx: Context) -> None:
    """The embedded store on the 1-connection scenarios; rows go to the main results."""
    gw = start(ctx, "gateway-sqlite", database=None, cpus=SERVER_CPUS, workers=1, fake=ctx.fake)
    gw.notes[0] = "store: embedded SQLite (no `DATABASE_URL`; the file in the gateway's `DATA_DIR`)"
    ctx.notes["gateway-sqlite"] = [*gw.notes, "diagnostic: 1-connection scenarios only"]
    print(f"gateway-sqlite {gw.base} (core 1): {'; '.join(gw.notes)}", flush=True)
    run_target(
        gw,
        fake_root=ctx.fake_root,
        warmup=ctx.warmup,
        duration=ctx.duration,
        results=ctx.results,
        only=NOSYNC_SCENARIOS,
    )
    stop(ctx, gw)


def run_hot_user(ctx: Context, database: str) -> dict[str, Any]:
    """16 connections over 16 accounts vs 16 on one, alternating; that one's books afterwards."""
    gw = start(ctx, "scale-hot-user", database=database, cpus=SERVER_CPUS, workers=1, fake=ctx.fake)
    print(f"one hot user on {gw.base} (Postgres `{database}`, one worker on core 1)", flush=True)
    spread = [books.create_user(gw) for _ in range(HOT_CONNS)]
    hot_user, hot_key = books.create_user(gw)
    loads = {
        "many": phases.Load(gw, [chat(gw, k) for _, k in spread], HOT_CONNS),
        "one": phases.Load(gw, [chat(gw, hot_key)], HOT_CONNS),
    }
    out = run_loads(ctx, loads, fake_root=ctx.fake_root)
    account = run_async(lambda: books.books(gw, hot_user, calls=out["one"]["calls"]))
    stop(ctx, gw)
    print(
        f"  hot user's books: {account['calls']} calls, {account['charges']} charges, "
        f"exact: {account['exact']} {account['checks']}",
        flush=True,
    )
    return {**out, "users": HOT_CONNS, "books": account}


def _worker_pair(
    ctx: Context,
    database: str,
    cpus: set[int],
    fake: targets.Target,
    fake_root: int,
    placement: str,
    *,
    spread: bool = False,
) -> dict[str, dict[str, Any]]:
    """A 1-worker and a 2-worker gateway on `cpus`, both running, loaded in alternating rounds: all
    connections on one account, and with `spread` also one account per connection (no shared row)."""
    gateways = {
        n: start(ctx, f"scale-{n}w-{placement}", database=database, cpus=cpus, workers=n, fake=fake)
        for n in (1, 2)
    }
    loads = {}
    for n, gw in gateways.items():
        conns = CONNS_PER_WORKER * n
        loads[f"{n}w-{placement}"] = phases.Load(gw, [chat(gw, gw.key)], conns, n)
        if spread:
            keys = [books.create_user(gw)[1] for _ in range(conns)]
            loads[f"{n}w-{placement}-spread"] = phases.Load(gw, [chat(gw, k) for k in keys], conns, n)
    try:
        return run_loads(ctx, loads, fake_root=fake_root)
    finally:
        for gw in gateways.values():
            stop(ctx, gw)


def run_workers(ctx: Context, database: str) -> dict[str, Any]:
    """One worker vs two, pinned to core 1, then with client, fake provider and gateway on both cores."""
    print(f"two workers vs one ({CONNS_PER_WORKER} connections per worker, non-streaming)", flush=True)
    out = _worker_pair(ctx, database, SERVER_CPUS, ctx.fake, ctx.fake_root, "core1", spread=True)
    fake_dir = ctx.work / "scale-fake"
    fake_dir.mkdir(parents=True, exist_ok=True)
    fake, fake_child = targets.start_fake(ctx.processes, fake_dir, cpus=BOTH_CPUS)
    os.sched_setaffinity(0, BOTH_CPUS)
    try:
        out |= _worker_pair(ctx, database, BOTH_CPUS, fake, fake_child.pid, "cores01")
    finally:
        os.sched_setaffinity(0, CLIENT_CPUS)
        ctx.processes.stop(fake_child)
    return out


def run_scale(ctx: Context) -> dict[str, Any]:
    """Commit cost, embedded store, one hot user, two workers vs one: `commit` and `scale` data."""
    print("commit cost of this disk (pg_test_fsync, asyncpg round trips)", flush=True)
    commit = commit_cost.measure(quick=ctx.quick)
    print(f"  {commit}", flush=True)
    run_sqlite(ctx)
    database = targets.create_database()
    ctx.databases.append(database)
    if database is None:
        return {"commit": commit, "scale": {"error": "Postgres unreachable: no hot-user or worker runs"}}
    hot = run_hot_user(ctx, database)
    workers = run_workers(ctx, database)
    warmup, duration = ctx.phase
    scale = {
        "hot_user": hot,
        "workers": workers,
        "warmup": warmup,
        "duration": duration,
        "rounds": ROUNDS,
        "wait_sample_s": phases.WAIT_SAMPLE_S,
    }
    return {"commit": commit, "scale": scale}


def run_only(args: argparse.Namespace) -> int:
    """`--only-scale`: the fake provider, direct and gateway on 1 connection, then `run_scale`."""
    warmup, duration = (0.5, 2.0) if args.quick else (args.warmup, args.duration)
    work = Path(tempfile.mkdtemp(prefix="llm-gateway-scale-"))
    processes = procs.Processes()
    results: list[dict[str, Any]] = []
    ctx: Context | None = None
    try:
        fake, fake_child = targets.start_fake(processes, work, cpus=CLIENT_CPUS)
        ctx = Context(processes, work, fake, fake_child.pid, bool(args.quick), warmup, duration, results, {})
        run_target(
            fake,
            fake_root=fake_child.pid,
            warmup=warmup,
            duration=duration,
            results=results,
            only=NOSYNC_SCENARIOS,
        )
        database = targets.create_database()
        ctx.databases.append(database)
        gw = start(ctx, "gateway", database=database, cpus=SERVER_CPUS, workers=1, fake=fake)
        run_target(
            gw,
            fake_root=fake_child.pid,
            warmup=warmup,
            duration=duration,
            results=results,
            only=NOSYNC_SCENARIOS,
        )
        stop(ctx, gw)
        data: dict[str, Any] = {"results": results, "quick": bool(args.quick), **run_scale(ctx)}
    finally:
        processes.stop_all()
        for db in ctx.databases if ctx else []:
            if db:
                targets.drop_database(db)
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(data))
    print()
    print(report.table(["target", "measured", "verdict"], target_rows(data)))
    errors = sum(r["errors"] for r in results)
    return 1 if errors else 0
