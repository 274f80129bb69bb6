"""A stream as the client gets it: metered while it flows, settled before its last event.

- The provider ends it: settle on its usage, then send the usage event (with the cost, if the
  client asked for usage) and the terminal event.
- It outgrows its hold (a provider that ignores the output limit): it is cut, ended as if the
  limit was reached, and charged for what was generated.
- The provider fails midway: an error event, and nothing is charged.
- The client goes away: what was generated is charged, in a task of its own.
- The server shuts down: at the deadline, an error event, and what was generated is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from app.billing.service import BillingService, Hold
from app.calls.drain import Drain
from app.calls.record import CallRecord, Recorder, billed_usage
from app.errors import UpstreamUnavailable
from app.llm.results import CompletionStream
from app.llm.router import translate_error
from app.observability.sentry import capture_upstream_failure
from app.usage import Usage

log = logging.getLogger(__name__)
# Events beyond the held completion tokens before a stream is cut: role and finish chunks.
_EVENT_SLACK = 8


async def metered(
    stream: CompletionStream,
    *,
    call: CallRecord,
    hold: Hold | None,
    n: int,
    wants_usage: bool,
    billing: BillingService,
    recorder: Recorder,
    drain: Drain,
) -> AsyncIterator[bytes]:
    limit = None if hold is None or hold.max_tokens is None else hold.max_tokens * n + _EVENT_SLACK
    meter = stream.meter
    outcome: str | None = None
    drain.track(stream.aclose)
    try:
        try:
            async for block in stream.events():
                if call.first_token is None:
                    call.first_token = time.perf_counter()
                if limit is None or meter.events <= limit:
                    yield block
                    continue
                outcome = "length"
                log.warning("stream outgrew its hold: cut", extra={"billing_request": call.request_id})
                await _close(stream)
                yield stream.without_last_content(block, meter.events - limit)
                meter.events = limit
                yield stream.cut()
                break
        except Exception as exc:
            if not drain.fired:
                outcome = "error"
                error = translate_error(exc)
                capture_upstream_failure(
                    error, request_id=call.request_id, user_id=call.user_id, model=call.model
                )
                if hold is not None:
                    billing.release_soon(hold)
                billing.detach(_close(stream))
                recorder.finished(call, "error", error=error)
                yield stream.error_event(error)
                return
        if drain.fired and outcome is None:
            outcome = "shutdown"
            await _settle(stream, call, hold, billing, recorder)
            recorder.finished(call, "shutdown")
            yield stream.error_event(
                UpstreamUnavailable("The gateway is restarting; the stream ended early. Retry the request.")
            )
            return
        outcome = outcome or "success"
        usage = await _settle(stream, call, hold, billing, recorder)
        recorder.finished(call, outcome)
        yield stream.finish(usage, call.cost, wants_usage=wants_usage)
    finally:
        drain.untrack(stream.aclose)
        if outcome is None:
            # The client went away. This task is being cancelled, so the provider stream is
            # closed and what was generated is charged in tasks of their own.
            billing.detach(_close(stream))
            billing.detach(_settle_dropped(stream, call, hold, billing, recorder))


async def _settle(
    stream: CompletionStream, call: CallRecord, hold: Hold | None, billing: BillingService, recorder: Recorder
) -> Usage:
    usage = await billed_usage(stream.meter.usage, call, recorder, text=stream.generated_text)
    if hold is not None:
        call.cost = (await billing.settle(hold, usage, deployment_id=call.deployment_id)).cost
    return usage


async def _settle_dropped(
    stream: CompletionStream, call: CallRecord, hold: Hold | None, billing: BillingService, recorder: Recorder
) -> None:
    """Charge a dropped stream for the prompt and the completion generated so far."""
    await _settle(stream, call, hold, billing, recorder)
    recorder.finished(call, "client_closed")


async def _close(stream: CompletionStream) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await stream.aclose()
