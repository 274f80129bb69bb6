"""Latency probe for the soak test, run as a process of its own so the load generator's event
loop cannot delay it: `GET <url>` every INTERVAL seconds on one keep-alive connection, one line
per call (`<monotonic start> <seconds> <status>`) appended to OUT.

    python bench/probe.py http://127.0.0.1:8000/health 0.1 600 /tmp/probe.log
"""

from __future__ import annotations

import http.client
import sys
import time
from urllib.parse import urlsplit


def main() -> None:
    url, interval, duration, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    end = time.monotonic() + duration
    with open(out, "w", buffering=1) as f:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                conn.request("GET", parts.path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status = 0
            took = time.monotonic() - started
            f.write(f"{started:.6f} {took:.6f} {status}\n")
            time.sleep(max(0.0, interval - took))


if __name__ == "__main__":
    main()
