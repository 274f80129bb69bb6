"""External programs the tests run: found, or a failure that says how to get them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where scripts/test-services.sh puts what Debian does not install as a command (promtool,
# docker-compose); /usr/sbin for nginx and logrotate when PATH lacks it.
EXTRA_PATH = [str(ROOT / ".data" / "tools" / "bin"), "/usr/sbin", "/sbin"]


def find(name: str) -> str | None:
    """The program's path, or None."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATH]))


def tool(name: str, *, package: str) -> str:
    """The program's path; fails the test (never skips it) when it is missing."""
    path = find(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it ({package})", pytrace=False)
    return path
