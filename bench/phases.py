"""Measured phases for the scaling runs: loads taken in alternating rounds, CPU per group and per worker,
and what the database's backends wait on meanwhile.

Two loads compared (one user vs many, one worker vs two) run as A B A B ...: whatever else the
machine does drifts over both alike. Each round opens its connections afresh, spread evenly over
the gateway's workers, and warms up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import loadgen, procs, targets
from bench.loadgen import RequestSpec, Shots, percentile
from bench.measure import cpu_snapshot, cpu_used

WAIT_SAMPLE_S = 0.05  # how often pg_stat_activity is read during a phase
WAIT_KEYS = ("active", "lock", "wal")
MAX_REDIALS = 20  # per connection, to land it on a worker that is short of connections


@dataclass
class Tally:
    """What the rounds of one load added up to."""

    conns: int
    shots: Shots = field(default_factory=Shots)
    warm: Shots = field(default_factory=Shots)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # group -> CPU seconds
    workers: dict[int, float] = field(default_factory=dict)  # worker pid -> CPU seconds
    waits: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WAIT_KEYS, 0.0))
    samples: int = 0

    @staticmethod
    def add_shots(into: Shots, shots: Shots) -> None:
        into.latencies += shots.latencies
        into.errors += shots.errors
        into.error_samples = (into.error_samples + shots.error_samples)[:3]

    def summary(self) -> dict[str, Any]:
        """Throughput, latency, CPU per request and per group, mean waits: the phase's data."""
        n, wall, cpu = self.shots.ok, self.wall, self.cpu
        other = cpu["busy"] - cpu["server"] - cpu["fake"] - cpu["services"] - cpu["client"]
        return {
            "conns": self.conns,
            "requests": n,
            "calls": n + self.warm.ok,  # every successful call, the warm-ups' included
            "errors": self.shots.errors + self.warm.errors,
            "error_samples": (self.warm.error_samples + self.shots.error_samples)[:3],
            "wall": wall,
            "rps": n / wall if wall else 0.0,
            "p50": percentile(self.shots.latencies, 50),
            "p99": percentile(self.shots.latencies, 99),
            "server_cpu_per_req": cpu["server"] / n if n else None,
            "server_util": cpu["server"] / wall,
            # Busy or waiting for a CPU: below 1 per worker, the gateway sat idle, waiting on I/O.
            "server_demand": (cpu["server"] + cpu["server_wait"]) / wall,
            "worker_util": sorted((w / wall for w in self.workers.values()), reverse=True),
            "services_cpu_per_req": cpu["services"] / n if n else None,
            "redis_util": cpu["redis"] / wall,
            "client_util": cpu["client"] / wall,
            "fake_util": cpu["fake"] / wall,
            "other_util": max(0.0, other / wall),
            "waits": {k: v / self.samples for k, v in self.waits.items()} if self.samples else None,
        }


async def _waits(database: str, stop: asyncio.Event, tally: Tally) -> None:
    """Add up, every WAIT_SAMPLE_S, the database's active backends and those waiting on a lock / the WAL."""
    import asyncpg

    conn = await asyncpg.connect(targets.PG_SERVER, timeout=5)  # not the measured database
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "select wait_event_type, wait_event, count(*) as n from pg_stat_activity "
                "where datname = $1 and state = 'active' group by 1, 2",
                database,
            )
            for r in rows:
                tally.waits["active"] += r["n"]
                tally.waits["lock"] += r["n"] if r["wait_event_type"] == "Lock" else 0
                tally.waits["wal"] += r["n"] if (r["wait_event"] or "").startswith("WAL") else 0
            tally.samples += 1
            await asyncio.sleep(WAIT_SAMPLE_S)
    finally:
        await conn.close()


def run_queue_wait(pids: Sequence[int]) -> dict[int, float]:
    """Seconds each process's main thread (a worker's event loop) spent runnable but not running,
    from the second field of `/proc/<pid>/schedstat`."""
    out = {}
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return out


