"""The soak test: steady mixed load on the gateway, its RSS and event-loop stalls over time."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import loadgen, procs, report, targets
from bench.loadgen import RequestSpec, Shots, percentile
from bench.measure import (
    CLIENT_CPUS,
    OTHER_BUSY,
    SERVER_CPUS,
    cpu_snapshot,
    cpu_used,
    free_port,
    run_async,
    wait_for_quiet,
)
from bench.tables import _pct

ROOT = Path(__file__).resolve().parents[1]


class ProbeLog:
    """Reads the probe process's lines (`<monotonic start> <seconds> <status>`) as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> tuple[list[float], int]:
        """Latencies of the calls logged since the last read, and how many failed."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return [], 0
        cut = data.rfind(b"\n") + 1  # a line being written stays for the next read
        self.offset += cut
        latencies, failed = [], 0
        for line in data[:cut].splitlines():
            _, took, status = line.split()
            if status == b"200":
                latencies.append(float(took))
            else:
                failed += 1
        return latencies, failed


async def soak_load(
    gw: targets.Target, *, seconds: float, conns: int, interval: float, worker: int, fake_root: int,
    probe: ProbeLog, probe_pid: int,
) -> list[dict[str, Any]]:  # fmt: skip
    specs = [
        RequestSpec.chat(gw.base, gw.key, "bench-json", stream=False),
        RequestSpec.chat(gw.base, gw.key, "bench-stream", stream=True),
    ]
    root = gw.base.rsplit("/v1", 1)[0]
    window = [Shots()]
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def cpu_now() -> dict[str, Any]:
        snap = await cpu_snapshot(gw, fake_root)
        snap["probe"] = procs.cpu_by_pid(procs.process_tree(probe_pid))
        return snap

    async with loadgen.new_session(conns) as session, loadgen.new_session(1) as info_session:

        async def system() -> dict[str, Any]:
            async with info_session.get(root + "/health/system") as resp:
                return dict(orjson.loads(await resp.read()))

        def sample(t: float, before: dict[str, Any], after: dict[str, Any], info: dict[str, Any]) -> None:
            w = window[0]
            window[0] = Shots()
            probe_latencies, probe_failed = probe.new()
            span = interval if t > 0 else 1.0
            used = cpu_used(before, after)
            other = used["busy"] - sum(v for k, v in used.items() if k != "busy")
            samples.append(
                {
                    "t": t,
                    "requests": w.ok,
                    "errors": w.errors + probe_failed,
                    "error_samples": w.error_samples,
                    "rps": w.ok / interval if t > 0 else 0.0,
                    "p50": percentile(w.latencies, 50),
                    "p99": percentile(w.latencies, 99),
                    "rss": procs.rss_bytes(worker),
                    "rss_app": info.get("rss_bytes"),
                    "lag_ms": info.get("event_loop_lag_ms"),
                    "probe_p50_ms": percentile(probe_latencies, 50) * 1000 if probe_latencies else None,
                    "probe_max_ms": max(probe_latencies) * 1000 if probe_latencies else None,
                    "cpu_util": used["server"] / span if t > 0 else 0.0,
                    "other_util": max(0.0, other / span) if t > 0 else 0.0,
                }
            )

        async def loop(i: int) -> None:
            k = i
            while time.perf_counter() < deadline:
                await loadgen.one(session, specs[k % len(specs)], window[0])
                k += 1

        async def sampler() -> None:
            before = await cpu_now()
            sample(0.0, before, before, await system())
            n = 1
            while True:
                wake = started + n * interval
                if wake > deadline + 0.5:
                    break
                await asyncio.sleep(max(0.0, wake - time.perf_counter()))
                info = await system()
                after = await cpu_now()
                sample(round(time.perf_counter() - started), before, after, info)
                before = after
                last = samples[-1]
                print(
                    f"  t={last['t']:>5.0f}s  {last['rps']:7.1f} req/s  rss {last['rss'] / 2**20:7.1f} MiB  "
                    f"/health max {last['probe_max_ms'] or 0:6.1f} ms  lag {last['lag_ms']} ms  "
                    f"other {last['other_util']:.0%}  errors {last['errors']}",
                    flush=True,
                )
                n += 1

        await asyncio.gather(sampler(), *(loop(i) for i in range(conns)))
    return samples


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Start the fake provider and the gateway, load it for `args.soak` seconds; the samples."""
    seconds = float(args.soak)
    interval = 10.0 if seconds >= 60 else max(2.0, seconds / 6)
    idle_before = wait_for_quiet(args.wait_quiet)
    print(f"other processes before the soak: {idle_before:.0%} of a core", flush=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="llm-gateway-soak-"))
    processes = procs.Processes()
    database: str | None = None
    try:
        fake, fake_child = targets.start_fake(processes, work, cpus=CLIENT_CPUS)
        database = targets.create_database()
        gw = targets.start_gateway(
            processes, work, api_base=fake.base, port=free_port(), database=database, cpus=SERVER_CPUS
        )
        worker = targets.worker_pid(gw)
        assert worker is not None
        print(
            f"soak: {seconds:.0f} s, {args.soak_conns} connections "
            f"(json / {targets.STREAM_CHUNKS}-chunk stream "
            f"alternating), sample every {interval:g} s; gateway worker pid {worker}",
            flush=True,
        )
        probe_log = work / "probe.log"
        probe_child = processes.start(
            "probe",
            [sys.executable, str(ROOT / "bench" / "probe.py"), gw.base.rsplit("/v1", 1)[0] + "/health", "0.1",
             str(seconds + interval + 5), str(probe_log)],
            env=targets.base_env(),
            cwd=work,
            log_path=work / "probe.stderr",
            cpus=CLIENT_CPUS,
        )  # fmt: skip
        samples = run_async(
            lambda: soak_load(
                gw, seconds=seconds, conns=args.soak_conns, interval=interval, worker=worker,
                fake_root=fake_child.pid, probe=ProbeLog(probe_log), probe_pid=probe_child.pid,
            )
        )  # fmt: skip
        notes = gw.notes
    finally:
        processes.stop_all()
        if database:
            targets.drop_database(database)
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    data = summarize_soak(
        {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": seconds,
            "interval": interval,
            "conns": args.soak_conns,
            "elapsed": time.monotonic() - started,
            "machine": report.machine(),
            "revision": report.git_revision(),
            "notes": notes,
            "samples": samples,
        }
    )
    return data


