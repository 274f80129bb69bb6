"""Placement, scenarios and measuring one scenario against one server (latency, CPU, noise)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from bench import loadgen, procs, report, targets
from bench.loadgen import RequestSpec, percentile

CLIENT_CPUS = {0}
SERVER_CPUS = {1}
CORE0_BUSY = 0.90  # above this, core 0 (client + provider) may be what limits a scenario
OTHER_BUSY = 0.10  # CPU used by processes outside the benchmark, as a share of one core


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    model: str
    stream: bool
    conns: int
    protocol: str = "chat"


SCENARIOS = [
    Scenario("json-c1", "Non-streaming, 1 connection", "bench-json", False, 1),
    Scenario("json-c16", "Non-streaming, 16 connections", "bench-json", False, 16),
    Scenario("stream-c1", f"Streaming {targets.STREAM_CHUNKS} chunks, 1 connection", "bench-stream", True, 1),
    Scenario(
        "stream-c16", f"Streaming {targets.STREAM_CHUNKS} chunks, 16 connections", "bench-stream", True, 16
    ),
    Scenario("stream1-c16", "Streaming 1 chunk, 16 connections", "bench-stream1", True, 16),
    Scenario(
        "resp-stream-c16",
        f"Responses API, streaming {targets.STREAM_CHUNKS} deltas, 16 connections",
        "bench-stream",
        True,
        16,
        "responses",
    ),
    Scenario(
        "resp-stream1-c16",
        "Responses API, streaming 1 delta, 16 connections",
        "bench-stream1",
        True,
        16,
        "responses",
    ),
    Scenario(
        "msg-stream-c16",
        f"Anthropic Messages, streaming {targets.STREAM_CHUNKS} deltas, 16 connections",
        "bench-msg-stream",
        True,
        16,
        "messages",
    ),
    Scenario(
        "msg-stream1-c16",
        "Anthropic Messages, streaming 1 delta, 16 connections",
        "bench-msg-stream1",
        True,
        16,
        "messages",
    ),
]
# LiteLLM's proxy is measured on chat only (its Responses and Messages routes need the proxy's
# own MCP and audio extras, and a config of their own).
CHAT_ONLY_TARGETS = ("litellm-proxy",)

TARGET_ORDER = ["direct", "gateway", "gateway-nosync", "gateway-sqlite", "litellm-proxy", "portkey"]

TARGET_LABEL = {
    "direct": "direct",
    "gateway": "gateway",
    "gateway-nosync": "gateway, Postgres `synchronous_commit=off` (diagnostic)",
    "gateway-sqlite": "gateway, embedded SQLite store (diagnostic)",
    "litellm-proxy": "LiteLLM proxy",
    "portkey": "Portkey gateway",
}
# The diagnostic variant runs only where latency, not throughput, is the question.
NOSYNC_SCENARIOS = ("json-c1", "stream-c1")
CPU_KEYS = ("server", "fake", "services", "client", "busy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_async(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on uvloop when available (the load generator's own cost matters)."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(factory())
    except ImportError:
        return asyncio.run(factory())


async def service_pids(database: str | None) -> list[int]:
    """Redis (shared with anything else on the machine) and the backends of our own database."""
    pids = procs.pids_named({"redis-server"})
    if database:
        pids += await targets.pg_backends(database)
    return pids


async def cpu_snapshot(target: targets.Target, fake_root: int) -> dict[str, dict[int, float] | float]:
    """Per-process CPU seconds so far, by group; see `cpu_used`."""
    server = procs.process_tree(target.root_pid) if target.name != "direct" and target.root_pid else []
    return {
        "server": procs.cpu_by_pid(server),
        "fake": procs.cpu_by_pid(procs.process_tree(fake_root)),
        "services": procs.cpu_by_pid(await service_pids(target.database)),
        "client": own_cpu(),
        "busy": procs.busy_seconds()["all"],
    }


def cpu_used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (processes that came or went handled)."""
    out = {}
    for key, now in after.items():
        out[key] = procs.cpu_delta(before[key], now) if isinstance(now, dict) else now - before[key]
    return out


