"""docs/PERFORMANCE.md: generated sections between markers, the rest of the file left alone.

Each run replaces only its own section (`bench`, `soak`) and regenerates `targets` from the
data embedded in both sections, so a soak run does not erase the benchmark and vice versa.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PERFORMANCE.md"
SECTIONS = ("targets", "bench", "soak")

INTRO = """# Performance

How the gateway compares with calling the provider directly and with LiteLLM's own proxy,
measured side by side in one run by `make bench` (`bench/run.py`), and how it behaves under a
steady load over time (`make soak SECONDS=600`). Everything between the `BEGIN GENERATED` and
`END GENERATED` markers is rewritten by those commands; text outside them is kept.

"""


def _begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->"


def _end(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


def read_sections(text: str) -> dict[str, str]:
    out = {}
    for name in SECTIONS:
        m = re.search(re.escape(_begin(name)) + r"\n(.*?)" + re.escape(_end(name)), text, re.S)
        if m:
            out[name] = m.group(1)
    return out


def embedded(section: str | None, name: str) -> dict[str, Any] | None:
    """The JSON a section carries in `<!-- name-data: {...} -->`."""
    if not section:
        return None
    m = re.search(rf"<!-- {name}-data: (.*?) -->", section, re.S)
    return json.loads(m.group(1)) if m else None


def write(path: Path, updates: dict[str, str]) -> None:
    """Replace (or append, in SECTIONS order) the given generated sections of `path`."""
    text = path.read_text() if path.exists() else INTRO
    for name in SECTIONS:
        if name not in updates:
            continue
        block = f"{_begin(name)}\n{updates[name].rstrip()}\n{_end(name)}"
        pattern = re.compile(re.escape(_begin(name)) + r".*?" + re.escape(_end(name)), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=block: b, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


# --- facts about the machine and the software ---------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "litellm",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvicorn-worker",
        "gunicorn",
        "aiohttp",
        "uvloop",
        "asyncpg",
        "redis",
        "orjson",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "-"
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "app", "deployments"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (app/ or deployments/ modified)" if dirty else "")


# --- formatting ------------------------------------------------------------------------------


def ms(seconds: float | None, digits: int = 2) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1000:.{digits}f}"


def num(value: float | None, fmt: str = ".0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def signed_ms(seconds: float | None, digits: int = 2) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1000:+.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
