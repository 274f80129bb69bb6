"""Slow streams held open at once, and what the processes serving them hold meanwhile.

The load generator of `bench/streams_memory.py`: each stream is a connection of its own (no
keep-alive), read to its end and counted open from its first content chunk until it ends. New
streams are opened at a bounded rate, step by step up to each level of a `Plan`; at each step, once
all its streams are open, and again once all have closed, a reading is taken of every watched
process: its RSS (`VmRSS`), its open files, and its CPU meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.loadgen import CONTENT_MARK, DONE_MARK, MARK_TAIL, RequestSpec

SETTLE = 1.0  # seconds between the last stream of a step opening and its reading
AFTER_SETTLE = 3.0  # seconds after the last stream closed (the calls' settlements land meanwhile)
READINGS, READING_GAP = 5, 0.2  # RSS is the median of READINGS readings READING_GAP s apart
OPEN_TIMEOUT = 30.0  # seconds a step may take to have all its streams open
STREAM_TIMEOUT = 300.0  # seconds after which a stream counts as failed
FD_MARGIN = 200  # open files beyond the streams' own sockets (logs, pools, libraries)
FD_WANTED = 4096  # the soft open-file limit this process raises itself to (children inherit it)
LABEL = {"worker": "gateway worker", "fake": "fake provider", "client": "load generator"}


@dataclass(frozen=True)
class Plan:
    """How many streams are held open at each step, for how long, and whether a round repeats."""

    levels: tuple[int, ...]
    chunks: int  # content chunks per stream (1 s apart: the seconds it stays open)
    open_rate: float  # new streams per second
    second_round: bool  # the gateway: a second round of levels[-1] streams


@dataclass
class Tally:
    """The streams of one round: how many are open now and how they ended."""

    expected: int  # content chunks a complete stream has
    open: int = 0
    complete: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(what[:300])


def raise_fd_limit(wanted: int = FD_WANTED) -> None:
    """Raise this process's soft open-file limit towards `wanted` (never past the hard one).

    Called before any server starts, so the fake provider and the gateway inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def fd_limit(pid: int) -> int:
    """The soft open-file limit of a process, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return sys.maxsize if soft == "unlimited" else int(soft)
    return sys.maxsize


def fd_count(pid: int) -> int:
    """How many files (sockets included) a process has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_shortfall(pids: dict[str, int], streams: int) -> str | None:
    """Why `streams` streams cannot be held open by these processes, or None if they can."""
    sockets = {"worker": 2 * streams, "fake": streams, "client": streams}  # the worker: in and out
    short = {
        name: f"{LABEL[name]} (pid {pid}) may open {fd_limit(pid)} files, needs {sockets[name] + FD_MARGIN}"
        for name, pid in pids.items()
        if fd_limit(pid) < sockets[name] + FD_MARGIN
    }
    if not short:
        return None
    why = "**not measured**: open-file limit too low: " + "; ".join(short.values())
    if "worker" in short:
        why += (
            ". The gateway inherits the limit of whatever starts gunicorn (`deployments/gunicorn.conf.py` "
            "sets none; the systemd unit sets `LimitNOFILE=65536`)"
        )
    return why


def new_session() -> aiohttp.ClientSession:
    """No connection limit, no keep-alive: every stream is a connection, closed when it ends."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT),
        trust_env=False,
    )


async def hold(session: aiohttp.ClientSession, spec: RequestSpec, tally: Tally) -> None:
    """One stream, read to its end; open from its first content chunk until it ends."""
    opened = False
    try:
        async with session.post(spec.url, data=spec.body, headers=spec.headers) as resp:
            count, done, tail = 0, False, b""
            async for piece in resp.content.iter_any():
                window = tail + piece
                # A mark wholly inside the kept tail was already counted on the previous read.
                count += len(CONTENT_MARK.findall(window)) - len(CONTENT_MARK.findall(tail))
                if count and not opened:
                    opened = True
                    tally.open += 1
                done = done or DONE_MARK.search(window) is not None
                tail = window[-MARK_TAIL:]
            if resp.status != 200 or not done or count != tally.expected:
                tally.fail(f"{resp.status} done={done} chunks={count}/{tally.expected} {tail!r}")
            else:
                tally.complete += 1
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
    finally:
        if opened:
            tally.open -= 1


async def reading(pids: dict[str, int], tally: Tally, *, settle: float = SETTLE) -> dict[str, Any]:
    """After `settle` s: per process the median RSS, open files, and CPU (share of a core) meanwhile."""
    cpu0, t0 = procs.cpu_by_pid(pids.values()), time.perf_counter()
    await asyncio.sleep(settle)
    rss: dict[str, list[int]] = {name: [] for name in pids}
    for _ in range(READINGS):
        for name, pid in pids.items():
            rss[name].append(procs.rss_bytes(pid))
        await asyncio.sleep(READING_GAP)
    cpu1, wall = procs.cpu_by_pid(pids.values()), time.perf_counter() - t0
    return {
        "open": tally.open,
        "rss": {name: statistics.median(values) for name, values in rss.items()},
        "fds": {name: fd_count(pid) for name, pid in pids.items()},
        "cpu": {name: (cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0)) / wall for name, pid in pids.items()},
    }


async def one_round(
    spec: RequestSpec, pids: dict[str, int], levels: tuple[int, ...], plan: Plan
) -> dict[str, Any]:
    """Open streams step by step up to each level, read at each step, then again once all closed."""
    tally = Tally(expected=plan.chunks)
    tasks: list[asyncio.Task[None]] = []
    steps = []
    async with new_session() as session:
        for level in levels:
            while len(tasks) < level:
                tasks.append(asyncio.create_task(hold(session, spec, tally)))
                await asyncio.sleep(1 / plan.open_rate)
            deadline = time.monotonic() + OPEN_TIMEOUT
            while tally.open + tally.errors < level and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            steps.append({"streams": level, **await reading(pids, tally)})
        await asyncio.gather(*tasks)
    after = await reading(pids, tally, settle=AFTER_SETTLE)
    return {
        "steps": steps,
        "after": after,
        "streams": len(tasks),
        "complete": tally.complete,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
    }
