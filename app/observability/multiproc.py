"""Prometheus multiprocess mode: the shared mmap directory that gunicorn workers write into.

prometheus_client decides at import time, from the PROMETHEUS_MULTIPROC_DIR environment
variable, whether metric values live in per-process mmap files (`counter_<pid>.db`, ...).
Any worker's /metrics then sums every file in the directory. The gunicorn master empties the
directory at start (`prepare_multiproc_dir`) and folds each dead worker's files into one
archive file (`mark_process_dead`), so totals never go backwards and worker recycling
(`max_requests`) does not leave thousands of files for every scrape to read.
"""

from __future__ import annotations

import fcntl
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _drop_live_gauges

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

# prometheus_client's multiprocess and mmap modules carry no annotations, hence the
# `type: ignore[no-untyped-call]` on each call into them below.

# Not *.db, so the collector never reads it.
_LOCK_FILE = ".lock"
# File types whose values must survive their process (gauges are per-pid by design).
_ACCUMULATED_TYPES = ("counter", "histogram", "summary")


@contextmanager
def _dir_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    # Readers (every worker's /metrics) share the lock; the master's compaction takes it
    # alone, so no scrape sees a dead worker's values twice or not at all.
    fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def prepare_multiproc_dir(path: str) -> None:
    """Create the metrics directory, or empty it of a previous run's files (gunicorn master)."""
    os.makedirs(path, exist_ok=True)
    with _dir_lock(path, exclusive=True):
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Retire a dead worker's files: drop its live gauges, fold its counters into the archive."""
    path = path or os.environ.get(ENV_VAR)
    if not path or not os.path.isdir(path):
        return
    _drop_live_gauges(pid, path)  # type: ignore[no-untyped-call]
    with _dir_lock(path, exclusive=True):
        for typ in _ACCUMULATED_TYPES:
            dead = os.path.join(path, f"{typ}_{pid}.db")
            if os.path.exists(dead):
                _fold_into_archive(path, typ, dead)


def _fold_into_archive(path: str, typ: str, dead: str) -> None:
    archive = os.path.join(path, f"{typ}_archive.db")
    sources = [archive, dead] if os.path.exists(archive) else [dead]
    # accumulate=False keeps histogram buckets per-bucket, as the mmap files store them.
    merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
    partial = os.path.join(path, f"{typ}_archive.partial")
    if os.path.exists(partial):
        os.remove(partial)
    out = MmapedDict(partial)  # type: ignore[no-untyped-call]
    try:
        for metric in merged:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    metric.documentation,
                )
                out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(partial, archive)
    os.remove(dead)


def collect(path: str) -> bytes:
    """Sum every process's values in `path` into Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    with _dir_lock(path, exclusive=False):
        return generate_latest(registry)


def ensure_multiprocess_values() -> None:
    """Make new metrics write to the mmap files even if prometheus_client was imported early."""
    # prometheus_client reads the environment variable once, at import. The gunicorn master
    # imports this module (for the hooks above) before it exports the variable, and workers
    # inherit that already-imported module; this applies the same choice the import would
    # have made had the variable been set in time. When the import did make it, its class is
    # swapped for one with a cheaper process id, as long as no value of this process exists yet
    # (each would keep its own handle on this process's files).
    current = values.ValueClass
    if getattr(current, "_gateway", False):
        return
    if getattr(current, "_multiprocess", False) and _files_of_this_process():
        return
    value_class = values.MultiProcessValue(_process_id)  # type: ignore[no-untyped-call]
    value_class._gateway = True
    values.ValueClass = value_class


def _files_of_this_process() -> bool:
    path = os.environ.get(ENV_VAR)
    return bool(path and glob.glob(os.path.join(path, f"*_{os.getpid()}.db")))


# prometheus_client asks for the process id on every increment, to notice a fork; a getpid
# system call each time, a dozen or more per request. This answers from memory, and a fork
# (the only way the id changes) refreshes it in the child before any of its code runs.
_pid = os.getpid()


def _process_id() -> int:
    """This process's id, as prometheus_client's MultiProcessValue asks for it."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