def summarize_soak(data: dict[str, Any]) -> dict[str, Any]:
    """The verdict fields, from the samples (so a re-render recomputes them)."""
    samples = data["samples"]
    loaded = [x for x in samples if x["t"] > 0]
    start = loaded[0] if loaded else samples[0]
    end = samples[-1]
    mid = min(loaded, key=lambda x: abs(x["t"] - end["t"] / 2)) if loaded else start
    second_half_requests = sum(x["requests"] for x in loaded if x["t"] > mid["t"])
    growth_2nd = end["rss"] - mid["rss"]
    # Windows where other processes took a real share of the machine cannot tell a stall of the
    # worker from the worker waiting for a CPU; the verdict is taken on the quiet ones.
    quiet = [x for x in loaded if (x.get("other_util") or 0.0) <= OTHER_BUSY]
    return {
        **data,
        "rss_idle": samples[0]["rss"],
        "rss_start": start["rss"],
        "rss_end": end["rss"],
        "rss_second_half": growth_2nd,
        "bytes_per_request_2nd_half": growth_2nd / second_half_requests if second_half_requests else None,
        "requests": sum(x["requests"] for x in loaded),
        "errors": sum(x["errors"] for x in samples),
        "max_stall_ms": max((x["probe_max_ms"] or 0.0) for x in samples),
        "quiet_windows": len(quiet),
        "windows": len(loaded),
        "max_stall_quiet_ms": max((x["probe_max_ms"] or 0.0) for x in quiet) if quiet else None,
        "max_lag_ms": max((x["lag_ms"] or 0.0) for x in samples),
        # Flat: no longer rising once warm: the second half grows by at most 1% and 4 MiB.
        "flat": growth_2nd <= min(0.01 * start["rss"], 4 * 2**20),
    }


