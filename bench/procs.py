"""Child processes for the benchmark: own process groups, pinned cores, guaranteed teardown.

Every process is started in a session of its own (so a Ctrl-C in the terminal reaches only
this script, which then stops them in order) with a parent-death signal (so they go even if
this script is killed outright). CPU time is read from /proc for a whole process tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
# urllib must never route 127.0.0.1 through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A started process (the root of its own process group)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Processes:
    """Starts children and stops every one of them, newest first, whatever happens."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        cpus: set[int] | None = None,
    ) -> Child:
        argv = list(cmd)
        if cpus is not None:
            argv = ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *argv]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name=name, proc=proc, log_path=log_path)
        with self._lock:
            self._children.append(child)
        return child

    def stop(self, child: Child, *, grace: float = 15.0) -> None:
        """SIGTERM the child's process group, then SIGKILL what is left of it."""
        with self._lock:
            if child in self._children:
                self._children.remove(child)
        pgid = child.pid  # start_new_session: the child leads its own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if child.proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(5)

    def stop_all(self) -> None:
        while True:
            with self._lock:
                if not self._children:
                    return
                child = self._children[-1]
            self.stop(child)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt, SIGTERM and SIGHUP raise SystemExit: `finally` blocks
    tear everything down. SIGINT is set explicitly because a shell may start a background job
    with it ignored, and Python then installs no handler of its own."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces or parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the ppid field of every /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime (all threads) of the given live processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLK_TCK


def tree_cpu(root: int) -> float:
    return cpu_seconds(process_tree(root))


def cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime per live process, in seconds."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by the processes of `after` (ones new since `before` from
    zero); a process gone by then is left out rather than counted negative."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def busy_seconds() -> dict[str, float]:
    """Busy CPU time of the machine from /proc/stat: "all" and per core ("cpu0", "cpu1", ...).

    Busy = user + nice + system + irq + softirq + steal; idle and iowait are not busy.
    """
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        v = [int(x) for x in values]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        out["all" if name == "cpu" else name] = busy / CLK_TCK
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pids_named(names: set[str]) -> list[int]:
    """Processes whose comm is one of `names` (used only to read the CPU time of services)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names or any(comm.startswith(n + ":") for n in names):
                out.append(int(entry))
    return out


# --- HTTP helpers (stdlib, loopback only) --------------------------------------------------


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(
    url: str, *, child: Child, timeout: float, ok: Callable[[int], bool] = lambda s: s < 500
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        try:
            status, _ = http("GET", url, timeout=2)
            if ok(status):
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} did not answer {url} in {timeout:.0f} s:\n{child.log_tail()}")
