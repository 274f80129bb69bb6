"""The load generator: N keep-alive connections, each sending its next request when the last ends.

aiohttp with the raw bytes of the response: a JSON answer is read whole; an SSE answer is read
as it arrives, and the time to first token is when the first `data:` event carrying content
(`"content":"tok...`, what the fake provider generates) has arrived. Nothing is parsed as JSON,
so the client's own cost per request stays small and the same for every target.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

# A content event of any protocol: chat's `"content":"tok`, Responses' `"delta":"tok`,
# Anthropic's `"text_delta","text":"tok`.
CONTENT_MARK = re.compile(rb'"(?:content|delta|text_delta", ?"text)": ?"tok')
# The end of a stream: chat's [DONE], Responses' response.completed, Anthropic's message_stop.
DONE_MARK = re.compile(rb"data: \[DONE\]|event: response\.completed|event: message_stop")
MARK_TAIL = 24  # bytes kept between reads so a mark split across two reads is still found


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One kind of request: the same bytes every time."""

    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool

    @classmethod
    def for_protocol(cls, protocol: str, base: str, key: str, model: str, *, stream: bool) -> RequestSpec:
        """The same small request in chat, Responses or Anthropic Messages form."""
        if protocol == "responses":
            payload: dict[str, object] = {
                "model": model,
                "input": "Say hello to the benchmark.",
                "stream": stream,
            }
            return cls(
                url=base.rstrip("/") + "/responses",
                body=orjson.dumps(payload),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                stream=stream,
            )
        if protocol == "messages":
            payload = {
                "model": model,
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
                "stream": stream,
            }
            return cls(
                url=base.rstrip("/") + "/messages",
                body=orjson.dumps(payload),
                headers={
                    "x-api-key": key,
                    "anthropic-version": "2023-06-01",
                    "Content-Type": "application/json",
                },
                stream=stream,
            )
        return cls.chat(base, key, model, stream=stream)

    @classmethod
    def chat(cls, base: str, key: str, model: str, *, stream: bool) -> RequestSpec:
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "stream": stream,
        }
        return cls(
            url=base.rstrip("/") + "/chat/completions",
            body=orjson.dumps(payload),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            stream=stream,
        )


@dataclass(slots=True)
class Shots:
    """What the requests of one phase did (seconds)."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(what[:300])


def new_session(conns: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=conns, limit_per_host=conns, force_close=False),
        timeout=aiohttp.ClientTimeout(total=120),
        trust_env=False,
    )


async def one(session: aiohttp.ClientSession, spec: RequestSpec, shots: Shots) -> None:
    started = time.perf_counter()
    try:
        async with session.post(spec.url, data=spec.body, headers=spec.headers) as resp:
            if not spec.stream:
                data = await resp.read()
                if resp.status != 200 or b'"choices"' not in data:
                    shots.fail(f"{resp.status} {data[:200]!r}")
                    return
                shots.latencies.append(time.perf_counter() - started)
                return
            first: float | None = None
            count = 0
            tail = b""
            done = False
            async for piece in resp.content.iter_any():
                window = tail + piece
                found = len(CONTENT_MARK.findall(window))
                # A mark wholly inside the kept tail was already counted on the previous read.
                found -= len(CONTENT_MARK.findall(tail)) if tail else 0
                if found and first is None:
                    first = time.perf_counter()
                count += found
                if DONE_MARK.search(window) is not None:
                    done = True
                tail = window[-MARK_TAIL:]
            end = time.perf_counter()
            if resp.status != 200 or first is None or not done:
                shots.fail(f"{resp.status} stream ended early (done={done}, chunks={count}) {tail!r}")
                return
            shots.latencies.append(end - started)
            shots.ttfts.append(first - started)
            shots.chunks.append(count)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        shots.fail(f"{type(exc).__name__}: {exc}")


async def run_phase(
    session: aiohttp.ClientSession, specs: Sequence[RequestSpec], *, conns: int, duration: float
) -> tuple[Shots, float]:
    """`conns` loops, each sending requests back to back for `duration` seconds.

    Loop i cycles through `specs` starting at i, so a mixed load keeps its proportions.
    A request started before the deadline is completed and counted. Returns (shots, wall time).
    """
    shots = Shots()
    started = time.perf_counter()
    deadline = started + duration

    async def loop(i: int) -> None:
        k = i
        while time.perf_counter() < deadline:
            await one(session, specs[k % len(specs)], shots)
            k += 1

    await asyncio.gather(*(loop(i) for i in range(conns)))
    return shots, time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
