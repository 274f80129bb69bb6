"""What a commit costs on this machine's disk: pg_test_fsync, and commit round trips over asyncpg.

`measure()` returns the `commit` entry of the bench data: the flushes per second of the
`wal_sync_method` Postgres uses (pg_test_fsync, one 8 kB write, on the filesystem of the data
directory), and the p50 of three round trips at one connection on a fresh database: `SELECT 1`,
an `INSERT` committed with `synchronous_commit = on` (waits for the WAL flush) and the same with
`synchronous_commit = off` (as the gateway's reserve does).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import targets
from bench.loadgen import percentile

# pg_test_fsync's first section: "Compare file sync methods using one 8kB write:".
_SECTION = "one 8kB write"
_OPS = re.compile(r"^\s+(\w+)\s+([\d.]+) ops/sec")
_FSYNC_TIMEOUT = 120.0


async def _settings(names: tuple[str, ...]) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(targets.PG_SERVER, timeout=5)
    try:
        return {n: str(await conn.fetchval(f"show {n}")) for n in names}
    finally:
        await conn.close()


def _device(path: Path) -> int | None:
    """The filesystem (st_dev) of `path`, or of its nearest ancestor this user may stat."""
    for p in (path, *path.parents):
        try:
            return p.stat().st_dev
        except OSError:
            continue
    return None


def _mount_point(path: Path) -> Path | None:
    """The mount point of the filesystem holding `path` (`df --output=target`)."""
    for p in (path, *path.parents):
        res = subprocess.run(["df", "--output=target", str(p)], capture_output=True, text=True, check=False)
        if res.returncode == 0 and len(res.stdout.split()) >= 2:
            return Path(res.stdout.split()[-1])
    return None


def scratch_dir(data_dir: Path) -> tuple[Path, bool]:
    """A writable directory on the filesystem of `data_dir` (never inside it) and whether one was found."""
    device = _device(data_dir)
    candidates = [Path("/var/tmp"), Path(tempfile.gettempdir()), _mount_point(data_dir)]
    for cand in candidates:
        if cand is None or not cand.is_dir() or not os.access(cand, os.W_OK):
            continue
        if device is not None and cand.stat().st_dev == device:
            return cand, True
    return Path("/var/tmp"), False


def _pg_test_fsync() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_test_fsync"))
    return found[-1] if found else shutil.which("pg_test_fsync")


def pg_test_fsync(directory: Path, secs: int) -> dict[str, float]:
    """ops/sec per sync method for one 8 kB write; stops pg_test_fsync after that section."""
    binary = _pg_test_fsync()
    if binary is None:
        raise RuntimeError("pg_test_fsync not found (package postgresql-<version>)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=directory))
    ops: dict[str, float] = {}
    proc = subprocess.Popen(
        [binary, "-s", str(secs), "-f", str(scratch / "pg_test_fsync.out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        in_section = False
        deadline = time.monotonic() + _FSYNC_TIMEOUT
        assert proc.stdout is not None
        for line in proc.stdout:
            if _SECTION in line:
                in_section = True
            elif in_section and not line.strip():
                break  # the end of the first section: the rest is not needed
            elif in_section and (m := _OPS.match(line)):
                ops[m.group(1)] = float(m.group(2))
            if time.monotonic() > deadline:
                break
    finally:
        proc.terminate()  # pg_test_fsync removes its file on SIGTERM
        proc.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
    if not ops:
        raise RuntimeError("pg_test_fsync printed no ops/sec for one 8kB write")
    return ops


async def round_trips(database: str, n: int) -> dict[str, float]:
    """p50 of SELECT 1, INSERT (synced commit), INSERT (unsynced commit), interleaved, 1 connection each."""
    import asyncpg

    dsn = targets._dsn(database)
    synced = await asyncpg.connect(dsn, timeout=5)
    unsynced = await asyncpg.connect(dsn, timeout=5)
    try:
        await synced.execute("create table commit_probe (id bigint generated always as identity, v int)")
        await unsynced.execute("set synchronous_commit = off")
        runs: dict[str, list[float]] = {"select1": [], "insert_sync": [], "insert_async": []}
        steps = (
            ("select1", synced, "select 1"),
            ("insert_sync", synced, "insert into commit_probe (v) values (1)"),
            ("insert_async", unsynced, "insert into commit_probe (v) values (1)"),
        )
        for _ in range(n):
            for key, conn, sql in steps:
                t = time.perf_counter()
                await conn.execute(sql)  # simple protocol: one round trip, the commit included
                runs[key].append(time.perf_counter() - t)
    finally:
        await synced.close()
        await unsynced.close()
    return {f"{k}_p50": percentile(v, 50) for k, v in runs.items()} | {"round_trips": float(n)}


def measure(*, quick: bool) -> dict[str, Any]:
    """The `commit` entry of the bench data (with an `error` key for what could not be measured)."""
    out: dict[str, Any] = {}
    try:
        settings = asyncio.run(_settings(("data_directory", "wal_sync_method", "server_version")))
    except Exception as exc:
        return {"error": f"Postgres unreachable ({type(exc).__name__}: {exc})"}
    method = settings["wal_sync_method"]
    directory, same_fs = scratch_dir(Path(settings["data_directory"]))
    out.update(settings, fsync_dir=str(directory), same_filesystem=same_fs)
    try:
        ops = pg_test_fsync(directory, 1 if quick else 2)
        out.update(fsync_ops=ops, flush_s=1 / ops[method] if ops.get(method) else None)
    except Exception as exc:
        out["fsync_error"] = str(exc)[:300]
    database = targets.create_database()
    if database is None:
        out["error"] = "no database for the round trips"
        return out
    try:
        out.update(asyncio.run(round_trips(database, 300 if quick else 1000)))
    finally:
        targets.drop_database(database)
    # The call's two commits: the reserve's (synchronous_commit off, see billing_reserve) and the
    # settle's (waits for the WAL flush), each a round trip of one statement.
    out["call_commits_s"] = out["insert_sync_p50"] + out["insert_async_p50"]
    return out
