"""Liveness, readiness, dependency detail, Router cooldowns, system load and /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from litellm.router_utils.cooldown_handlers import async_get_cooldown_deployments

from app.api.deps import State
from app.api.money_json import MoneyJSONResponse

router = APIRouter()


async def _timed(name: str, probe: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout=3.0)
        status, detail = "ok", None
    except Exception as exc:  # a failing dependency is reported, not raised
        status, detail = "fail", type(exc).__name__
    return {
        "name": name,
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "detail": detail,
    }


async def _checks(state: State) -> list[dict[str, Any]]:
    checks = [await _timed(f"store:{state.store.kind}", state.store.ping())]
    if state.ratelimiter is not None:
        checks.append(await _timed("redis", state.ratelimiter.ping()))
    checks.append(
        {
            "name": "router",
            "status": "ok" if state.llm.model_names() else "fail",
            "latency_ms": 0.0,
            "detail": f"{len(state.llm.model_names())} models",
        }
    )
    return checks


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> MoneyJSONResponse:
    """Readiness: the store answers and the Router has models."""
    checks = [c for c in await _checks(state) if c["name"] != "redis"]  # Redis down degrades only
    ok = all(c["status"] == "ok" for c in checks)
    return MoneyJSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/health/detailed")
async def detailed(state: State) -> MoneyJSONResponse:
    """Every dependency with its latency."""
    checks = await _checks(state)
    status = "ok" if all(c["status"] == "ok" for c in checks) else "degraded"
    record = {"ts": time.time(), "status": status, "checks": checks}
    state.health_history.append(record)
    return MoneyJSONResponse({**record, "environment": state.settings.ENVIRONMENT, "store": state.store.kind})


@router.get("/health/circuit-breakers")
async def circuit_breakers(state: State) -> MoneyJSONResponse:
    """Router cooldowns per deployment (a cooled-down deployment receives no traffic)."""
    router_ = state.llm.router
    out = []
    cooling_ids = await async_get_cooldown_deployments(router_, parent_otel_span=None)
    cooling = {str(c) for c in cooling_ids}
    for deployment in router_.get_model_list() or []:
        info = deployment.get("model_info", {}) or {}
        dep_id = str(info.get("id"))
        out.append(
            {
                "model_name": deployment.get("model_name"),
                "deployment_id": dep_id,
                "state": "open" if dep_id in cooling else "closed",
            }
        )
    return MoneyJSONResponse({"deployments": out})


@router.get("/health/system")
async def system(state: State) -> MoneyJSONResponse:
    """CPU, memory and event-loop lag of this worker."""
    import psutil

    proc = psutil.Process(os.getpid())
    start = time.perf_counter()
    await asyncio.sleep(0)
    lag_ms = (time.perf_counter() - start) * 1000
    return MoneyJSONResponse(
        {
            "pid": os.getpid(),
            "cpu_percent": proc.cpu_percent(interval=None),
            "rss_bytes": proc.memory_info().rss,
            "system_memory_percent": psutil.virtual_memory().percent,
            "load_average": list(os.getloadavg()),
            "event_loop_lag_ms": round(lag_ms, 3),
            "uptime_seconds": round(time.time() - state.started_at, 1),
        }
    )


@router.get("/health/history")
async def history(state: State) -> MoneyJSONResponse:
    """The most recent detailed checks made by this worker."""
    return MoneyJSONResponse({"history": list(state.health_history)})


@router.get("/metrics")
def metrics(state: State) -> Response:
    """Prometheus text format, summed across workers (file reads: runs in the threadpool)."""
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