async def measure(
    target: targets.Target, sc: Scenario, *, fake_root: int, warmup: float, duration: float
) -> dict[str, Any]:
    spec = RequestSpec.for_protocol(
        sc.protocol, target.base, target.key, target.models[sc.model], stream=sc.stream
    )
    extra = {**target.headers, **target.protocol_headers.get(sc.protocol, {})}
    if extra:
        spec = replace(spec, headers={**spec.headers, **extra})
    async with loadgen.new_session(sc.conns) as session:
        if warmup > 0:
            await loadgen.run_phase(session, [spec], conns=sc.conns, duration=warmup)
        snap0 = await cpu_snapshot(target, fake_root)
        shots, wall = await loadgen.run_phase(session, [spec], conns=sc.conns, duration=duration)
        snap1 = await cpu_snapshot(target, fake_root)
    used = cpu_used(snap0, snap1)
    server_cpu, fake_cpu, svc_cpu, client_cpu, busy = (used[k] for k in CPU_KEYS)
    has_server = target.name != "direct"
    # Whatever else ran on the machine meanwhile (other people's tests, say), as a share of a core.
    other_cpu = busy - server_cpu - fake_cpu - svc_cpu - client_cpu
    n = shots.ok
    out: dict[str, Any] = {
        "target": target.name,
        "scenario": sc.key,
        "requests": n,
        "errors": shots.errors,
        "error_samples": shots.error_samples,
        "wall": wall,
        "rps": n / wall if wall else 0.0,
        "p50": percentile(shots.latencies, 50),
        "p99": percentile(shots.latencies, 99),
        "ttft_p50": percentile(shots.ttfts, 50) if sc.stream else None,
        "ttft_p99": percentile(shots.ttfts, 99) if sc.stream else None,
        "chunks_mean": sum(shots.chunks) / len(shots.chunks) if shots.chunks else None,
        "server_cpu": server_cpu if has_server else None,
        "server_cpu_per_req": server_cpu / n if has_server and n else None,
        "server_util": server_cpu / wall if has_server else None,
        "fake_util": fake_cpu / wall,
        "client_util": client_cpu / wall,
        "services_cpu_per_req": svc_cpu / n if n and target.name.startswith("gateway") else None,
        "other_util": max(0.0, other_cpu / wall),
    }
    return out


def print_row(r: dict[str, Any]) -> None:
    line = (
        f"  {r['target']:<14} {r['scenario']:<12} {r['rps']:8.1f} req/s  p50 {report.ms(r['p50'])} ms"
        f"  p99 {report.ms(r['p99'])} ms"
    )
    if r["ttft_p50"] is not None:
        line += f"  ttft p50 {report.ms(r['ttft_p50'])} ms  chunks {report.num(r['chunks_mean'], '.0f')}"
    if r["server_cpu_per_req"] is not None:
        line += f"  cpu/req {report.ms(r['server_cpu_per_req'], 3)} ms  core1 {r['server_util']:.0%}"
    line += f"  core0 {r['client_util'] + r['fake_util']:.0%}  other {r['other_util']:.0%}"
    if r["errors"]:
        line += f"  ERRORS {r['errors']}: {r['error_samples'][:1]}"
    print(line, flush=True)


def run_target(
    target: targets.Target,
    *,
    fake_root: int,
    warmup: float,
    duration: float,
    results: list[dict[str, Any]],
    only: tuple[str, ...] | None = None,
) -> None:
    async def all_scenarios() -> None:
        for sc in SCENARIOS:
            if only is not None and sc.key not in only:
                continue
            if sc.protocol != "chat" and target.name in CHAT_ONLY_TARGETS:
                continue
            r = await measure(target, sc, fake_root=fake_root, warmup=warmup, duration=duration)
            results.append(r)
            print_row(r)

    run_async(all_scenarios)


def other_load(seconds: float = 2.0) -> float:
    """CPU used by processes other than this one over `seconds`, as a share of one core."""
    busy0, own0 = procs.busy_seconds()["all"], own_cpu()
    time.sleep(seconds)
    return max(0.0, (procs.busy_seconds()["all"] - busy0) - (own_cpu() - own0)) / seconds


def wait_for_quiet(limit: float) -> float:
    """Wait up to `limit` seconds for the machine to be idle; returns the last reading."""
    deadline = time.monotonic() + limit
    load = other_load()
    while load > OTHER_BUSY and time.monotonic() < deadline:
        print(f"  machine busy ({load:.0%} of a core used by other processes); waiting", flush=True)
        time.sleep(8)
        load = other_load()
    return load