async def _snapshot(target: targets.Target, fake_root: int) -> dict[str, Any]:
    snap = await cpu_snapshot(target, fake_root)
    snap["redis"] = procs.cpu_by_pid(procs.pids_named({"redis-server"}))
    snap["server_wait"] = run_queue_wait(procs.process_tree(target.root_pid) if target.root_pid else [])
    return snap


@dataclass(frozen=True)
class Load:
    """What one run sends: `conns` connections to `target` (a gateway of `workers` workers),
    connection i sending `specs[i % len(specs)]`."""

    target: targets.Target
    specs: Sequence[RequestSpec]
    conns: int
    workers: int = 1


async def _worker_of(session: aiohttp.ClientSession, root: str) -> int:
    async with session.get(root + "/health/system") as resp:
        return int(orjson.loads(await resp.read())["pid"])


async def open_connections(load: Load) -> list[aiohttp.ClientSession]:
    """`load.conns` one-connection sessions spread evenly over the workers.

    Workers share gunicorn's listening socket, and the first one awake accepts every connection
    opened at once (all of them, with two workers on one core); a connection that lands on a
    worker with its share already is closed and opened again (up to MAX_REDIALS times each).
    """
    root = load.target.base.removesuffix("/v1")
    conns = load.conns
    quota = -(-conns // load.workers)
    per_worker: dict[int, int] = {}
    sessions: list[aiohttp.ClientSession] = []
    redials = 0
    while len(sessions) < conns:
        session = loadgen.new_session(1)
        pid = await _worker_of(session, root)
        if per_worker.get(pid, 0) >= quota and redials < MAX_REDIALS * conns:
            redials += 1
            await session.close()
            continue
        per_worker[pid] = per_worker.get(pid, 0) + 1
        sessions.append(session)
    return sessions


async def _load(
    sessions: list[aiohttp.ClientSession], specs: Sequence[RequestSpec], duration: float
) -> tuple[Shots, float]:
    """Every connection sending its request back to back for `duration` seconds: (shots, wall)."""
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            loadgen.run_phase(s, [specs[i % len(specs)]], conns=1, duration=duration)
            for i, s in enumerate(sessions)
        )
    )
    wall = time.perf_counter() - started
    shots = Shots()
    for one, _ in runs:
        Tally.add_shots(shots, one)
    return shots, wall


async def one_round(load: Load, tally: Tally, *, warmup: float, duration: float, fake_root: int) -> None:
    """A warm-up, then `duration` seconds of closed-loop load measured into `tally`."""
    target = load.target
    sessions = await open_connections(load)
    try:
        if warmup > 0:
            warm, _ = await _load(sessions, load.specs, warmup)
            Tally.add_shots(tally.warm, warm)
        before = await _snapshot(target, fake_root)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_waits(target.database, stop, tally)) if target.database else None
        shots, wall = await _load(sessions, load.specs, duration)
        stop.set()
        after = await _snapshot(target, fake_root)
        if sampler:
            await sampler
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    Tally.add_shots(tally.shots, shots)
    tally.wall += wall
    for key, used in cpu_used(before, after).items():
        tally.cpu[key] = tally.cpu.get(key, 0.0) + used
    for pid, t in after["server"].items():
        if pid != target.root_pid:  # the gunicorn master is not a worker
            tally.workers[pid] = tally.workers.get(pid, 0.0) + t - before["server"].get(pid, 0.0)


async def alternate(
    loads: dict[str, Load], *, rounds: int, warmup: float, duration: float, fake_root: int
) -> dict[str, dict[str, Any]]:
    """Each load for `duration` seconds in all, in `rounds` alternating rounds; a summary per load."""
    tallies = {name: Tally(load.conns) for name, load in loads.items()}
    for _ in range(rounds):
        for name, load in loads.items():
            await one_round(
                load, tallies[name], warmup=warmup, duration=duration / rounds, fake_root=fake_root
            )
    return {name: t.summary() for name, t in tallies.items()}