def stall_verdict(data: dict[str, Any]) -> bool | None:
    """True: no stall over 50 ms in the quiet windows; None: no quiet window to judge by."""
    worst = data.get("max_stall_quiet_ms")
    return None if worst is None else worst <= 50


def render_soak(data: dict[str, Any]) -> str:
    data = summarize_soak(data)
    mib = 2**20
    chunks = targets.STREAM_CHUNKS
    setup = "; ".join(data["notes"])
    lines = [
        "## Soak",
        "",
        f"Run {data['date']} on revision {data['revision']}: {data['seconds']:.0f} s against the gateway "
        f"(set up as in the benchmark: gunicorn, one worker on core 1, {setup}), {data['conns']} connections "
        f"in a closed loop alternating non-streaming calls and {chunks}-chunk streams.",
        "",
        f"Every {data['interval']:g} s: the worker's RSS (`VmRSS` in `/proc/<worker>/status`), its CPU, "
        "`GET /health/system` (`event_loop_lag_ms`: one `asyncio.sleep(0)` round trip inside the worker), "
        "and, from a separate connection every 100 ms, the latency of `GET /health`, which can be no "
        "shorter than any event-loop stall in that window (it also includes queueing behind the load); the "
        "probe is a process of its own (`bench/probe.py`, blocking `http.client`) so the load generator "
        "cannot delay it. *other*: CPU used by processes outside the test, as a share of one core.",
        "",
    ]
    header = ["t s", "req/s", "p50 ms", "p99 ms", "worker RSS MiB", "worker CPU", "/health p50 ms",
              "/health max ms", "loop lag ms", "other", "errors"]  # fmt: skip
    rows = []
    for s in data["samples"]:
        rows.append([
            f"{s['t']:.0f}", report.num(s["rps"], ".1f"), report.ms(s["p50"]), report.ms(s["p99"]),
            f"{s['rss'] / mib:.1f}", f"{s['cpu_util']:.0%}", report.num(s["probe_p50_ms"], ".2f"),
            report.num(s["probe_max_ms"], ".1f"), report.num(s["lag_ms"], ".2f"), _pct(s.get("other_util")),
            str(s["errors"]),
        ])  # fmt: skip
    lines += [report.table(header, rows), ""]
    busiest = max((x.get("other_util") or 0.0 for x in data["samples"]), default=0.0)
    if busiest > OTHER_BUSY:
        lines += [
            f"The machine was not quiet: other processes used up to {busiest:.0%} of a core in a window "
            "(*other*); a slow `/health` probe in such a window may be the worker waiting for a CPU, not "
            "a stall of its own.",
            "",
        ]
    bpr = data["bytes_per_request_2nd_half"]
    per_request = f" ({bpr:+.1f} bytes per request)" if bpr is not None else ""
    growth = (data["rss_end"] - data["rss_start"]) / mib
    memory = "flat" if data["flat"] else "growing"
    ok = stall_verdict(data)
    stall = {True: "no stall over 50 ms", False: "a stall over 50 ms", None: "no quiet window to judge by"}[
        ok
    ]
    quiet = data["max_stall_quiet_ms"]
    lines += [
        "Verdict:",
        "",
        f"- requests: {data['requests']} ({data['errors']} errors)",
        f"- worker RSS: {data['rss_idle'] / mib:.1f} MiB idle, {data['rss_start'] / mib:.1f} MiB after the "
        f"first window, {data['rss_end'] / mib:.1f} MiB at the end ({growth:+.1f} MiB); second half "
        f"{data['rss_second_half'] / mib:+.1f} MiB{per_request}: **{memory}** (flat = the second half grows "
        "by at most 1% and 4 MiB)",
        f"- event loop: slowest `/health` probe {report.num(quiet, '.1f')} ms in the {data['quiet_windows']} "
        f"quiet windows of {data['windows']} (other <= {OTHER_BUSY:.0%}; {data['max_stall_ms']:.1f} ms over "
        f"all windows), largest `/health/system` lag {data['max_lag_ms']:.2f} ms: **{stall}**",
        "",
        f"<!-- soak-data: {orjson.dumps(data).decode()} -->",
    ]
    return "\n".join(lines)
