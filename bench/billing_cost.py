"""What billing costs on the request path: database round trips per call and added latency.

    python bench/billing_cost.py [--calls 200] [--rounds 5]

Starts the fake provider, a fresh Postgres database and gateways (`python -m app`) with
BILLING_ENABLED=true and =false, and makes sequential chat calls through each:
- round trips: a TCP proxy between one gateway and Postgres counts the protocol messages after
  which the client waits for the server (Sync, Query, Flush); cross-checked with the database's
  committed transactions (pg_stat_database.xact_commit);
- latency: gateways connected to Postgres directly, billing on and off, calls interleaved in
  rounds so that machine noise hits both alike; also the embedded SQLite store.
A measurement, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.targets import PG_SERVER  # noqa: E402  (BENCH_PG_SERVER; tests' servers exist only under make test)
from tests.billing.tcp_proxy import TcpProxy  # noqa: E402
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402


async def _sql(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _commits(dbname: str) -> int:
    # Backends publish their counters when idle (at most every second, at least every 10 s).
    value = asyncio.run(
        _sql(PG_SERVER, f"select xact_commit from pg_stat_database where datname = '{dbname}'")
    )
    return int(value)


def _call(http: httpx.Client, gw: Gateway, key: str, *, stream: bool) -> float:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "stream": stream}
    started = time.perf_counter()
    if stream:
        with http.stream(
            "POST", gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            for _ in r.iter_bytes():
                pass
    else:
        r = http.post(gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    return elapsed


def count_round_trips(tmp: Path, fake: FakeProvider, db_url: str, dbname: str, calls: int) -> list[str]:
    proxy = TcpProxy.for_url(db_url).start()
    lines = []
    try:
        for billing in ("true", "false"):
            gw = start_gateway(
                tmp / f"count-{billing}",
                models=[model_entry("fake", "fake", fake.base_url)],
                env={
                    "DATABASE_URL": proxy.url(db_url),
                    "BILLING_ENABLED": billing,
                    "DATABASE_POOL_SIZE": "2",
                },
            )
            try:
                _, key = gw.new_user(1000)
                with httpx.Client(timeout=30) as http:
                    for stream in (False, True):
                        for _ in range(5):  # warm: key cached, statements prepared, pool filled
                            _call(http, gw, key, stream=stream)
                        time.sleep(11)
                        before, commits = proxy.snapshot(), _commits(dbname)
                        for _ in range(calls):
                            _call(http, gw, key, stream=stream)
                        time.sleep(11)
                        after, commits = proxy.snapshot(), _commits(dbname) - commits
                        trips = (after["round_trips"] - before["round_trips"]) / calls
                        kinds = {k: (after[k] - before[k]) / calls for k in "QPBESH" if after[k] - before[k]}
                        mode = "stream" if stream else "json"
                        lines.append(
                            f"billing={billing:5} {mode:6}: {trips:.2f} round trips/call,"
                            f" {commits / calls:.2f} commits/call, messages/call {kinds}"
                        )
            finally:
                stop_gateway(gw)
    finally:
        proxy.stop()
    return lines


def measure_latency(tmp: Path, fake: FakeProvider, db_url: str, calls: int, rounds: int) -> list[str]:
    setups = {
        "postgres billing on ": {"DATABASE_URL": db_url, "BILLING_ENABLED": "true"},
        "postgres billing off": {"DATABASE_URL": db_url, "BILLING_ENABLED": "false"},
        "sqlite   billing on ": {"BILLING_ENABLED": "true"},
        "sqlite   billing off": {"BILLING_ENABLED": "false"},
    }
    gateways: dict[str, tuple[Gateway, str]] = {}
    samples: dict[tuple[str, bool], list[float]] = {}
    try:
        for i, (name, env) in enumerate(setups.items()):
            gw = start_gateway(
                tmp / f"latency-{i}", models=[model_entry("fake", "fake", fake.base_url)], env=env
            )
            gateways[name] = (gw, gw.new_user(1000)[1])
        with httpx.Client(timeout=30) as http:
            for gw, key in gateways.values():
                for stream in (False, True):
                    for _ in range(20):
                        _call(http, gw, key, stream=stream)
            for _ in range(rounds):
                for name, (gw, key) in gateways.items():
                    for stream in (False, True):
                        batch = [_call(http, gw, key, stream=stream) for _ in range(calls // rounds)]
                        samples.setdefault((name, stream), []).extend(batch)
    finally:
        for gw, _ in gateways.values():
            stop_gateway(gw)
    lines = []
    for (name, stream), values in samples.items():
        values.sort()
        p50, p90 = statistics.median(values), values[int(len(values) * 0.9)]
        lines.append(
            f"{name} {'stream' if stream else 'json':6}: p50 {p50 * 1000:6.2f} ms, p90 {p90 * 1000:6.2f} ms"
        )
    for store in ("postgres", "sqlite  "):
        for stream in (False, True):
            on = statistics.median(samples[(f"{store} billing on ", stream)])
            off = statistics.median(samples[(f"{store} billing off", stream)])
            mode = "stream" if stream else "json"
            lines.append(f"added by billing, {store.strip()} {mode}: {(on - off) * 1000:+.2f} ms p50")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    dbname = f"gwbench_{uuid.uuid4().hex[:10]}"
    db_url = PG_SERVER.rsplit("/", 1)[0] + f"/{dbname}"
    asyncio.run(_sql(PG_SERVER, f'create database "{dbname}"'))
    try:
        with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
            print("\n".join(count_round_trips(Path(tmp), fake, db_url, dbname, args.calls)), flush=True)
            print("\n".join(measure_latency(Path(tmp), fake, db_url, args.calls, args.rounds)), flush=True)
    finally:
        asyncio.run(_sql(PG_SERVER, f'drop database if exists "{dbname}" with (force)'))


if __name__ == "__main__":
    main()
