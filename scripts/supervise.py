"""Run a command so that Ctrl-C or SIGTERM stops it and everything it started.

The command runs in its own session as a child of this process, which is made a child
subreaper: processes the command leaves behind (a gateway, a gunicorn master in its own
session, the fake provider) are re-parented here instead of to init, so they can be found.
The first SIGINT or SIGTERM is passed on as one SIGINT, so pytest tears its fixtures down;
a second signal (over 2 s later), or a command still running GRACE seconds later, gets SIGKILL. When the
command has exited, whatever is left below this process is terminated, then killed.
Exits with the command's status (128 + signal number when it was killed by a signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

GRACE = 60.0  # seconds for pytest's teardown after the first interrupt
SAME_INTERRUPT = 2.0  # signals this close together count as one
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def descendants() -> list[int]:
    """Every live process below this one (the whole tree, via /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reap_leftovers() -> None:
    """Terminate what the command left running; kill what ignores SIGTERM."""
    left = descendants()
    if not left:
        return
    names = sorted({_command(pid) for pid in left})
    print(f"[supervise] stopping {len(left)} process(es) left running: {', '.join(names)}", file=sys.stderr)
    signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and descendants():
        _reap_zombies()
        time.sleep(0.1)
    signal_all(descendants(), signal.SIGKILL)
    _reap_zombies()


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80] or str(pid)
    except OSError:
        return str(pid)


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_reaping_orphans(pid: int, interrupts: list[float], kill: Callable[[], None]) -> int:
    """Wait for `pid`, reaping the orphans re-parented here as they exit.

    An orphan left a zombie would still answer `kill -0`: deployments/scripts/stop.sh would
    wait for a daemonized gunicorn that has long exited.
    """
    killed = False
    while True:
        done, status = os.waitpid(-1, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if done == 0:
            time.sleep(0.1)
            if interrupts and not killed and time.monotonic() - interrupts[0] > GRACE:
                print(f"[supervise] still running {GRACE:.0f} s after the interrupt: kill", file=sys.stderr)
                kill()
                killed = True


def _interrupt_when_orphaned() -> None:
    """In the child: SIGINT it if this process dies (killed outright), so pytest still tears down."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: supervise.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    interrupts: list[float] = []
    started: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        now = time.monotonic()
        # A terminal's Ctrl-C reaches this process and the shell that forwards it: one interrupt.
        if interrupts and now - interrupts[-1] < SAME_INTERRUPT:
            return
        interrupts.append(now)
        name = signal.Signals(signum).name
        if not started:
            sys.exit(128 + signum)
        if len(interrupts) == 1:
            print(f"\n[supervise] {name}: stopping the test run", file=sys.stderr)
            signal_all(started, signal.SIGINT)
        else:
            print(f"[supervise] {name} again: killing the test run", file=sys.stderr)
            signal_all(started, signal.SIGKILL)

    # Handlers first: a shell starts a background job with SIGINT ignored, and the command
    # would inherit that (pytest would then never see its KeyboardInterrupt).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    # Its own session: a terminal's Ctrl-C reaches the command once, from here, not twice.
    child = subprocess.Popen(argv, start_new_session=True, preexec_fn=_interrupt_when_orphaned)
    started.append(child.pid)
    # Popen's own wait and poll are not used: they would race with waitpid(-1) for the child.
    returncode = wait_reaping_orphans(child.pid, interrupts, lambda: signal_all(started, signal.SIGKILL))
    child.returncode = returncode
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reap_leftovers()
    if returncode < 0:
        return 128 - returncode
    if interrupts and returncode == 0:
        return 130
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
