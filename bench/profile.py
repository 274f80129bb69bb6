"""Where the gateway's CPU goes on a non-streamed call: py-spy on the worker, by component.

After the measured scenarios (sampling slows the worker, so it never runs during one), the
same non-streamed load runs once more with py-spy sampling the gunicorn worker. Each sample is
given to one component: the innermost frame that belongs to a component names it, so time in
the standard library goes to whoever called it. A sample whose innermost Python frame is the
event loop itself is C work between Python frames: uvloop's I/O, system calls, asyncpg's and
httptools' parsers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import report, targets
from bench.measure import SCENARIOS, measure, run_async

SCENARIO = "json-c16"
RATE_HZ = 250
# (component, patterns on a frame's file), tried in order; the first match names the frame.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    (
        "token estimate (tiktoken)",
        ("tiktoken/", "litellm/litellm_core_utils/token_counter", "app/billing/estimate"),
    ),
    ("Postgres: asyncpg and the store", ("asyncpg/", "app/store/")),
    ("rate limits: redis-py, limits, the limiter", ("redis/", "limits/", "app/ratelimit/")),
    ("metrics (prometheus_client)", ("prometheus_client/", "app/observability/")),
    ("LiteLLM Router: deployment choice, retries, cooldowns", ("litellm/",)),
    ("provider call: aiohttp and the fast path", ("aiohttp/", "yarl/", "multidict/", "app/llm/")),
    ("HTTP server: uvicorn, httptools, gunicorn", ("uvicorn/", "httptools/", "gunicorn", "uvicorn_worker/")),
    ("FastAPI and Starlette (request, responses)", ("fastapi/", "starlette/")),
    ("billing, lifecycle, auth, routes, middleware", ("app/",)),
]
LOOP = "event loop and C: uvloop I/O, system calls, C parsers"
OTHER = "other (standard library, interpreter)"
_FRAME = re.compile(r"\((.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy of this venv (requirements-dev.txt), or on PATH."""
    own = Path(sys.executable).with_name("py-spy")
    return str(own) if own.exists() else shutil.which("py-spy")


def component(frames: list[str]) -> str:
    """The component of one sample, from its frames (outermost first).

    Frames above the event loop's runner are the server's start-up (gunicorn, uvicorn), not
    the work being done: the walk stops there.
    """
    for depth, frame in enumerate(reversed(frames)):
        m = _FRAME.search(frame)
        path = m.group(1) if m else frame
        if "asyncio/runners.py" in path:
            return LOOP if depth == 0 else OTHER
        for name, patterns in COMPONENTS:
            if any(p in path for p in patterns):
                return name
    return OTHER


def aggregate(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) output as {component: share of samples}, and the sample count."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[component(stack.split(";"))] += int(n)
        total += int(n)
    return {"samples": total, "shares": {k: v / total for k, v in counts.most_common()} if total else {}}


def run(target: targets.Target, *, fake_root: int, work: Path, seconds: float) -> dict[str, Any]:
    """Sample the gateway's worker for `seconds` under the non-streamed, 16-connection load."""
    spy, pid = py_spy(), targets.worker_pid(target)
    if spy is None or pid is None:
        return {"notes": ["py-spy is not installed (`bash scripts/bootstrap.sh --dev`)"]}
    out = work / "profile.txt"
    cmd = [spy, "record", "--nonblocking", "-r", str(RATE_HZ), "-d", str(int(seconds)), "-p", str(pid)]
    cmd += ["-f", "raw", "-o", str(out)]
    sc = next(s for s in SCENARIOS if s.key == SCENARIO)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached before the load starts
    run_async(lambda: measure(target, sc, fake_root=fake_root, warmup=0, duration=seconds))
    _, err = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0 or not out.exists():
        return {"notes": [f"py-spy failed: {err.decode(errors='replace')[-300:]}"]}
    data = aggregate(out.read_text())
    data.update(scenario=SCENARIO, seconds=seconds, rate_hz=RATE_HZ, notes=[])
    return data


def render(data: dict[str, Any]) -> list[str]:
    """The subsection of the bench section."""
    profile = data.get("profile")
    if not profile:
        return []
    lines = ["### Where the gateway's CPU goes (py-spy)", ""]
    if not profile.get("shares"):
        return [*lines, "Not profiled: " + "; ".join(profile.get("notes") or ["no samples"]), ""]
    d = next((r for r in data["results"] if r["target"] == "gateway" and r["scenario"] == SCENARIO), None)
    cpu = d["server_cpu_per_req"] if d else None
    lines.append(
        f"The gateway worker under the non-streamed, 16-connection load, sampled by py-spy at "
        f"{profile['rate_hz']} Hz for {profile['seconds']:.0f} s ({profile['samples']:,} samples) after "
        "the measured scenarios. Each sample goes to the innermost frame's component; the standard "
        "library's frames go to their caller's. *Share of the call's CPU* applies the share to the CPU "
        "per request measured above. py-spy counts a sample whenever the worker is runnable, also "
        "while it waits for its core; Postgres's and Redis's processes are not pinned and often run "
        "on core 1, and a query's write wakes its backend there, so the Postgres row carries some of "
        "the backends' own time."
    )
    lines.append("")
    rows = []
    for name, share in profile["shares"].items():
        per_call = report.ms(share * cpu, 3) if cpu is not None else "-"
        rows.append([name, f"{share:.1%}", per_call])
    lines.append(report.table(["component", "samples", "share of the call's CPU, ms"], rows))
    lines.append("")
    return lines
